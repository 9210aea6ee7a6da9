"""Hostile-input cases about files: images in the training data, --out folders, broken model files and
config files, prediction outputs (registered in benchmarks/hostile_harness.py's CASES by `@case`)."""
from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.bomb_memory import write_grey_png
from benchmarks.hostile_harness import HELD_OUT, Result, Workspace, case, eval_args, listing, sha256, train_args


@case
def image_bomb(ws: Workspace) -> Result:
    folder = ws.fresh("bomb")
    data = ws.data_copy(folder)
    bomb = write_grey_png(data / "kolektor" / "train" / "good" / "zz_bomb.png", 13000, 13000)
    out = folder / "model"
    args = train_args(data, out)
    proc, peak = ws.run(args)
    return ws.result(f"a 13000² 16-bit PNG ({bomb.stat().st_size // 1024} KB, 169 M pixels) among the training images",
                     args, proc, peak, listing(out), expect_words=["zz_bomb.png", "data.max_pixels"],
                     must_not_exist=[out])


@case
def image_size_too_large(ws: Workspace) -> Result:
    out = ws.fresh("image_size") / "model"
    args = train_args(ws.data, out, "--set", "data.image_size=65536")
    proc, peak = ws.run(args)
    return ws.result("`--set data.image_size=65536`", args, proc, peak, listing(out),
                     expect_words=["data.image_size=65536", "1024"], must_not_exist=[out])


@case
def unreadable_train_good(ws: Workspace) -> Result:
    folder = ws.fresh("unreadable")
    data = ws.data_copy(folder)
    locked = data / "kolektor" / "train" / "good"
    out = folder / "model"
    args = train_args(data, out)
    locked.chmod(0)
    try:
        proc, peak = ws.run(args, unprivileged=True)
    finally:
        locked.chmod(0o755)
    return ws.result("a `train/good` folder the user cannot read (mode 000)", args, proc, peak, listing(out),
                     expect_words=["kolektor/train/good", "Permission denied"],
                     must_not_exist=[out])


@case
def unwritable_out(ws: Workspace) -> Result:
    folder = ws.fresh("unwritable")
    data = ws.data_copy(folder)
    (data / "kolektor" / "train" / "good" / "zz_corrupt.png").write_bytes(b"not an image")  # found only by loading
    parent = folder / "readonly"
    parent.mkdir()
    out = parent / "model"
    args = train_args(data, out)
    parent.chmod(0o555)
    try:
        proc, peak = ws.run(args, unprivileged=True)
    finally:
        parent.chmod(0o755)
    return ws.result("`--out` under a folder the user cannot write (mode 555; a corrupt image in the data too)",
                     args, proc, peak, listing(out), expect_words=["--out", "not writable", "before any work"],
                     must_not_exist=[out])


def _broken_model(ws: Workspace, folder: Path, name: str, content: str) -> Path:
    model = Path(shutil.copytree(ws.model, folder / "model"))
    (model / name).write_text(content)
    return model


@case
def garbage_meta_json(ws: Workspace) -> Result:
    folder = ws.fresh("meta")
    model = _broken_model(ws, folder, "meta.json", "{ this is not json")
    out = folder / "eval"
    args = eval_args(ws, ws.data, out)
    args[args.index("--model") + 1] = model
    proc, peak = ws.run(args)
    return ws.result("`fsad evaluate` of a model whose meta.json is garbage", args, proc, peak, listing(out),
                     expect_words=["meta.json", "does not match checkpoint.json"], must_not_exist=[out])


@case
def resume_with_garbage_meta_json(ws: Workspace) -> Result:
    folder = ws.fresh("resume_meta")
    model = _broken_model(ws, folder, "meta.json", "\x00\x01 not json")
    before = {p: sha256(p) for p in model.rglob("*") if p.is_file()}
    args = train_args(ws.data, model, "--resume")
    proc, peak = ws.run(args)
    return ws.result("`fsad train --resume` of a model directory whose meta.json is garbage", args, proc, peak,
                     "the model directory unchanged", expect_words=["meta.json", "not valid JSON"], unchanged=before)


@case
def model_config_plain_string(ws: Workspace) -> Result:
    folder = ws.fresh("model_config")
    model = _broken_model(ws, folder, "config.yaml", "just a string\n")
    out = folder / "pred"
    args = ["predict", "--model", model, "--support", ws.data / HELD_OUT / "train" / "good", "--images",
            ws.data / HELD_OUT / "test" / "good", "--out", out]
    proc, peak = ws.run(args)
    return ws.result("`fsad predict` with a model whose config.yaml holds a plain string", args, proc, peak,
                     listing(out), expect_words=["config.yaml", "does not match checkpoint.json"], must_not_exist=[out])


@case
def config_file_plain_string(ws: Workspace) -> Result:
    folder = ws.fresh("config")
    config = folder / "params.yaml"
    config.write_text("just a string\n")
    out = folder / "model"
    args = train_args(ws.data, out, "--config", config)
    proc, peak = ws.run(args)
    return ws.result("`--config` naming a YAML file that holds a plain string", args, proc, peak, listing(out),
                     expect_words=["params.yaml", "mapping"], must_not_exist=[out])


def _predict_args(ws: Workspace, out: Path, *extra) -> list:
    return ["predict", "--model", ws.model, "--support", ws.data / HELD_OUT / "train" / "good", "--images",
            ws.data / HELD_OUT / "test" / "good", "--out", out, *extra]


@case
def predict_out_is_a_file(ws: Workspace) -> Result:
    out = ws.fresh("predict_file") / "scores.txt"
    out.write_text("keep me\n")
    args = _predict_args(ws, out)
    proc, peak = ws.run(args)
    return ws.result("`fsad predict --out` naming an existing file", args, proc, peak, listing(out),
                     expect_words=["--out", "not a directory"], unchanged={out: sha256(out)})


def _earlier_prediction(ws: Workspace, folder: Path) -> Path:
    out = folder / "pred"
    proc, _ = ws.run(_predict_args(ws, out))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    some_overlay = next(iter(sorted((out / "overlays").glob("*.png"))))
    shutil.copy2(some_overlay, out / "overlays" / "9999_from_an_older_run.png")  # as if more images were scored then
    return out


@case
def predict_into_earlier_output(ws: Workspace) -> Result:
    out = _earlier_prediction(ws, ws.fresh("predict_reuse"))
    before = {p: sha256(p) for p in out.rglob("*") if p.is_file()}
    args = _predict_args(ws, out)
    proc, peak = ws.run(args)
    return ws.result("`fsad predict` into the --out of an earlier prediction, without --overwrite", args, proc,
                     peak, "the earlier scores.jsonl and overlays/ unchanged",
                     expect_words=["not empty", "--overwrite"], unchanged=before)


@case
def predict_overwrite(ws: Workspace) -> Result:
    out = _earlier_prediction(ws, ws.fresh("predict_overwrite"))
    stale = out / "overlays" / "9999_from_an_older_run.png"
    args = _predict_args(ws, out, "--overwrite")
    proc, peak = ws.run(args)
    n = len(list((out / "overlays").glob("*.png")))
    return ws.result("`fsad predict --overwrite` into the --out of an earlier prediction", args, proc, peak,
                     f"new scores.jsonl and {n} overlays; the older run's overlay removed", expect_exit=0,
                     must_not_exist=[stale])


@case
def predict_overwrite_foreign_folder(ws: Workspace) -> Result:
    out = ws.fresh("predict_foreign") / "home"
    out.mkdir()
    precious = out / "thesis.tex"
    precious.write_text("years of work\n")
    args = _predict_args(ws, out, "--overwrite")
    proc, peak = ws.run(args)
    return ws.result("`fsad predict --overwrite --out` naming a folder of other files", args, proc, peak,
                     listing(out), expect_words=["thesis.tex", "does not write"], unchanged={precious: sha256(precious)})
