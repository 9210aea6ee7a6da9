"""The `fsad` command line end to end on real images (a small copy of ../shared/data/fsad-real).

Most runs call `orchestrator.cli.main([...])` in-process (it returns the exit code); a few run the
console script / `python -m orchestrator.cli` as a subprocess to check the real exit status.
Bad input must give exit 2, one line on stderr naming the offending file or value, and no partial
output (no model.safetensors / metrics.json / scores.jsonl, no stray *.tmp files).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch
from PIL import Image
from safetensors.torch import load_file

from model.methods import METHODS
from orchestrator.cli import VERBS, main
from tests.conftest import HELD_OUT, REPO, SMALL_CATEGORIES, TINY, cli, image_files, tiny_sets

pytestmark = pytest.mark.slow

METRICS = ("image_auroc", "pixel_auroc", "pro", "miou")
TRAINED_ON = sorted(c for c in SMALL_CATEGORIES if c != HELD_OUT)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def assert_bad_input(code: int, err: str, *needles) -> str:
    """Exit 2 and exactly one stderr line `fsad: error: ...` that contains every needle."""
    assert code == 2, f"expected exit 2, got {code}; stderr: {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a single stderr line, got {lines!r}"
    line = lines[0]
    assert line.startswith("fsad: error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


def stray_tmp(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            for dirpath, _, filenames in os.walk(folder):
                found += [Path(dirpath) / f for f in filenames if f.endswith(".tmp") or ".tmp-" in f]
    return found


def assert_no_output(out: Path, *also_clean: Path) -> None:
    """Nothing was written: --out is absent or empty, and no temporary files were left anywhere."""
    if out.exists():
        assert not any(out.iterdir()), f"partial output left in {out}: {sorted(p.name for p in out.iterdir())}"
    assert not stray_tmp(out, *also_clean), stray_tmp(out, *also_clean)


def train_args(data: Path, out: Path, *extra, exclude: str = HELD_OUT, **budget) -> list:
    return ["train", "--data", data, "--target", exclude, "--out", out, "--quiet", *tiny_sets(**budget), *extra]


def eval_args(model: Path, data: Path, out: Path, category: str = HELD_OUT, *extra) -> list:
    return ["evaluate", "--model", model, "--data", data, "--target", category, "--shots", 2, "--draws", 2,
            "--out", out, "--quiet", *extra]


def check_metrics(out: Path, method: str, n_overlays: int = 2) -> dict:
    record = json.loads((out / "metrics.json").read_text())
    assert record["method"] == method and record["category"] == HELD_OUT
    assert record["shots"] == 2 and record["draws"] == 2 and len(record["per_draw"]) == 2
    for name in METRICS:
        summary = record[name]
        assert isinstance(summary, dict) and {"mean", "std"} <= set(summary), (name, summary)
        assert 0.0 <= summary["mean"] <= 1.0, (name, summary)
        assert summary["std"] >= 0.0 and math.isfinite(summary["std"]), (name, summary)
        for draw in record["per_draw"]:
            assert 0.0 <= draw[name] <= 1.0, (name, draw)
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == n_overlays
    assert sorted(record["overlays"]) == sorted(str(p) for p in pngs)
    for png in pngs:
        with Image.open(png) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
    assert not stray_tmp(out)
    return record


def tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# --------------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", [None, *VERBS])
def test_help_exits_zero(verb, capsys):
    argv = ["--help"] if verb is None else [verb, "--help"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: fsad" in out
    if verb is None:
        for name in VERBS:
            assert name in out


def test_help_subprocess():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fsad" in proc.stdout


# --------------------------------------------------------------------------------------------------
# Integration on real images
# --------------------------------------------------------------------------------------------------


def test_train_writes_model_dir(trained_model):
    for name in ("model.safetensors", "config.yaml", "meta.json", "state.pt"):
        assert (trained_model / name).is_file(), name
    meta = json.loads((trained_model / "meta.json").read_text())
    assert meta["method"] == "ours"
    assert HELD_OUT not in meta["train_categories"]
    assert sorted(meta["train_categories"]) == TRAINED_ON
    assert meta["held_out"] == [HELD_OUT]
    assert meta["episodes_done"] == 3 and len(meta["history"]) == 3
    assert all(h["category"] in TRAINED_ON for h in meta["history"])
    assert all(math.isfinite(h["loss"]) for h in meta["history"])
    assert not stray_tmp(trained_model)


@pytest.mark.parametrize("method", ["ours", "knn"])
def test_evaluate_held_out(method, trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = cli(capsys, *eval_args(trained_model, small_real_root, out, HELD_OUT, "--method", method))
    assert code == 0, err
    record = check_metrics(out, method)
    assert record["n_test"] == 8 and record["n_anomalous"] == 4
    assert "image_auroc" in stdout


def test_evaluate_is_reproducible(trained_model, small_real_root, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        code, _, err = cli(capsys, *eval_args(trained_model, small_real_root, tmp_path / name))
        assert code == 0, err
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    for name in METRICS:
        assert runs[0][name] == runs[1][name]
    assert [d["support"] for d in runs[0]["per_draw"]] == [d["support"] for d in runs[1]["per_draw"]]


def test_evaluate_subprocess_exit_code(trained_model, small_real_root, tmp_path):
    """The real process exit status, through the installed console script when there is one."""
    script = Path(sys.executable).parent / "fsad"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "orchestrator.cli"]
    out = tmp_path / "eval"
    args = [str(a) for a in eval_args(trained_model, small_real_root, out)]
    proc = subprocess.run(cmd + args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check_metrics(out, "ours")
    # and a bad input exits 2 with one line on stderr
    bad = [str(a) for a in eval_args(trained_model, tmp_path / "no_such_root", tmp_path / "bad")]
    proc = subprocess.run(cmd + bad, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_bad_input(proc.returncode, proc.stderr, "no_such_root")
    assert_no_output(tmp_path / "bad")


def test_predict(trained_model, small_real_root, tmp_path, capsys):
    support = small_real_root / HELD_OUT / "train" / "good"
    test_root = small_real_root / HELD_OUT / "test"
    defect = sorted(p for p in test_root.iterdir() if p.name != "good")[0]
    images = image_files(test_root / "good")[:2] + image_files(defect)[:2]
    out = tmp_path / "pred"
    code, stdout, err = cli(capsys, "predict", "--model", trained_model, "--support", support,
                            "--images", *images, "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [Path(r["path"]) for r in rows] == images
    for row in rows:
        assert isinstance(row["score"], float) and math.isfinite(row["score"])
        overlay = Path(row["overlay"])
        assert overlay.is_file() and overlay.suffix == ".png" and overlay.parent == out / "overlays"
        with Image.open(overlay) as im:
            im.load()
    assert len(list((out / "overlays").glob("*.png"))) == len(images)
    assert not stray_tmp(out)


def test_predict_folder_of_images(trained_model, small_real_root, tmp_path, capsys):
    """--images accepts a folder: one row per image file in it."""
    folder = small_real_root / HELD_OUT / "test" / "good"
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", "--model", trained_model, "--support",
                       small_real_root / HELD_OUT / "train" / "good", "--images", folder, "--out", out)
    assert code == 0, err
    rows = (out / "scores.jsonl").read_text().splitlines()
    assert len(rows) == len(image_files(folder))


def test_maml_ae_train_and_evaluate(trained_maml, small_real_root, tmp_path, capsys):
    meta = json.loads((trained_maml / "meta.json").read_text())
    assert meta["method"] == "maml_ae" and sorted(meta["train_categories"]) == TRAINED_ON
    assert meta["episodes_done"] == 3
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_maml, small_real_root, out, HELD_OUT, "--method", "maml_ae"))
    assert code == 0, err
    check_metrics(out, "maml_ae")


def test_method_mismatch_is_bad_input(trained_model, trained_maml, small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_maml, small_real_root, out, HELD_OUT, "--method", "ours"))
    assert_bad_input(code, err, "maml_ae")
    assert_no_output(out)
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_root, out, HELD_OUT, "--method", "maml_ae"))
    assert_bad_input(code, err, "maml_ae")
    assert_no_output(out)


def test_loo(small_real_root, tmp_path, capsys):
    out = tmp_path / "loo"
    code, stdout, err = cli(capsys, "loo", "--data", small_real_root, "--shots", 2, "--draws", 2,
                            "--target", HELD_OUT, "--out", out, "--quiet", *tiny_sets())
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    rows = {(r["category"], r["method"]): r for r in results["rows"]}
    # every method beside the baselines with no learning and no support set (the default --methods)
    assert set(rows) == {(HELD_OUT, m) for m in METHODS}
    for row in rows.values():
        for name in METRICS:
            assert 0.0 <= row[name]["mean"] <= 1.0
    assert rows[(HELD_OUT, "nosupport")]["image_auroc"]["std"] == 0.0  # it ignores the support draws
    markdown = (out / "results.md").read_text()
    for method in METHODS:
        assert f"| {HELD_OUT} | {method} |" in markdown
    for variant in ("ours", "maml_ae"):
        meta = json.loads((out / "models" / HELD_OUT / variant / "meta.json").read_text())
        assert HELD_OUT not in meta["train_categories"]
    assert not stray_tmp(out)

    # The baselines alone need no meta-training: they run on the initial Ψ's directory, with the numbers
    # they had beside the trained model (they read only the config and its seed).
    alone = tmp_path / "loo-baselines"
    code, _, err = cli(capsys, "loo", "--data", small_real_root, "--shots", 2, "--draws", 2,
                       "--target", HELD_OUT, "--methods", "nosupport,untrained,knn_untrained",
                       "--out", alone, "--quiet", *tiny_sets())
    assert code == 0, err
    assert not (alone / "models" / HELD_OUT / "ours").exists()
    meta = json.loads((alone / "models" / HELD_OUT / "initial" / "meta.json").read_text())
    assert meta["episodes_done"] == 0 and meta["initial"] and HELD_OUT not in meta["train_categories"]
    again = {(r["category"], r["method"]): r for r in json.loads((alone / "results.json").read_text())["rows"]}
    for method in ("nosupport", "untrained", "knn_untrained"):
        for name in METRICS:
            assert again[(HELD_OUT, method)][name]["mean"] == rows[(HELD_OUT, method)][name]["mean"], (method, name)
    # the initial directory is no trained model: ours refuses it as unfinished
    code, _, err = cli(capsys, *eval_args(alone / "models" / HELD_OUT / "initial", small_real_root,
                                          tmp_path / "eval-initial", HELD_OUT))
    assert_bad_input(code, err, "unfinished")


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


def test_resume_is_exact(small_real_root, tmp_path, capsys):
    resumed, scratch = tmp_path / "resumed", tmp_path / "scratch"
    code, _, err = cli(capsys, *train_args(small_real_root, resumed, train__episodes=4))
    assert code == 0, err
    assert json.loads((resumed / "meta.json").read_text())["episodes_done"] == 4
    code, _, err = cli(capsys, *train_args(small_real_root, resumed, "--resume", train__episodes=6))
    assert code == 0, err
    meta = json.loads((resumed / "meta.json").read_text())
    assert meta["episodes_done"] == 6
    assert len(meta["history"]) == 6 and [h["episode"] for h in meta["history"]] == list(range(6))

    code, _, err = cli(capsys, *train_args(small_real_root, scratch, train__episodes=6))
    assert code == 0, err
    assert tensors_equal(resumed / "model.safetensors", scratch / "model.safetensors")
    assert meta["history"] == json.loads((scratch / "meta.json").read_text())["history"]
    assert not stray_tmp(resumed, scratch)


def test_resume_refuses_a_changed_training_config(small_real_root, tmp_path, capsys):
    """Only the budget and run-time keys may change on --resume: another crop or learning rate would train the
    remaining episodes differently and leave a config.yaml that no longer describes the episodes already run."""
    out = tmp_path / "m"
    code, _, err = cli(capsys, *train_args(small_real_root, out, train__episodes=4))
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume", train__episodes=6, train__lr=0.01))
    assert_bad_input(code, err, str(out), "train.lr=0.01", "checkpoint: 0.0003", "--out")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    # a bigger budget and a run-time key are what a resume is for
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume", train__episodes=5, eval__draws=2))
    assert code == 0, err
    assert json.loads((out / "meta.json").read_text())["episodes_done"] == 5


def test_target_is_added_to_data_exclude(small_real_root, tmp_path, capsys):
    """`--set data.exclude=[A] --target B` holds out both (it used to replace A by B, and train on A)."""
    out = tmp_path / "m"
    others = sorted(c for c in SMALL_CATEGORIES if c != HELD_OUT)
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--set", f"data.exclude=[{others[0]}]"))
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert HELD_OUT not in meta["train_categories"] and others[0] not in meta["train_categories"]
    assert meta["train_categories"] == others[1:]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["exclude"] == [others[0], HELD_OUT]


def test_resume_without_checkpoint_is_bad_input(small_real_root, tmp_path, capsys):
    out = tmp_path / "fresh"
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume"))
    assert_bad_input(code, err, str(out), "state.pt")
    assert_no_output(out)


def test_train_refuses_to_overwrite(trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "model"
    shutil.copytree(trained_model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, *train_args(small_real_root, out, train__episodes=5))
    assert_bad_input(code, err, str(out), "--resume")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()
    assert after["model.safetensors"] == before["model.safetensors"]
    assert after == before
    assert not stray_tmp(out)


# --------------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the culprit, no partial output
# --------------------------------------------------------------------------------------------------


def test_train_nonexistent_data_root(tmp_path, capsys):
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(tmp_path / "no_such_root", out))
    assert_bad_input(code, err, "no_such_root")
    assert_no_output(out)


def test_evaluate_nonexistent_data_root(trained_model, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, tmp_path / "no_such_root", out))
    assert_bad_input(code, err, "no_such_root")
    assert_no_output(out)


def test_evaluate_nonexistent_model_dir(small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(tmp_path / "no_such_model", small_real_root, out))
    assert_bad_input(code, err, "no_such_model")
    assert_no_output(out)


def test_evaluate_category_not_found(trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_root, out, "nope"))
    assert_bad_input(code, err, "'nope'")
    assert_no_output(out)


def test_train_excluded_category_not_found(small_real_root, tmp_path, capsys):
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(small_real_root, out, exclude="nope"))
    assert_bad_input(code, err, "'nope'")
    assert_no_output(out)


def test_evaluate_trained_category(trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_root, out, TRAINED_ON[0]))
    assert_bad_input(code, err, repr(TRAINED_ON[0]))
    assert_no_output(out)


def test_empty_train_good(small_real_copy, tmp_path, capsys):
    good = small_real_copy / "kolektor" / "train" / "good"
    for f in good.iterdir():
        f.unlink()
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(small_real_copy, out))
    assert_bad_input(code, err, str(good))
    assert_no_output(out, small_real_copy)


def test_shots_larger_than_pool(trained_model, small_real_root, tmp_path, capsys):
    out = tmp_path / "eval"
    code, _, err = cli(capsys, "evaluate", "--model", trained_model, "--data", small_real_root, "--target",
                       HELD_OUT, "--shots", 9999, "--draws", 2, "--out", out, "--quiet")
    assert_bad_input(code, err, "9999")
    assert_no_output(out)


def test_train_episode_larger_than_pool(small_real_root, tmp_path, capsys):
    """K + M above the normal images of a training category."""
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(small_real_root, out, train__shots=20))
    assert_bad_input(code, err, "K + M")
    assert_no_output(out)


def _plant_corrupt(folder: Path) -> Path:
    bad = folder / "zz_corrupt.png"
    bad.write_bytes(b"this is not an image\n" * 20)
    return bad


def _plant_truncated(folder: Path) -> Path:
    src = image_files(folder)[0]
    data = src.read_bytes()
    bad = folder / "zz_truncated.jpg"
    bad.write_bytes(data[: len(data) // 3])
    return bad


def _plant_rgba(folder: Path) -> Path:
    src = image_files(folder)[0]
    bad = folder / "zz_rgba.png"
    with Image.open(src) as im:
        im.convert("RGBA").save(bad)
    return bad


@pytest.mark.parametrize("plant,needle", [(_plant_corrupt, None), (_plant_truncated, None),
                                          (_plant_rgba, "4 channels")])
def test_bad_training_image(plant, needle, small_real_copy, tmp_path, capsys):
    bad = plant(small_real_copy / "kolektor" / "train" / "good")
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(small_real_copy, out))
    assert_bad_input(code, err, str(bad), *([needle] if needle else []))
    assert_no_output(out, small_real_copy)


@pytest.mark.parametrize("plant", [_plant_corrupt, _plant_truncated, _plant_rgba])
def test_bad_support_image_in_evaluate(plant, trained_model, small_real_copy, tmp_path, capsys):
    bad = plant(small_real_copy / HELD_OUT / "train" / "good")
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_copy, out))
    assert_bad_input(code, err, str(bad))
    assert_no_output(out, small_real_copy)


@pytest.mark.parametrize("plant", [_plant_corrupt, _plant_truncated, _plant_rgba])
def test_bad_image_in_predict(plant, trained_model, small_real_copy, tmp_path, capsys):
    folder = small_real_copy / HELD_OUT / "test" / "good"
    bad = plant(folder)
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", "--model", trained_model, "--support",
                       small_real_copy / HELD_OUT / "train" / "good", "--images", folder, "--out", out)
    assert_bad_input(code, err, str(bad))
    assert_no_output(out, small_real_copy)


def _first_mask(root: Path) -> tuple[Path, Path]:
    """(an anomalous test image of HELD_OUT, its mask)."""
    gt = root / HELD_OUT / "ground_truth"
    defect = sorted(p for p in gt.iterdir() if p.is_dir())[0]
    mask = image_files(defect)[0]
    image = next(p for p in image_files(root / HELD_OUT / "test" / defect.name)
                 if f"{p.stem}_mask" == mask.stem)
    return image, mask


def test_missing_mask(trained_model, small_real_copy, tmp_path, capsys):
    image, mask = _first_mask(small_real_copy)
    mask.unlink()
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_copy, out))
    assert_bad_input(code, err, str(image), mask.name)
    assert_no_output(out, small_real_copy)


def test_mask_of_another_size(trained_model, small_real_copy, tmp_path, capsys):
    _, mask = _first_mask(small_real_copy)
    with Image.open(mask) as im:
        w, h = im.size
        small = im.resize((w // 2, h // 2), Image.Resampling.NEAREST)
    small.save(mask)
    out = tmp_path / "eval"
    code, _, err = cli(capsys, *eval_args(trained_model, small_real_copy, out))
    assert_bad_input(code, err, str(mask), f"{w // 2}x{h // 2}")
    assert_no_output(out, small_real_copy)


@pytest.mark.parametrize("override,needle", [
    ("model.lam_max=0", "model.lam_max"),
    ("model.lam_max=-1", "model.lam_max"),
    ("model.lam_star=2", "model.lam_star"),
    ("model.tau=0", "model.tau"),
    ("langevin.step_size=0", "langevin.step_size"),
    ("train.shots=0", "train.shots"),
    ("langevin.steps=-1", "langevin.steps"),
    ("model.lam_max=nan", "model.lam_max"),
    ("model.lam_max=.nan", "model.lam_max"),
    ("model.tau=inf", "model.tau"),
    ("model.tau=.inf", "model.tau"),
    ("train.nope=1", "nope"),
    ("train.episodes=abc", "train.episodes"),
    ("train.episodes=2.5", "train.episodes"),
    ("model.normalize=maybe", "model.normalize"),
    ("train.method=knn", "train.method"),
    ("data.image_size=30", "data.image_size"),
    ("train.lr=0", "train.lr"),
])
def test_bad_hyper_parameter(override, needle, small_real_root, tmp_path, capsys):
    out = tmp_path / "model"
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--set", override))
    assert_bad_input(code, err, needle)
    assert_no_output(out)


def test_loo_keeps_data_exclude_out_of_every_fold(small_real_root, tmp_path, capsys):
    """`fsad loo --set data.exclude=[A]`: A is trained on in no fold (the fold's target is added, not put in its place)."""
    out = tmp_path / "loo"
    others = sorted(c for c in SMALL_CATEGORIES if c != HELD_OUT)
    code, _, err = cli(capsys, "loo", "--data", small_real_root, "--shots", 2, "--draws", 1, "--target", HELD_OUT,
                       "--methods", "ours", "--out", out, "--quiet", *tiny_sets(), "--set", f"data.exclude=[{others[0]}]")
    assert code == 0, err
    meta = json.loads((out / "models" / HELD_OUT / "ours" / "meta.json").read_text())
    assert meta["train_categories"] == others[1:]


@pytest.mark.parametrize("override", ["model.lam_max=0", "train.nope=1"])
def test_loo_bad_hyper_parameter(override, small_real_root, tmp_path, capsys):
    out = tmp_path / "loo"
    code, _, err = cli(capsys, "loo", "--data", small_real_root, "--shots", 2, "--draws", 2, "--target",
                       HELD_OUT, "--out", out, "--quiet", *tiny_sets(), "--set", override)
    assert_bad_input(code, err, override.split("=")[0].split(".")[-1])
    assert_no_output(out)


def test_loo_category_not_found(small_real_root, tmp_path, capsys):
    out = tmp_path / "loo"
    code, _, err = cli(capsys, "loo", "--data", small_real_root, "--target", "nope", "--out", out, "--quiet",
                       *tiny_sets())
    assert_bad_input(code, err, "'nope'")
    assert_no_output(out)


# --------------------------------------------------------------------------------------------------
# One rule for configuration: --config FILE, else ./params.yaml when present (as dvc repro reads it),
# else the embedded defaults; --set on top; the file used named in one stderr line
# --------------------------------------------------------------------------------------------------

# Verbs that read no configuration at all (README says so): sync-runs replays spooled runs as recorded.
NO_CONFIG_VERBS = ("sync-runs",)


def write_params(folder: Path, tree: dict) -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tree))
    return folder / "params.yaml"


def tiny_tree(**changes) -> dict:
    """The tiny budget (tests/conftest.py TINY) as a params.yaml tree."""
    from orchestrator.config.loading import set_path

    tree: dict = {}
    for key, value in {**TINY, **changes}.items():
        set_path(tree, key, value)
    return tree


@pytest.fixture
def reads_params(monkeypatch, tmp_path):
    """A working directory of its own, with the ./params.yaml rule on (conftest switches it off)."""
    monkeypatch.delenv("FSAD_PARAMS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("verb", [v for v in VERBS if v not in NO_CONFIG_VERBS])
def test_every_verb_that_reads_config_takes_config_and_set(verb):
    from orchestrator.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    options = {s for action in sub.choices[verb]._actions for s in action.option_strings}
    assert {"--config", "--set"} <= options, verb


# The old spellings of the one grammar's options: (verb, old, new, a value)
OLD_SPELLINGS = [("evaluate", "--category", "--target", "tire"), ("evaluate", "--seeds", "--draws", "3"),
                 ("register", "--category", "--target", "tire"), ("loo", "--seeds", "--draws", "3"),
                 ("loo", "--categories", "--target", "tire"), ("demo", "--holdout", "--target", "tire"),
                 ("demo", "--seeds", "--draws", "3"), ("report", "--params", "--config", "p.yaml"),
                 ("train", "--exclude", "--target", "tire")]
MINIMAL = {"evaluate": ["--model", "m", "--out", "o", "--target", "x"], "register": ["--run", "r", "--draw", "0",
           "--target", "x"], "loo": ["--data", "d", "--out", "o"], "demo": [], "report": [],
           "train": ["--out", "m"]}


@pytest.mark.parametrize("verb,old,new,value", OLD_SPELLINGS)
def test_old_spellings_parse_with_one_deprecation_line(verb, old, new, value, capsys):
    from orchestrator.cli import build_parser

    dest = {"--target": "targets" if verb == "loo" else "target", "--draws": "draws", "--config": "config"}[new]
    args = build_parser().parse_args([verb, *MINIMAL[verb], old, value])
    assert str(getattr(args, dest)) in (value, str([value]))
    assert capsys.readouterr().err.splitlines() == [f"fsad: {old} is deprecated; use {new}"]
    build_parser().parse_args([verb, *MINIMAL[verb], f"{old}={value}", old, value])  # --old=V too; warned once
    assert capsys.readouterr().err.splitlines() == [f"fsad: {old} is deprecated; use {new}"]


def test_pipeline_stages_take_config_and_the_old_params_still_parses(capsys):
    from pipelines._entry import main as stage_main

    seen = []
    assert stage_main(lambda args: seen.append(args.params), "a stage", argv=["--config", "a.yaml"]) == 0
    assert stage_main(lambda args: seen.append(args.params), "a stage", argv=["--params", "b.yaml"]) == 0
    assert stage_main(lambda args: seen.append(args.params), "a stage", argv=[]) == 0
    assert seen == ["a.yaml", "b.yaml", "params.yaml"]
    assert capsys.readouterr().err.splitlines() == ["fsad: --params is deprecated; use --config"]


@pytest.mark.parametrize("verb", VERBS)
def test_one_grammar_no_verb_offers_an_old_spelling(verb):
    from orchestrator.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    options = {s for action in sub.choices[verb]._actions for s in action.option_strings}
    assert not options & {"--category", "--holdout", "--exclude", "--categories", "--seeds", "--params"}, verb


def test_shots_and_draws_defaults_come_from_the_config(monkeypatch):
    """evaluate/loo/demo: unset --shots/--draws are eval.shots/eval.draws of the config, and --help shows the
    schema's values (not numbers written again in argparse)."""
    from orchestrator.cli import main
    from orchestrator.commands import loo

    seen = {}
    monkeypatch.setattr("orchestrator.evaluation.loo.run_loo", lambda root, out, shots, draws, *a, **k: seen.update(
        shots=shots, draws=draws) or {"rows": []})
    monkeypatch.setattr("orchestrator.evaluation.loo.results_table", lambda results: "")
    assert main(["loo", "--data", "d", "--out", "o", "--set", "eval.shots=3", "eval.draws=4"]) == 0
    assert seen == {"shots": 3, "draws": 4}
    assert main(["loo", "--data", "d", "--out", "o", "--shots", "2", "--set", "eval.draws=4"]) == 0
    assert seen == {"shots": 2, "draws": 4}
    parser = __import__("argparse").ArgumentParser()
    loo.add_arguments(parser)
    assert "default eval.shots = 10" in parser.format_help() and "default eval.draws = 5" in parser.format_help()


def test_readme_names_the_verbs_that_read_no_config():
    readme = (REPO / "README.md").read_text()
    for verb in NO_CONFIG_VERBS:
        assert f"`fsad {verb}` reads no configuration" in readme
    assert "Every verb takes `--config FILE`" not in readme  # the old, false sentence


def test_train_reads_params_yaml_in_the_working_directory(reads_params, small_real_root, capsys):
    """A user who edits params.yaml and runs `fsad train` gets what `dvc repro` would use."""
    write_params(reads_params, tiny_tree(**{"train.episodes": 2, "model.lam_star": 0.07}))
    code, _, err = cli(capsys, "train", "--data", small_real_root, "--target", HELD_OUT, "--out", "m", "--quiet")
    assert code == 0, err
    assert "fsad: config: ./params.yaml" in err.splitlines()
    import yaml

    saved = yaml.safe_load((reads_params / "m" / "config.yaml").read_text())
    assert saved["train"]["episodes"] == 2 and saved["model"]["lam_star"] == 0.07
    # --config names another file: ./params.yaml is not read; --set still goes on top
    write_params(reads_params / "other", tiny_tree(**{"train.episodes": 3}))
    code, _, err = cli(capsys, "train", "--data", small_real_root, "--target", HELD_OUT, "--out", "m2", "--quiet",
                       "--config", "other/params.yaml", "--set", "model.lam_star=0.06")
    assert code == 0, err
    assert "fsad: config: other/params.yaml" in err.splitlines()
    saved = yaml.safe_load((reads_params / "m2" / "config.yaml").read_text())
    assert saved["train"]["episodes"] == 3 and saved["model"]["lam_star"] == 0.06


def test_without_params_yaml_the_embedded_defaults_and_fsad_params_0_skips_it(reads_params, monkeypatch):
    import argparse

    from orchestrator.commands.common import config_file

    args = argparse.Namespace(config=None, overrides=[])
    assert config_file(args) is None  # no ./params.yaml here
    write_params(reads_params, {"train": {"episodes": 7}})
    assert config_file(args) == Path("params.yaml")
    monkeypatch.setenv("FSAD_PARAMS", "0")
    assert config_file(args) is None
    assert config_file(argparse.Namespace(config="x.yaml", overrides=[])) == Path("x.yaml")


def test_a_bad_params_yaml_is_one_line_naming_it(reads_params, small_real_root, capsys):
    (reads_params / "params.yaml").write_text("train: [unclosed\n")
    code, _, err = cli(capsys, "train", "--data", small_real_root, "--target", HELD_OUT, "--out", "m", "--quiet")
    assert_bad_input(code, err, "params.yaml", "not valid YAML")
    assert not (reads_params / "m").exists()


def test_demo_runs_on_the_embedded_defaults_and_says_so(reads_params, capsys):
    """fsad demo ignores ./params.yaml (its figures are the README's); a broken one is not even read."""
    (reads_params / "params.yaml").write_text("train: [unclosed\n")
    code, _, err = cli(capsys, "demo", "--data", reads_params / "absent", "--target", "x")
    assert code == 2
    assert "fsad: config: embedded defaults (fsad demo does not read ./params.yaml" in err
    assert "not valid YAML" not in err


def test_evaluate_takes_run_time_keys_from_params_yaml_and_set(reads_params, trained_model, small_real_root, capsys):
    """evaluate: eval.* from ./params.yaml (the model's config.yaml for the model), --set on top; a --set of
    a key that shaped the model is refused before any work."""
    write_params(reads_params, {"eval": {"overlays": 1}, "model": {"lam_star": 0.3}})
    args = ["evaluate", "--model", trained_model, "--data", small_real_root, "--target", HELD_OUT,
            "--shots", 2, "--draws", 1, "--quiet"]
    code, _, err = cli(capsys, *args, "--out", "e1")
    assert code == 0, err
    assert any(line.startswith("fsad: config: ./params.yaml (eval, tracking") for line in err.splitlines())
    assert len(list((reads_params / "e1" / "overlays").glob("*.png"))) == 1  # params.yaml's, not the model's 2
    code, _, err = cli(capsys, *args, "--out", "e2", "--set", "eval.overlays=0")
    assert code == 0, err
    assert not list((reads_params / "e2" / "overlays").glob("*.png"))
    code, _, err = cli(capsys, *args, "--out", "e3", "--set", "model.lam_star=0.1")
    assert code == 2 and "--set model.lam_star: fixed by the trained model" in err
    assert not (reads_params / "e3").exists()


def test_predict_takes_set_for_run_time_keys(trained_model, small_real_root, tmp_path, capsys):
    # copies: images this process decoded before are cached, and the cache does not re-check the limit
    support = tmp_path / "support"
    support.mkdir()
    for f in image_files(small_real_root / HELD_OUT / "train" / "good")[:3]:
        shutil.copy2(f, support / f.name)
    images = image_files(support)[:1]
    code, _, err = cli(capsys, "predict", "--model", trained_model, "--support", support, "--images", *images,
                       "--out", tmp_path / "p", "--set", "data.max_pixels=100")
    assert_bad_input(code, err, "expected at most 0.0001 M pixels (data.max_pixels)")  # the limit set here
    code, _, err = cli(capsys, "predict", "--model", trained_model, "--support", support, "--images", *images,
                       "--out", tmp_path / "p", "--set", "data.image_size=64")
    assert_bad_input(code, err, "data.image_size", "fixed by the trained model")


@pytest.mark.parametrize("verb", ["register", "adapt"])
def test_registry_verbs_take_set_for_run_time_keys_only(verb, tmp_path, capsys):
    base = (["register", "--run", "0" * 32, "--target", "tire", "--draw", "0"] if verb == "register" else
            ["adapt", "--model", "models:/fsad-tire@champion", "--support", tmp_path, "--name", "x"])
    code, _, err = cli(capsys, *base, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", "model.tau=3")
    assert_bad_input(code, err, "--set model.tau", "fixed by the trained model")
    code, _, err = cli(capsys, *base, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--set", "eval.shots=0")
    assert_bad_input(code, err, "eval.shots=0")
    assert not (tmp_path / "m.db").exists()  # refused before the store was touched


# --------------------------------------------------------------------------------------------------
# README's CLI table: every documented form parses; docs' example output folders are git-ignored
# --------------------------------------------------------------------------------------------------


def readme_cli_forms() -> list[str]:
    """The `fsad ...` code spans of README's CLI table, with the options in [...] left out, the first of
    `a\\|b` alternatives taken, and placeholders kept as values."""
    import re

    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `fsad ")]
    forms = []
    for row in rows:
        cell = row.split(" | ")[0]
        for span in re.findall(r"`(fsad [^`]+)`", cell):
            if " ... " in span or span.endswith(" ..."):
                continue  # "the same as above, plus": not a complete command
            text = re.sub(r"\\\|[^\s\]]*", "", span)  # a\|b -> a
            while re.search(r"\[[^\[\]]*\]", text):
                text = re.sub(r"\s*\[[^\[\]]*\]", "", text)
            # placeholders (N, CAT, ROOT, PATH...) become a value every option type accepts
            forms.append(" ".join("1" if re.fullmatch(r"[A-Z_]+(\.\.\.)?", t) else t for t in text.split()))
    return forms


def test_readme_cli_table_forms_parse():
    from orchestrator.cli import build_parser

    forms = readme_cli_forms()
    assert {f.split()[1] for f in forms} >= set(VERBS), forms  # every verb shown
    parser = build_parser()
    for form in forms:
        try:
            parser.parse_args(form.split()[1:])
        except SystemExit:
            pytest.fail(f"README's CLI table documents `{form}`, which fsad does not accept")


def test_docs_example_output_folders_are_git_ignored():
    """Every relative --out / --storage of an example command in README.md and docs/*.md lies in a folder
    git ignores (docs/ and results/ are committed outputs of fsad report and dvc repro)."""
    import re

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = set()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        if doc.name == "reliability.md":
            continue  # a record of hostile runs in scratch folders, not commands to copy
        for flag, value in re.findall(r"--(out|storage) ([^\s`|\\\]]+)", doc.read_text()):
            value = value.removeprefix("sqlite:///").removeprefix("journal:")
            if (value.startswith(("/", "$", "<", "~", "..", "s3:")) or "://" in value or not re.search(r"[a-z]", value)
                    or value.startswith(("docs/", "results/")) or value == "of"):
                continue  # absolute, a placeholder (OUT, DIR), or a committed output
            paths.add(value)
        # what the docs' servers write: `> ray-head.log`, `echo $! > ray-head.pid`, `sqlite:///$PWD/x.db`
        paths.update(re.findall(r"> ([\w.-]+\.(?:log|pid))\b", doc.read_text()))
        paths.update(p for p in re.findall(r"\$PWD/([\w./-]+)", doc.read_text()) if not p.startswith(".."))
    assert {"tune/journal.log", "models/tire", "eval/tire", "ray-head.pid", "mlflow-server.db"} <= paths, paths
    for path in sorted(paths):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert done.returncode == 0, f"{path} (an example output in the docs) is not git-ignored"
