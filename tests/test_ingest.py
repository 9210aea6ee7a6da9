"""fsad ingest / fsad split on real images: manifest counts against the files, planted bad files in
rejects.parquet, leaks, schema versions, deterministic leave-one-out splits, training and evaluation
from a manifest + splits, and bad input (exit 2, one line, nothing half-written)."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from orchestrator.cli import main
from tests.conftest import HELD_OUT, IMAGE_EXTENSIONS, cli, one_error_line, tiny_sets
from workers.data.manifest import MANIFEST_FIELDS, read_manifest
from workers.data.sources import FolderSource
from workers.data.splits import read_splits

pytestmark = pytest.mark.slow






def leftovers(folder: Path) -> list[str]:
    """Temporary files left anywhere under folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        found += [f for f in filenames + dirnames if f.endswith(".tmp") or ".tmp-" in f]
    return found


def files_by_folder(root: Path) -> Counter:
    """(category, split, defect_type) -> number of image files, counted straight from the tree."""
    counts: Counter = Counter()
    for cat in sorted(p for p in root.iterdir() if (p / "train" / "good").is_dir()):
        for split in ("train", "test"):
            for folder in sorted(p for p in (cat / split).iterdir() if p.is_dir()):
                n = sum(1 for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
                counts[(cat.name, split, folder.name)] = n
    return counts


def ingest(capsys, source, out, name="t") -> tuple[int, str, str]:
    return cli(capsys, "ingest", "--source", source, "--name", name, "--out", out)


# --------------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------------


def test_ingest_real_tree_counts_match_the_files(real_root, tmp_path, capsys):
    out = tmp_path / "data" / "fsad-real"
    code, stdout, err = ingest(capsys, real_root, out, "fsad-real")
    assert code == 0, err
    table = pq.read_table(out / "manifest.parquet")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["fsad.schema"] == "fsad-manifest" and meta["fsad.schema_version"] == "1"
    assert table.schema.remove_metadata().equals(MANIFEST_FIELDS), table.schema
    rows = table.to_pylist()
    got = Counter((r["category"], r["split"], r["defect_type"]) for r in rows)
    assert got == files_by_folder(real_root)
    assert len(rows) == sum(files_by_folder(real_root).values()) == 2609
    assert pq.read_table(out / "rejects.parquet").num_rows == 0
    summary = json.loads((out / "ingest.json").read_text())
    assert summary["images"] == 2609 and summary["rejected"] == 0 and summary["leaks"] == []
    assert summary["counts"]["kolektor"] == {"test/crack": 50, "test/good": 98, "train/good": 235}
    assert summary["ignored"] == ["README.md"]
    assert "2609 images accepted, 0 rejected" in stdout
    # channels and sizes come from decoding; masks pair with every anomalous image
    by_cat = {c: {r["channels"] for r in rows if r["category"] == c} for c in {r["category"] for r in rows}}
    assert by_cat == {"kolektor": {1}, "magnetic_tile": {1}, "juice_bottle": {3}, "tire": {3}}
    assert all(max(r["height"], r["width"]) <= 512 for r in rows)
    assert all((r["mask_path"] is not None) == (r["label"] == 1) for r in rows)
    assert all(len(r["sha256"]) == 64 for r in rows)
    # the content hash does not depend on where the tree lives: the folder reader computes the same one
    manifest = read_manifest(out / "manifest.parquet")
    assert manifest.content_sha256 == meta["fsad.content_sha256"] == FolderSource(real_root).content_sha256
    assert manifest.root.resolve() == real_root.resolve()  # read in place, recorded relative to --out
    assert not leftovers(out)


def test_planted_bad_files_land_in_rejects_with_reasons(small_real_copy, tmp_path, capsys):
    root = small_real_copy
    kolektor = root / "kolektor"
    # 1. a corrupt (truncated) image
    corrupt = sorted((kolektor / "test" / "good").iterdir())[0]
    corrupt.write_bytes(corrupt.read_bytes()[:300])
    # 2. a missing mask
    crack = sorted((kolektor / "test" / "crack").iterdir())
    (kolektor / "ground_truth" / "crack" / f"{crack[0].stem}_mask.png").unlink()
    # 3. a wrong-size mask
    wrong = kolektor / "ground_truth" / "crack" / f"{crack[1].stem}_mask.png"
    Image.open(wrong).resize((17, 23)).save(wrong)
    # 4. a non-binary mask, 5. an RGBA image, 6. a leak (a training image copied into test/good)
    grey = kolektor / "ground_truth" / "crack" / f"{crack[2].stem}_mask.png"
    Image.new("L", Image.open(grey).size, 128).save(grey)
    rgba = root / "tire" / "train" / "good" / "rgba.png"
    Image.new("RGBA", (40, 40), (1, 2, 3, 4)).save(rgba)
    leaked = sorted((root / "tire" / "train" / "good").glob("*.jpg"))[0]
    shutil.copy2(leaked, root / "tire" / "test" / "good" / "leaked.jpg")

    out = tmp_path / "out"
    code, stdout, err = ingest(capsys, root, out)
    assert code == 0, err
    rejects = {r["path"]: r for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert "cannot decode image" in rejects[rel(corrupt)]["reason"]
    assert "missing mask" in rejects[rel(crack[0])]["reason"]
    assert "mask is 17x23, expected the image's" in rejects[rel(crack[1])]["reason"]
    assert "not binary" in rejects[rel(crack[2])]["reason"]
    assert "4 channels" in rejects[rel(rgba)]["reason"]
    assert rejects[rel(crack[0])]["category"] == "kolektor" and rejects[rel(crack[0])]["defect_type"] == "crack"
    assert len(rejects) == 5
    manifest_paths = {r["image_path"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert not manifest_paths & set(rejects)  # rejected files are not in the manifest ...
    n_files = sum(files_by_folder(root).values())
    assert len(manifest_paths) + len(rejects) == n_files  # ... and nothing is dropped silently
    summary = json.loads((out / "ingest.json").read_text())
    assert summary["rejected"] == 5
    assert summary["leaks"] == [{"sha256": summary["leaks"][0]["sha256"], "train": [rel(leaked)],
                                 "test": ["tire/test/good/leaked.jpg"]}]
    assert "LEAK" in stdout and "leaked.jpg" in stdout and "5 rejected" in stdout


def test_ingest_bad_input_exit_2_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "out"
    line = one_error_line(*ingest(capsys, "ftp://host/data", out)[::2], "ftp://", "unknown scheme")
    assert "expected a folder, s3://BUCKET/PREFIX or elpv" in line
    one_error_line(*ingest(capsys, tmp_path / "absent", out)[::2], "absent", "does not exist")
    empty = tmp_path / "empty"
    (empty / "readme").mkdir(parents=True)
    (empty / "readme" / "notes.txt").write_text("x")
    one_error_line(*ingest(capsys, empty, out)[::2], "no images in the MVTec layout")
    one_error_line(*ingest(capsys, empty, out, name="../x")[::2], "--name")
    assert not out.exists()


def test_a_folder_of_linked_categories_ingests_like_the_trees_it_links(small_real_root, tmp_path, capsys):
    """Several trees become one dataset through a folder of links to their categories (the DVC pipeline's
    experiments/sources/fsad-all): the rows are those of the linked trees; a dangling link and a link
    cycle are handled (one-line error; skipped), and nothing is written on the error."""
    categories = sorted(p.name for p in small_real_root.iterdir() if (p / "train" / "good").is_dir())
    first, rest = tmp_path / "first", tmp_path / "rest"
    for folder, chosen in ((first, categories[:1]), (rest, categories[1:])):
        folder.mkdir()
        for name in chosen:
            shutil.copytree(small_real_root / name, folder / name)
    linked = tmp_path / "linked"
    linked.mkdir()
    for folder, chosen in ((first, categories[:1]), (rest, categories[1:])):
        for name in chosen:
            (linked / name).symlink_to(os.path.relpath(folder / name, linked))
    (linked / categories[0] / "train" / "loop").symlink_to("..")  # a cycle: must not hang the walk
    assert ingest(capsys, linked, tmp_path / "out_linked")[0] == 0
    assert ingest(capsys, small_real_root, tmp_path / "out_plain")[0] == 0
    as_linked, as_plain = (read_manifest(tmp_path / o / "manifest.parquet") for o in ("out_linked", "out_plain"))
    key = lambda r: (r["image_path"], r["sha256"], r["category"], r["label"], r["mask_sha256"])  # noqa: E731
    assert sorted(map(key, as_linked.rows)) == sorted(map(key, as_plain.rows))
    assert {r["category"] for r in as_linked.rows} == set(categories)

    (linked / "gone").symlink_to(tmp_path / "nowhere")
    one_error_line(*ingest(capsys, linked, tmp_path / "out_bad")[::2], "gone", "does not exist")
    assert not (tmp_path / "out_bad").exists()


def test_ingest_replaces_outputs_atomically(small_real_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert ingest(capsys, small_real_root, out)[0] == 0
    before = (out / "manifest.parquet").read_bytes()
    assert ingest(capsys, small_real_root, out)[0] == 0
    assert (out / "manifest.parquet").read_bytes() == before  # deterministic bytes: DVC sees no change
    assert ingest(capsys, "s3x://bucket/x", out)[0] == 2
    assert (out / "manifest.parquet").read_bytes() == before  # a failed run leaves the old outputs
    assert not leftovers(out)


# --------------------------------------------------------------------------------------------------
# Manifest schema
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(small_real_root, tmp_path_factory):
    """manifest.parquet + splits.parquet (K in 1,2,4; 3 draws) of the small real copy."""
    out = tmp_path_factory.mktemp("small_data")
    assert main(["ingest", "--source", str(small_real_root), "--name", "small", "--out", str(out)]) == 0
    assert main(["split", "--manifest", str(out / "manifest.parquet"), "--shots", "1,2,4", "--draws", "3",
                 "--seed", "7", "--out", str(out / "splits.parquet")]) == 0
    return out


def rewrite_version(src: Path, dst: Path, version: str) -> Path:
    table = pq.read_table(src)
    meta = dict(table.schema.metadata)
    meta[b"fsad.schema_version"] = version.encode()
    pq.write_table(table.replace_schema_metadata(meta), dst)
    return dst


def test_manifest_from_another_schema_version_is_refused(small_data, tmp_path, capsys):
    old = rewrite_version(small_data / "manifest.parquet", tmp_path / "manifest.parquet", "2")
    out = tmp_path / "splits.parquet"
    one_error_line(*cli(capsys, "split", "--manifest", old, "--out", out)[::2], "schema version 2", "expected version 1")
    assert not out.exists() and not leftovers(tmp_path)
    code, _, err = cli(capsys, "train", "--manifest", old, "--target", HELD_OUT, "--out", tmp_path / "m",
                       "--quiet", "--no-track", *tiny_sets())
    one_error_line(code, err, "schema version 2")
    assert not (tmp_path / "m").exists()
    (tmp_path / "junk.parquet").write_text("not parquet")
    one_error_line(*cli(capsys, "split", "--manifest", tmp_path / "junk.parquet", "--out", out)[::2], "not a readable Parquet")
    one_error_line(*cli(capsys, "split", "--manifest", tmp_path / "none.parquet", "--out", out)[::2], "does not exist")
    old_splits = rewrite_version(small_data / "splits.parquet", tmp_path / "old_splits.parquet", "0")
    with pytest.raises(Exception, match="schema version 0"):
        read_splits(old_splits)


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


def test_splits_are_deterministic_for_a_seed(small_data, tmp_path, capsys):
    again = tmp_path / "again.parquet"
    other = tmp_path / "other.parquet"
    args = ["split", "--manifest", small_data / "manifest.parquet", "--shots", "1,2,4", "--draws", "3"]
    assert cli(capsys, *args, "--seed", "7", "--out", again)[0] == 0
    assert cli(capsys, *args, "--seed", "8", "--out", other)[0] == 0
    assert again.read_bytes() == (small_data / "splits.parquet").read_bytes()
    a, b = read_splits(small_data / "splits.parquet"), read_splits(other)
    assert a.content_sha256 != b.content_sha256
    assert [r for r in a.rows if r["role"] != "support"] == [r for r in b.rows if r["role"] != "support"]


def test_splits_support_from_target_train_good_and_no_target_in_training_folds(small_data):
    manifest = read_manifest(small_data / "manifest.parquet")
    splits = read_splits(small_data / "splits.parquet", manifest)
    assert splits.targets() == manifest.categories() == ["juice_bottle", "kolektor", "tire"]
    assert splits.shots == [1, 2, 4] and splits.draws == 3 and splits.seed == 7
    by_path = {r["image_path"]: r for r in manifest.rows}
    for target in splits.targets():
        train = splits.fold(target, "train")
        target_hashes = {r["sha256"] for r in manifest.rows if r["category"] == target}
        assert train and all(r["category"] != target for r in train)
        assert not {r["sha256"] for r in train} & target_hashes  # not even a copy of a target image
        assert {r["image_path"] for r in train} == {r["image_path"] for r in manifest.rows
                                                     if r["category"] != target and r["split"] == "train"}
        test = splits.fold(target, "test")
        assert {r["image_path"] for r in test} == {r["image_path"] for r in manifest.select(target, "test")}
        for k in (1, 2, 4):
            draws = splits.support(target, k, 3)
            assert len(draws) == 3
            for d, paths in enumerate(draws):
                assert len(paths) == len(set(paths)) == k
                for p in paths:
                    row = by_path[p]
                    assert (row["category"], row["split"], row["defect_type"]) == (target, "train", "good")
                assert splits.support(target, 4, 3)[d][:k] == paths  # nested: more shots extend a draw
        assert len({tuple(p) for p in splits.support(target, 4, 3)}) > 1  # draws differ


def test_split_shots_larger_than_the_normal_images_exit_2(small_data, tmp_path, capsys):
    out = tmp_path / "splits.parquet"
    code, _, err = cli(capsys, "split", "--manifest", small_data / "manifest.parquet", "--shots", "1,13", "--out", out)
    one_error_line(code, err, "--shots 13", "12 normal training images")
    one_error_line(*cli(capsys, "split", "--manifest", small_data / "manifest.parquet", "--shots", "1,x",
                        "--out", out)[::2], "--shots")
    assert not out.exists() and not leftovers(tmp_path)


# --------------------------------------------------------------------------------------------------
# Training and evaluation from the manifest and splits
# --------------------------------------------------------------------------------------------------


def test_train_and_evaluate_read_the_manifest_and_splits(small_data, tmp_path, capsys):
    manifest, splits = small_data / "manifest.parquet", small_data / "splits.parquet"
    model = tmp_path / "model"
    code, _, err = cli(capsys, "train", "--manifest", manifest, "--splits", splits, "--target", HELD_OUT,
                       "--out", model, "--quiet", "--no-track", *tiny_sets())
    assert code == 0, err
    meta = json.loads((model / "meta.json").read_text())
    m = read_manifest(manifest)
    assert meta["manifest_sha256"] == m.content_sha256
    assert meta["splits_sha256"] == read_splits(splits).content_sha256
    assert meta["train_categories"] == ["juice_bottle", "kolektor"]
    records = {}
    for method in ("ours", "knn"):
        out = tmp_path / f"eval_{method}"
        code, _, err = cli(capsys, "evaluate", "--model", model, "--manifest", manifest, "--splits", splits,
                           "--target", HELD_OUT, "--shots", 2, "--draws", 3, "--method", method,
                           "--out", out, "--quiet", "--no-track")
        assert code == 0, err
        records[method] = json.loads((out / "metrics.json").read_text())
    pool = [r["image_path"] for r in m.select(HELD_OUT, "train", "good")]
    expected = [[pool.index(p) for p in draw] for draw in read_splits(splits).support(HELD_OUT, 2, 3)]
    for record in records.values():  # every method adapts to the very same support images
        assert [d["support"] for d in record["per_draw"]] == expected
        assert record["manifest_sha256"] == record["train_manifest_sha256"] == m.content_sha256
        assert record["splits_sha256"] == meta["splits_sha256"]
    # K not in the splits, a splits file of another manifest: one line, exit 2
    code, _, err = cli(capsys, "evaluate", "--model", model, "--manifest", manifest, "--splits", splits,
                       "--target", HELD_OUT, "--shots", 3, "--draws", 2, "--out", tmp_path / "e3", "--quiet",
                       "--no-track")
    one_error_line(code, err, "K=3", "1, 2, 4")
    assert not (tmp_path / "e3").exists()
    code, _, err = cli(capsys, "train", "--splits", splits, "--data", small_data, "--target", HELD_OUT,
                       "--out", tmp_path / "m2", "--quiet", "--no-track", *tiny_sets())
    one_error_line(code, err, "--splits needs --manifest")


def test_train_with_workers_reads_the_manifest_and_splits(small_data, tmp_path, capsys):
    """--workers used to drop --manifest/--splits silently and train on the folder; now the Ray run reads
    the fold of the held-out category from the manifest, as the in-process run does."""
    manifest, splits = small_data / "manifest.parquet", small_data / "splits.parquet"
    model = tmp_path / "model"
    code, _, err = cli(capsys, "train", "--manifest", manifest, "--splits", splits, "--target", HELD_OUT,
                       "--out", model, "--quiet", "--no-track", "--workers", 1, "--set", "distributed.mode=sync", *tiny_sets())
    assert code == 0, err
    meta = json.loads((model / "meta.json").read_text())
    assert meta["manifest_sha256"] == read_manifest(manifest).content_sha256
    assert meta["splits_sha256"] == read_splits(splits).content_sha256
    assert meta["manifest"] == str(manifest)
    assert meta["train_categories"] == ["juice_bottle", "kolektor"]


def test_a_changed_image_is_refused_by_its_hash(small_real_copy, tmp_path, capsys):
    out = tmp_path / "data"
    assert ingest(capsys, small_real_copy, out)[0] == 0
    victim = sorted((small_real_copy / "kolektor" / "train" / "good").iterdir())[3]
    Image.open(victim).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(victim)
    code, _, err = cli(capsys, "train", "--manifest", out / "manifest.parquet", "--target", HELD_OUT,
                       "--out", tmp_path / "m", "--quiet", "--no-track", *tiny_sets())
    one_error_line(code, err, victim.name, "sha256 differs")
    assert not (tmp_path / "m").exists()


def test_schema_metadata_round_trip(tmp_path):
    from workers.data.manifest import manifest_table, write_parquet

    row = {"category": "a", "split": "train", "defect_type": "good", "label": 0, "image_path": "a/train/good/x.png",
           "mask_path": None, "sha256": "0" * 64, "mask_sha256": None, "height": 4, "width": 5, "channels": 1}
    write_parquet(manifest_table([row], "n", "src", "."), tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.rows == [row] and m.name == "n" and m.source == "src" and m.root == tmp_path / "."
    assert pa.types.is_int8(pq.read_schema(tmp_path / "m.parquet").field("label").type)
