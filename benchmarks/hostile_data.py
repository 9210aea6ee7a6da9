"""Hostile-input cases about what --data, --target and a manifest point at: category names that leave
the data root or alias a training category, manifest rows outside the image root, non-binary masks."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.hostile_harness import (HELD_OUT, Result, Workspace, case, eval_args, images_in, listing, sha256,
                                        tiny_sets)


@case
def category_trailing_slash(ws: Workspace) -> Result:
    out = ws.fresh("category_slash") / "eval"
    args = eval_args(ws, ws.data, out, "kolektor/")
    proc, peak = ws.run(args)
    return ws.result("`fsad evaluate --target kolektor/` (a training category, spelled with a slash)", args,
                     proc, peak, listing(out), expect_words=["kolektor/", "not a plain folder name"],
                     must_not_exist=[out])


@case
def category_outside_data(ws: Workspace) -> Result:
    folder = ws.fresh("category_outside")
    other = folder / "other"
    (other / "root").mkdir(parents=True)
    shutil.copytree(ws.data / HELD_OUT, other / HELD_OUT)  # a folder beside --data, not under it
    out = folder / "eval"
    args = eval_args(ws, other / "root", out, f"../{HELD_OUT}")
    proc, peak = ws.run(args)
    return ws.result(f"`fsad evaluate --target ../{HELD_OUT}` (a folder outside --data)", args, proc, peak,
                     listing(out), expect_words=[f"../{HELD_OUT}", "not a plain folder name"], must_not_exist=[out])


@case
def category_alias(ws: Workspace) -> Result:
    folder = ws.fresh("category_alias")
    data = ws.data_copy(folder)
    (data / "kolektor_v2").symlink_to(data / "kolektor", target_is_directory=True)
    out = folder / "eval"
    args = eval_args(ws, data, out, "kolektor_v2")
    proc, peak = ws.run(args)
    return ws.result("`fsad evaluate --target kolektor_v2`, a symlink to the training category kolektor", args,
                     proc, peak, listing(out), expect_words=["kolektor_v2", "training category 'kolektor'"],
                     must_not_exist=[out])


@case
def manifest_row_outside_root(ws: Workspace) -> Result:
    folder = ws.fresh("manifest_escape")
    manifest_dir = folder / "ingested"
    proc, _ = ws.run(["ingest", "--source", ws.data, "--name", "small", "--out", manifest_dir])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    elsewhere = folder / "elsewhere" / "x.png"
    elsewhere.parent.mkdir()
    shutil.copy2(images_in(ws.data / "kolektor" / "train" / "good")[0], elsewhere)
    _point_a_row_at(manifest_dir / "manifest.parquet", elsewhere)
    out = folder / "model"
    args = ["train", "--manifest", manifest_dir / "manifest.parquet", "--target", HELD_OUT, "--out", out, "--quiet",
            *tiny_sets()]
    proc, peak = ws.run(args)
    return ws.result("a manifest row whose image_path climbs out of the image root (`../…/elsewhere/x.png`, true sha256)", args, proc, peak,
                     listing(out), expect_words=["image_path", "'..' path segment"], must_not_exist=[out])


def _point_a_row_at(manifest: Path, target: Path) -> None:
    """Rewrite the first kolektor train row to a relative path that climbs out of the image root (with the
    target's true hash, so that only the path check can stop it)."""
    import pyarrow.parquet as pq

    table = pq.read_table(manifest)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    root = (manifest.parent / meta["fsad.root"]).resolve()
    rows = table.to_pylist()
    i = next(i for i, r in enumerate(rows) if r["category"] == "kolektor" and r["split"] == "train")
    rows[i]["image_path"] = os.path.relpath(target, root)
    rows[i]["sha256"] = sha256(target)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), manifest)


@case
def non_binary_mask(ws: Workspace) -> Result:
    import numpy as np
    from PIL import Image

    folder = ws.fresh("soft_mask")
    data = ws.data_copy(folder)
    mask = sorted((data / HELD_OUT / "ground_truth").rglob("*_mask.png"))[0]
    with Image.open(mask) as im:
        soft = np.asarray(im.convert("L")).copy()
    soft[: soft.shape[0] // 2] //= 2  # half the anomaly at 127: a soft mask, silently 0 when thresholded
    soft[0, 0] = 64
    Image.fromarray(soft).save(mask)
    out = folder / "eval"
    args = eval_args(ws, data, out)
    proc, peak = ws.run(args)
    return ws.result("a ground-truth mask with values other than 0 and 255", args, proc, peak, listing(out),
                     expect_words=[mask.name, "not binary"], must_not_exist=[out])
