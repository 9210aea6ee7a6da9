"""workers/data/ (images, mvtec, elpv, video frames) on the real data in ../shared/data (read-only; bad files
are planted in tmp copies)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from tests.conftest import expect_error
from workers.data.elpv import load_elpv, materialize_elpv
from workers.data.images import clear_cache, stack_items
from workers.data.mvtec import list_categories, load_category
from workers.data.video import list_scenes, load_scene

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL = DATA / "fsad-real"
VIDEO = DATA / "fsad-video"
S = 32

if not DATA.is_dir():
    pytest.skip(f"shared data folder {DATA} is absent", allow_module_level=True)

CATEGORIES = ["juice_bottle", "kolektor", "magnetic_tile", "tire"]
GREY = {"kolektor", "magnetic_tile"}
EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXT)


def mini_category(tmp_path: Path, cat: str = "kolektor", n: int = 3) -> Path:
    """A small copy of a real category: n train/good, n test/good, n of each defect type + masks."""
    src, root = REAL / cat, tmp_path / "root"
    dst = root / cat
    for rel in ["train/good", "test/good"]:
        (dst / rel).mkdir(parents=True)
        for f in files(src / rel)[:n]:
            shutil.copy(f, dst / rel / f.name)
    for t in sorted(p.name for p in (src / "test").iterdir() if p.name != "good"):
        (dst / "test" / t).mkdir(parents=True)
        (dst / "ground_truth" / t).mkdir(parents=True)
        for f in files(src / "test" / t)[:n]:
            shutil.copy(f, dst / "test" / t / f.name)
            m = src / "ground_truth" / t / f"{f.stem}_mask.png"
            shutil.copy(m, dst / "ground_truth" / t / m.name)
    return root


# ------------------------------------------------------------------------------------------------
# fsad-real
# ------------------------------------------------------------------------------------------------


def test_list_categories():
    assert list_categories(REAL) == CATEGORIES


@pytest.mark.parametrize("cat", CATEGORIES)
def test_real_category(cat):
    src = REAL / cat
    train = load_category(REAL, cat, S, "train")
    assert len(train) == len(files(src / "train" / "good"))
    assert [Path(it.path).name for it in train] == [p.name for p in files(src / "train" / "good")]
    assert all(it.label == 0 and it.mask is None and it.defect_type == "good" and it.category == cat
               for it in train)

    test = load_category(REAL, cat, S, "test")
    on_disk = {t.name: len(files(t)) for t in (src / "test").iterdir() if t.is_dir()}
    assert Counter(it.defect_type for it in test) == Counter(on_disk)
    for it in test:
        assert it.label == (0 if it.defect_type == "good" else 1)
        assert Path(it.path).parent.name == it.defect_type

    images, masks, labels = stack_items(test)
    assert images.shape == (len(test), 3, S, S) and images.dtype == torch.float32
    assert masks is not None and masks.shape == (len(test), S, S) and masks.dtype == torch.float32
    assert labels.tolist() == [it.label for it in test]
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    good = labels == 0
    assert masks[good].sum() == 0
    # anomalous masks are mostly non-empty even at 32 px (thin cracks can vanish in nearest resizing)
    assert (masks[~good].flatten(1).sum(1) > 0).float().mean() > 0.75
    # at native resolution only a few magnetic_tile 'uneven' masks are empty (README)
    empty = [it.path for it in test if it.label == 1 and not (np.asarray(Image.open(
        src / "ground_truth" / it.defect_type / f"{Path(it.path).stem}_mask.png")) > 127).any()]
    assert all("/uneven/" in p for p in empty) and len(empty) <= 5

    all_images = torch.cat([images, stack_items(train)[0]])
    assert all_images.min() >= 0 and all_images.max() <= 1
    assert all_images.max() > 0.5  # not accidentally scaled twice
    same = torch.equal(all_images[:, 0], all_images[:, 1]) and torch.equal(all_images[:, 1], all_images[:, 2])
    assert same == (cat in GREY)


def test_readme_counts_and_cache():
    expected = {"kolektor": (235, 98, 50), "magnetic_tile": (666, 286, 392), "juice_bottle": (335, 54, 142),
                "tire": (239, 25, 87)}
    for cat, (n_train, n_good, n_bad) in expected.items():
        assert len(load_category(REAL, cat, S, "train")) == n_train  # cached after test_real_category
        test = load_category(REAL, cat, S, "test")
        assert sum(it.label == 0 for it in test) == n_good and sum(it.label for it in test) == n_bad


def test_resize_is_square_and_independent_of_cache():
    a = load_category(REAL, "kolektor", 16, "train")[0].image
    clear_cache()
    b = load_category(REAL, "kolektor", 16, "train")[0].image
    assert a.shape == (3, 16, 16) and torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def test_nonexistent_root(tmp_path):
    missing = tmp_path / "no_such_root"
    expect_error(lambda: list_categories(missing), missing, "does not exist")
    expect_error(lambda: load_category(missing, "kolektor", S), missing, "does not exist")
    expect_error(lambda: list_scenes(missing), missing, "does not exist")


def test_root_without_categories(tmp_path):
    expect_error(lambda: list_categories(tmp_path), tmp_path)


def test_unknown_category():
    expect_error(lambda: load_category(REAL, "no_such_cat", S), "no_such_cat", "kolektor", "tire")


def test_bad_arguments():
    expect_error(lambda: load_category(REAL, "kolektor", 0), "image_size")
    expect_error(lambda: load_category(REAL, "kolektor", S, split="val"), "val")
    expect_error(lambda: load_scene(VIDEO, "ucsd_ped2", S, "train", every=0), "every")
    expect_error(lambda: load_scene(VIDEO, "no_scene", S), "no_scene", "ucsd_ped2")
    expect_error(lambda: load_scene(VIDEO, "ucsd_ped2", S, "test", clips=["99"]), "99")


def test_empty_train_good(tmp_path):
    root = mini_category(tmp_path)
    good = root / "kolektor" / "train" / "good"
    for f in good.iterdir():
        f.unlink()
    (good / "notes.txt").write_text("not an image")
    expect_error(lambda: load_category(root, "kolektor", S), good, "has no images", "expected normal training")


def test_corrupt_image(tmp_path):
    root = mini_category(tmp_path)
    bad = root / "kolektor" / "train" / "good" / "zz_corrupt.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expect_error(lambda: load_category(root, "kolektor", S), bad)


def test_truncated_jpeg(tmp_path):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    root = mini_category(tmp_path)
    good = root / "kolektor" / "test" / "good"
    real = files(good)[0]
    bad = good / "zz_truncated.jpg"
    data = real.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    load_category(root, "kolektor", S, "train")  # the rest is fine
    expect_error(lambda: load_category(root, "kolektor", S, "test"), bad)


def test_missing_mask(tmp_path):
    root = mini_category(tmp_path)
    crack = root / "kolektor" / "test" / "crack"
    img = files(crack)[1]
    mask = root / "kolektor" / "ground_truth" / "crack" / f"{img.stem}_mask.png"
    mask.unlink()
    expect_error(lambda: load_category(root, "kolektor", S, "test"), img, mask, "missing")
    items = load_category(root, "kolektor", S, "test", require_masks=False)
    assert [it.mask is None for it in items].count(True) == 1


def test_no_ground_truth_means_image_level_labels(tmp_path):
    root = mini_category(tmp_path)
    shutil.rmtree(root / "kolektor" / "ground_truth")
    items = load_category(root, "kolektor", S, "test")
    assert all(it.mask is None for it in items) and {it.label for it in items} == {0, 1}
    assert stack_items(items)[1] is None


def test_mask_of_another_size(tmp_path):
    root = mini_category(tmp_path)
    crack = root / "kolektor" / "test" / "crack"
    img = files(crack)[0]
    w, h = Image.open(img).size
    mask = root / "kolektor" / "ground_truth" / "crack" / f"{img.stem}_mask.png"
    Image.open(mask).resize((w // 2, h // 2), Image.Resampling.NEAREST).save(mask)
    expect_error(lambda: load_category(root, "kolektor", S, "test"), mask, f"{w // 2}x{h // 2}", f"{w}x{h}")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_unsupported_channels(tmp_path, mode):
    root = mini_category(tmp_path, "juice_bottle")
    good = root / "juice_bottle" / "train" / "good"
    bad = good / f"zz_{mode}.png"
    Image.open(files(good)[0]).convert(mode).save(bad)
    assert Image.open(bad).mode == mode
    expect_error(lambda: load_category(root, "juice_bottle", S), bad, "expected 1 (grey) or 3 (RGB) channels")


def test_palette_and_grey_png_accepted(tmp_path):
    root = mini_category(tmp_path, "juice_bottle")
    good = root / "juice_bottle" / "train" / "good"
    src = Image.open(files(good)[0])
    src.convert("P").save(good / "zz_p.png")
    src.convert("L").save(good / "zz_l.png")
    items = {Path(it.path).name: it for it in load_category(root, "juice_bottle", S)}
    assert items["zz_p.png"].image.shape == (3, S, S)
    grey = items["zz_l.png"].image
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_stack_items_errors():
    expect_error(lambda: stack_items([]), "no items")


# ------------------------------------------------------------------------------------------------
# ELPV
# ------------------------------------------------------------------------------------------------


def test_elpv_materialize_and_load(tmp_path):
    elpv_dataset = pytest.importorskip("elpv_dataset")
    labels = np.genfromtxt(Path(elpv_dataset.__file__).parent / "data" / "labels.csv",
                           dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    probs, types = labels["probability"], np.char.decode(labels["type"])

    out = tmp_path / "elpv"
    assert materialize_elpv(out, image_size=16) == out
    assert list_categories(out) == ["elpv_mono", "elpv_poly"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    for kind in ("mono", "poly"):
        cat = f"elpv_{kind}"
        n_normal = int(((types == kind) & (probs == 0.0)).sum())
        n_bad = int(((types == kind) & (probs >= 0.5)).sum())
        train = load_category(out, cat, 16, "train")
        test = load_category(out, cat, 16, "test")
        assert len(train) == round(0.7 * n_normal)
        assert sum(it.label == 0 for it in test) == n_normal - len(train)
        assert sum(it.label for it in test) == n_bad
        assert {it.defect_type for it in test} == {"good", "defect"}
        assert all(it.mask is None for it in train + test)
        assert not set(Path(it.path).name for it in train) & set(Path(it.path).name for it in test)
        im = train[0].image
        assert im.shape == (3, 16, 16) and torch.equal(im[0], im[2])

    # second call with the same settings keeps the files; other settings replace them
    stamp = next((out / "elpv_mono" / "train" / "good").iterdir()).stat().st_mtime_ns
    materialize_elpv(out, image_size=16)
    assert next((out / "elpv_mono" / "train" / "good").iterdir()).stat().st_mtime_ns == stamp
    first_train = sorted(p.name for p in (out / "elpv_mono" / "train" / "good").iterdir())

    # load_elpv gives the same split as the materialized folders (deterministic, seed 0)
    loaded = load_elpv(8)
    assert sorted(Path(it.path).name for it in loaded["elpv_mono"]["train"]) == first_train
    assert loaded["elpv_poly"]["train"][0].image.shape == (3, 8, 8)

    materialize_elpv(out, image_size=12)  # other settings: replaced atomically
    assert Image.open(next((out / "elpv_poly" / "test" / "defect").iterdir())).size == (12, 12)
    assert sorted(p.name for p in out.iterdir()) == ["elpv_mono", "elpv_poly"]


# ------------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------------

VIDEO_COUNTS = {"ucsd_ped2": (850, 2010, 1648), "avenue": (389, 1353, 1061)}


def test_list_scenes():
    assert list_scenes(VIDEO) == ["avenue", "ucsd_ped2"]


@pytest.mark.parametrize("scene", sorted(VIDEO_COUNTS))
def test_video_scene(scene):
    n_train, n_test, n_bad = VIDEO_COUNTS[scene]
    train = load_scene(VIDEO, scene, S, "train")
    assert len(train) == n_train and all(it.label == 0 and it.mask is None for it in train)
    test = load_scene(VIDEO, scene, S, "test")
    assert len(test) == n_test and sum(it.label for it in test) == n_bad
    assert all(it.category == scene for it in test)

    per_clip = Counter(it.defect_type for it in test)
    for clip, n in per_clip.items():
        lines = (VIDEO / scene / "test_labels" / f"{clip}.txt").read_text().split()
        assert len(lines) == n == len(files(VIDEO / scene / "test" / clip))
        got = [it.label for it in test if it.defect_type == clip]
        assert got == [int(x) for x in lines]
        stems = [int(Path(it.path).stem) for it in test if it.defect_type == clip]
        assert stems == sorted(stems)

    images, masks, labels = stack_items(test)
    assert images.shape == (n_test, 3, S, S) and 0 <= images.min() and images.max() <= 1
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert masks[labels == 0].sum() == 0  # normal frames have empty masks
    grey = torch.equal(images[:, 0], images[:, 2])
    assert grey == (scene == "ucsd_ped2")

    # the mask files themselves are non-empty exactly where the label is 1 (native resolution)
    for it in test:
        m = VIDEO / scene / "test_masks" / it.defect_type / f"{Path(it.path).stem}.png"
        assert (np.asarray(Image.open(m)) > 127).any() == bool(it.label), m

    every = load_scene(VIDEO, scene, S, "test", every=5)
    assert len(every) == sum((n + 4) // 5 for n in per_clip.values())


def test_video_masks_match_labels_on_subset():
    # at 128 px no small anomaly mask vanishes in nearest-neighbour resizing
    for scene, clips in {"ucsd_ped2": ["06", "12"], "avenue": ["19", "21"]}.items():
        items = load_scene(VIDEO, scene, 128, "test", clips=clips)
        assert {it.defect_type for it in items} == set(clips)
        for it in items:
            assert bool(it.mask.sum() > 0) == bool(it.label), it.path


def mini_scene(tmp_path: Path, n: int = 5) -> Path:
    src, root = VIDEO / "ucsd_ped2", tmp_path / "video"
    dst = root / "ucsd_ped2"
    for rel in ["train/01", "test/01", "test_masks/01"]:
        (dst / rel).mkdir(parents=True)
        for f in sorted((src / rel).iterdir())[:n]:
            shutil.copy(f, dst / rel / f.name)
    (dst / "test_labels").mkdir()
    lines = (src / "test_labels" / "01.txt").read_text().split()[:n]
    (dst / "test_labels" / "01.txt").write_text("\n".join(lines) + "\n")
    return root


def test_video_label_count_mismatch(tmp_path):
    root = mini_scene(tmp_path)
    assert len(load_scene(root, "ucsd_ped2", S, "test")) == 5
    label_file = root / "ucsd_ped2" / "test_labels" / "01.txt"
    label_file.write_text("0\n0\n0\n0\n")
    expect_error(lambda: load_scene(root, "ucsd_ped2", S, "test"), label_file, "4", "5")
    label_file.write_text("0\n0\n2\n0\n0\n")
    expect_error(lambda: load_scene(root, "ucsd_ped2", S, "test"), label_file, "line 3")
    label_file.unlink()
    expect_error(lambda: load_scene(root, "ucsd_ped2", S, "test"), label_file, "missing")


def test_video_frame_order_is_numeric(tmp_path):
    root = mini_scene(tmp_path, n=3)
    clip = root / "ucsd_ped2" / "train" / "01"
    first = sorted(clip.iterdir())[0]
    shutil.copy(first, clip / "10000.jpg")  # numerically last
    shutil.copy(first, clip / "7.jpg")  # sorts after 10000.jpg by name, before it by number
    names = [Path(it.path).name for it in load_scene(root, "ucsd_ped2", S, "train")]
    assert [int(n.split(".")[0]) for n in names] == sorted(int(n.split(".")[0]) for n in names)
    assert names[-1] == "10000.jpg"
