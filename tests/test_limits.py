"""Hostile input below the CLI: image bombs and the pixel cap, 16-bit images without float64 copies,
non-binary masks, unreadable folders, names and keys that could leave their root (workers.data.paths, S3
keys, manifest rows), config bounds and secrets in query strings."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from benchmarks.bomb_memory import write_grey_png
from model.errors import InputError
from tests.conftest import REPO, expect_error
from workers.data.images import PixelBudget, clear_cache, decode_image, max_pixels, set_max_pixels
from workers.data.manifest import manifest_table, read_manifest, scan_layout, write_parquet
from workers.data.mvtec import load_category
from workers.data.paths import category_key, plain_name, relative_key, unsafe_key_reason


@pytest.fixture
def pixel_limit():
    """Restore the process-wide limit after a test changes it."""
    before = max_pixels()
    yield set_max_pixels
    set_max_pixels(before)
    clear_cache()


def grey_category(root: Path, name: str = "cat", n: int = 3, side: int = 40) -> Path:
    folder = root / name / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((side, side), 40 * i, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


# --------------------------------------------------------------------------------------------------
# Image bombs and the pixel cap
# --------------------------------------------------------------------------------------------------


def test_a_bomb_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    folder = grey_category(tmp_path)
    bomb = write_grey_png(folder / "zz_bomb.png", 13000, 13000)  # 169 M pixels, ~330 KB
    assert bomb.stat().st_size < 1_000_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or real_load(im))
    clear_cache()
    expect_error(lambda: load_category(tmp_path, "cat", 32, "train"), bomb, "data.max_pixels", "refused before decoding")
    assert (13000, 13000) not in decoded


def test_images_over_the_configured_cap_are_refused_undecoded(tmp_path, pixel_limit, monkeypatch):
    folder = grey_category(tmp_path, side=40)
    big = folder / "zz_big.png"
    Image.fromarray(np.zeros((50, 60), np.uint8)).save(big)
    pixel_limit(40 * 40)  # the small images pass, the 60x50 one does not
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or real_load(im))
    clear_cache()
    expect_error(lambda: load_category(tmp_path, "cat", 32, "train"), big, "60x50", "at most 0.0016 M pixels",
                 "data.max_pixels")
    assert (60, 50) not in decoded
    pixel_limit(3000)
    assert len(load_category(tmp_path, "cat", 32, "train")) == 4


def test_decompression_bomb_warning_is_an_error_once_workers_data_is_imported(tmp_path):
    """PIL only warns between MAX_IMAGE_PIXELS and twice that; in a fresh interpreter (no pytest warning
    filters) opening such a file raises."""
    bomb = write_grey_png(tmp_path / "bomb.png", 10000, 10000)  # 100 M pixels: PIL's warning range
    code = ("import sys, workers.data; from PIL import Image\n"
            "try:\n    Image.open(sys.argv[1])\nexcept Image.DecompressionBombWarning:\n    sys.exit(7)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert proc.returncode == 7, proc.stderr[-2000:]


@pytest.mark.parametrize("limit", [0, -5, Image.MAX_IMAGE_PIXELS + 1, 2.5, True])
def test_pixel_limit_bounds(limit, pixel_limit):
    expect_error(lambda: pixel_limit(limit), "data.max_pixels")


def test_ingest_refuses_a_bomb_as_a_reject(tmp_path):
    from workers.data.manifest import inspect_image

    bomb = write_grey_png(tmp_path / "bomb.png", 7000, 7000)  # 49 M pixels: under PIL's limit, over ours
    with pytest.raises(ValueError, match="49.0 M pixels.*data.max_pixels"):
        inspect_image(bomb.read_bytes())


def test_sixteen_bit_grey_is_scaled_in_float32_without_a_float64_copy(tmp_path):
    side = 1500
    values = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        small, orig = decode_image(path, 32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert orig == (side, side) and small.dtype == np.float32 and small.shape == (32, 32)
    # numpy's buffers (PIL's own are not traced): the 16-bit copy and one float32 copy, never a float64 one
    assert peak < 8 * side * side, f"{peak / side ** 2:.1f} bytes per pixel: a float64 copy was made"
    full, _ = decode_image(path, None)  # exactly v / 65535, as the float64 formula gave
    assert np.array_equal(full, (values.astype(np.float64) / 65535.0).astype(np.float32))


def test_decoding_threads_share_a_pixel_budget(pixel_limit):
    """Two images that together exceed the cap are never decoded at the same time."""
    import threading

    pixel_limit(1000)
    budget = PixelBudget()
    inside, most, lock = [0], [0], threading.Lock()

    def decode():
        with budget.hold(700):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            threading.Event().wait(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


# --------------------------------------------------------------------------------------------------
# Masks and folders
# --------------------------------------------------------------------------------------------------


def mask_category(root: Path, mask: np.ndarray) -> Path:
    cat = root / "cat"
    grey_category(root, side=mask.shape[0])
    (cat / "test" / "crack").mkdir(parents=True)
    (cat / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(np.zeros(mask.shape, np.uint8)).save(cat / "test" / "crack" / "000.png")
    path = cat / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(mask).save(path)
    return path


@pytest.mark.parametrize("on", [255, 1])
def test_binary_masks_load(tmp_path, on):
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = on
    mask_category(tmp_path, mask)
    items = load_category(tmp_path, "cat", 40, "test")
    assert items[0].mask.sum() == 100 and set(items[0].mask.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("values", [(0, 128, 255), (0, 200), (0, 3, 254)])
def test_non_binary_masks_are_an_error(tmp_path, values):
    mask = np.zeros((40, 40), np.uint8)
    for i, v in enumerate(values):
        mask[i * 5:(i + 1) * 5] = v
    path = mask_category(tmp_path, mask)
    clear_cache()
    expect_error(lambda: load_category(tmp_path, "cat", 32, "test"), path, "not binary",
                 ", ".join(str(v) for v in sorted(values)))


def test_an_unlistable_folder_is_an_input_error(tmp_path, monkeypatch):
    """chmod cannot stop root, so listing is made to fail the way it fails for a normal user."""
    folder = grey_category(tmp_path)
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    expect_error(lambda: load_category(tmp_path, "cat", 32, "train"), folder, "Permission denied")


# --------------------------------------------------------------------------------------------------
# Names and keys
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["/train/good/x.png", "ds//x.png", "a/../../x.png", "a/./x.png", "..", "a/b/",
                                 "", "a\\..\\x.png", "a/\x00.png"])
def test_unsafe_keys(key):
    assert unsafe_key_reason(key) is not None
    with pytest.raises(InputError):
        relative_key(key, "key")


@pytest.mark.parametrize("key", ["cat/train/good/x.png", "a b/c..d/x.png", "x.png"])
def test_safe_keys(key):
    assert unsafe_key_reason(key) is None and relative_key(key, "key") == key


@pytest.mark.parametrize("name", ["kolektor/", "../../data/small/tire", "/abs", ".", "..", ".hidden", " tire", "",
                                  "a/b", "a\\b"])
def test_category_names_are_one_plain_segment(name):
    expect_error(lambda: plain_name(name, "--category"), "--category")


def test_category_names_compare_normalised():
    assert category_key("Kole\u0301ktor") == category_key("kol\u00e9ktor".upper())
    assert category_key("tire") != category_key("tires")


def test_scan_layout_rejects_keys_outside_the_tree():
    keys = ["cat/train/good/a.png", "/train/good/x.png", "cat/train/good/../../../etc/x.png",
            "cat//train/good/y.png", "../cat/train/good/z.png", " cat/train/good/w.png"]
    layout = scan_layout(keys)
    assert [c.image_path for c in layout.candidates] == ["cat/train/good/a.png"]
    rejected = {r["path"]: r["reason"] for r in layout.rejects}
    assert set(rejected) == set(keys[1:])
    assert all(r["category"] in ("",) for r in layout.rejects)


def test_category_folder_outside_the_root_is_refused(tmp_path):
    grey_category(tmp_path / "inside")
    grey_category(tmp_path, name="outside")
    expect_error(lambda: load_category(tmp_path / "inside", "../outside", 32, "train"), "not a plain folder name")
    expect_error(lambda: load_category(tmp_path / "inside", "cat/", 32, "train"), "not a plain folder name")


@pytest.mark.parametrize("field, value", [("image_path", "../../../../elsewhere/x.png"),
                                          ("image_path", "/etc/x.png"), ("mask_path", "cat/ground_truth//m.png"),
                                          ("category", "../cat"), ("defect_type", "a/b")])
def test_manifest_rows_pointing_outside_the_root_are_refused(tmp_path, field, value):
    row = {"category": "cat", "split": "test", "defect_type": "crack", "label": 1,
           "image_path": "cat/test/crack/000.png", "mask_path": "cat/ground_truth/crack/000_mask.png",
           "sha256": "0" * 64, "mask_sha256": "0" * 64, "height": 4, "width": 4, "channels": 1}
    row[field] = value
    write_parquet(manifest_table([row], "x", "local", "."), tmp_path / "manifest.parquet")
    expect_error(lambda: read_manifest(tmp_path / "manifest.parquet"), "manifest.parquet", "row 0", field, value)


def test_s3_reader_refuses_unsafe_keys_before_any_request():
    from workers.data.s3 import S3Tree, S3Url

    tree = S3Tree.__new__(S3Tree)  # no client: a refused key must never reach one
    tree.url, tree.client, tree.endpoint = S3Url("bucket", "ds/"), None, None
    expect_error(lambda: tree.read("/train/good/x.png"), "/train/good/x.png", "absolute path")


# --------------------------------------------------------------------------------------------------
# Config bounds and secrets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, needle", [
    ("data.image_size=65536", "expected 8 to 1024"),
    ("data.image_size=2048", "expected 8 to 1024"),
    ("data.max_pixels=0", "data.max_pixels"),
    (f"data.max_pixels={Image.MAX_IMAGE_PIXELS + 1}", "data.max_pixels"),
    ("data.exclude=[kolektor/]", "data.exclude"),
    ("data.categories=[../x]", "data.categories"),
    ("pipeline.targets=[tire,/abs]", "pipeline.targets"),
])
def test_config_bounds(override, needle):
    from orchestrator.config import load_config, parse_overrides

    expect_error(lambda: load_config(None, parse_overrides([override])), needle)


@pytest.mark.parametrize("content", ["just a string\n", "- a\n- list\n", "42\n"])
def test_config_that_is_not_a_mapping(tmp_path, content):
    from orchestrator.config import config_from_dict, load_config

    path = tmp_path / "config.yaml"
    path.write_text(content)
    expect_error(lambda: load_config(path), str(path), "mapping")
    import yaml

    expect_error(lambda: config_from_dict(yaml.safe_load(content)), "mapping")


@pytest.mark.parametrize("text, secret", [
    ("http://mlflow:5000/api?token=s3cr3tT0ken&x=1", "s3cr3tT0ken"),
    ("postgresql://u@db/x?password=hunter2pw&sslmode=require", "hunter2pw"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefcafe", "deadbeefcafe"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefcafe", "AKIAEXAMPLE"),
    ("https://acct.blob.core.windows.net/c?sv=2020&sig=abcSAS%3D", "abcSAS"),
    ("http://h/cb#access_token=tok123456&state=1", "tok123456"),
    ("failed: GET http://h/x?api_key=k3y12345; retry", "k3y12345"),
])
def test_redact_masks_secret_query_parameters(text, secret):
    from orchestrator.tracking.server import redact

    masked = redact(text)
    assert secret not in masked and "***" in masked
    assert masked.split("?")[0].split("#")[0] == text.split("?")[0].split("#")[0]  # the address stays readable


def test_redact_keeps_harmless_query_parameters():
    from orchestrator.tracking.server import redact

    assert redact("http://h:5000/#/experiments/1?runs=3&view=list") == "http://h:5000/#/experiments/1?runs=3&view=list"
