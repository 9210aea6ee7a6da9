"""Crash-consistent checkpoints (orchestrator/training/checkpoint.py).

Training is SIGKILLed at each step of a checkpoint save (FSAD_CRASH_AT: deterministic, no timing), then
`--resume`d: the final weights are bit-identical to an uninterrupted run and no temporary is left.
Directories whose files disagree are refused with one line (resume and evaluate alike); `fsad evaluate`
refuses an unfinished model unless --allow-partial, and then marks metrics.json.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.cli import main
from tests.conftest import HELD_OUT, REPO, cli, one_error_line, tiny_sets

pytestmark = pytest.mark.slow

TOTAL, EVERY, KILL_AT = 6, 2, 4
WEIGHTS, STATE, MANIFEST = "model.safetensors", "state.pt", "checkpoint.json"






def train_args(data: Path, out: Path, *extra, episodes: int = TOTAL) -> list:
    return ["train", "--data", data, "--exclude", HELD_OUT, "--out", out, "--quiet",
            *tiny_sets(train__episodes=episodes, train__checkpoint_every=EVERY), *extra]


def eval_args(model: Path, data: Path, out: Path, *extra) -> list:
    return ["evaluate", "--model", model, "--data", data, "--target", HELD_OUT, "--shots", 2, "--draws", 1,
            "--out", out, "--quiet", *extra]


def fsad_process(args: list, **env) -> tuple[int, str]:
    """`fsad ARGS` in its own session; afterwards whatever it started and left (a killed driver's Ray
    processes) is stopped by process group. -> (exit status, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **env)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, err


def killed(args: list, step: str, episode: int) -> None:
    """Run `fsad ARGS` in a subprocess that SIGKILLs itself at `step` of the checkpoint of `episode`."""
    code, err = fsad_process(args, FSAD_CRASH_AT=f"{step}@{episode}")
    assert code == -signal.SIGKILL, f"not killed at {step}@{episode}: {code} {err[-2000:]}"


def leftovers(folder: Path) -> list[str]:
    """Temporaries and committed checkpoint folders that a finished run must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".checkpoint-"))


def tensors_equal(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def manifest_episode(folder: Path) -> int:
    return json.loads((folder / MANIFEST).read_text())["episode"]


def state_episode(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["episode"])


@pytest.fixture(scope="module")
def uninterrupted(small_real_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("checkpoint") / "uninterrupted"
    assert main([str(a) for a in train_args(small_real_root, out)]) == 0
    return out


@pytest.fixture(scope="module")
def partial_model(small_real_root, tmp_path_factory) -> Path:
    """A model killed while writing its episode-4 checkpoint: consistent, 2 of 6 episodes done."""
    out = tmp_path_factory.mktemp("checkpoint") / "partial"
    killed(train_args(small_real_root, out), "write", KILL_AT)
    return out


def copy_model(src: Path, dst: Path) -> Path:
    """The published files only (no unfinished or committed checkpoint folders to fall back on)."""
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".checkpoint-*")))


# --------------------------------------------------------------------------------------------------
# Kill at each step of a save, then resume
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["write", "commit", "publish", "cleanup"])
def test_kill_during_a_checkpoint_then_resume_is_bit_identical(step, small_real_root, uninterrupted, tmp_path, capsys):
    out = tmp_path / "killed"
    killed(train_args(small_real_root, out), step, KILL_AT)
    committed = out / f".checkpoint-{KILL_AT}"
    if step in ("write", "commit"):  # the episode-4 unit never committed: episode 2 stands untouched
        assert [p for p in out.iterdir() if p.name.startswith(f".checkpoint-{KILL_AT}.")], sorted(os.listdir(out))
        assert manifest_episode(out) == EVERY and state_episode(out / STATE) == EVERY
    elif step == "publish":  # the old dangerous point: new weights beside the old state
        assert committed.is_dir() and manifest_episode(committed) == KILL_AT
        assert state_episode(out / STATE) == EVERY and tensors_equal(out / WEIGHTS, committed / WEIGHTS)
        code, _, err = cli(capsys, *eval_args(out, small_real_root, tmp_path / "eval", "--allow-partial"))
        one_error_line(code, err, str(out), "inconsistent", "--resume")  # a mixed directory is not a model
        assert not (tmp_path / "eval").exists()
    else:  # published; only the committed folder was not removed yet
        assert committed.is_dir() and manifest_episode(out) == KILL_AT and state_episode(out / STATE) == KILL_AT
    (out / f".{STATE}.a1b2c3d4.tmp").write_bytes(b"\0" * 4096)  # what a kill inside the old atomic write left

    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume"))
    assert code == 0, err
    assert tensors_equal(out / WEIGHTS, uninterrupted / WEIGHTS)
    meta, reference = (json.loads((d / "meta.json").read_text()) for d in (out, uninterrupted))
    assert meta["episodes_done"] == TOTAL and meta["history"] == reference["history"]
    assert state_episode(out / STATE) == TOTAL and manifest_episode(out) == TOTAL
    assert leftovers(out) == []


def test_first_checkpoint_killed_while_publishing_resumes(small_real_root, uninterrupted, tmp_path, capsys):
    """Nothing published yet, only the committed folder: a fresh `train` refuses, `--resume` uses it."""
    out = tmp_path / "first"
    killed(train_args(small_real_root, out), "publish", EVERY)
    assert not (out / STATE).exists() and (out / f".checkpoint-{EVERY}").is_dir()
    code, _, err = cli(capsys, *train_args(small_real_root, out))
    one_error_line(code, err, str(out), "--resume")
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume"))
    assert code == 0, err
    assert tensors_equal(out / WEIGHTS, uninterrupted / WEIGHTS) and leftovers(out) == []


def test_kill_during_the_first_write_leaves_nothing_a_new_run_trips_on(small_real_root, uninterrupted, tmp_path, capsys):
    out = tmp_path / "first_write"
    killed(train_args(small_real_root, out), "write", EVERY)
    assert not (out / WEIGHTS).exists() and len(os.listdir(out)) == 1  # only the unfinished folder
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume"))
    one_error_line(code, err, str(out), "state.pt")  # nothing to resume from
    code, _, err = cli(capsys, *train_args(small_real_root, out))
    assert code == 0, err
    assert tensors_equal(out / WEIGHTS, uninterrupted / WEIGHTS) and leftovers(out) == []


def test_loo_killed_while_publishing_a_fold_finishes_on_rerun(small_real_root, uninterrupted, tmp_path, capsys):
    """`fsad loo` run again after a kill: the fold's committed checkpoint is published, then resumed."""
    out = tmp_path / "loo"
    args = ["loo", "--data", small_real_root, "--shots", 2, "--draws", 1, "--target", HELD_OUT,
            "--methods", "ours", "--out", out, "--quiet",
            *tiny_sets(train__episodes=TOTAL, train__checkpoint_every=EVERY)]
    killed(args, "publish", KILL_AT)
    fold = out / "models" / HELD_OUT / "ours"
    assert (fold / f".checkpoint-{KILL_AT}").is_dir() and state_episode(fold / STATE) == EVERY
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert tensors_equal(fold / WEIGHTS, uninterrupted / WEIGHTS) and leftovers(fold) == []
    assert json.loads((out / "results.json").read_text())["rows"]


def test_distributed_driver_killed_while_publishing_resumes_bit_identically(small_real_root, tmp_path):
    """The Ray trainer saves through the same module: killed at the old dangerous point, resumed (sync mode)."""
    ray_args = ["--workers", 1, "--set", "distributed.mode=sync", "--no-track"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    code, err = fsad_process(train_args(small_real_root, reference, *ray_args))
    assert code == 0, err[-3000:]
    killed(train_args(small_real_root, out, *ray_args), "publish", KILL_AT)
    assert (out / f".checkpoint-{KILL_AT}").is_dir() and state_episode(out / STATE) == EVERY
    code, err = fsad_process(train_args(small_real_root, out, "--resume", *ray_args))
    assert code == 0, err[-3000:]
    assert tensors_equal(out / WEIGHTS, reference / WEIGHTS) and leftovers(out) == []
    updates = [json.loads(line)["update"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert updates == list(range(1, TOTAL + 1))


# --------------------------------------------------------------------------------------------------
# Inconsistent directories are refused, and left as they are
# --------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_resume_refuses_files_that_disagree_with_the_manifest(small_real_root, uninterrupted, partial_model,
                                                              tmp_path, capsys):
    out = copy_model(partial_model, tmp_path / "mixed")
    shutil.copy2(uninterrupted / STATE, out / STATE)  # a state from another episode
    before = snapshot(out)
    code, _, err = cli(capsys, *train_args(small_real_root, out, "--resume"))
    one_error_line(code, err, str(out), "inconsistent", STATE)
    assert snapshot(out) == before


def test_resume_of_a_checkpoint_without_manifest_checks_state_against_meta(small_real_root, uninterrupted,
                                                                           partial_model, tmp_path, capsys):
    """Checkpoints written before checkpoint.json: resumed when state.pt and meta.json agree, else refused."""
    good, bad = tmp_path / "legacy_good", tmp_path / "legacy_bad"
    for folder in (good, bad):
        copy_model(partial_model, folder)
        (folder / MANIFEST).unlink()
    shutil.copy2(uninterrupted / STATE, bad / STATE)  # state at episode 6, meta at 2: killed between writes
    code, _, err = cli(capsys, *train_args(small_real_root, bad, "--resume"))
    one_error_line(code, err, str(bad), "inconsistent", "episode 6", "at 2")
    code, _, err = cli(capsys, *train_args(small_real_root, good, "--resume"))
    assert code == 0, err
    assert tensors_equal(good / WEIGHTS, uninterrupted / WEIGHTS)


def test_evaluate_refuses_a_model_whose_weights_were_swapped(partial_model, uninterrupted, small_real_root,
                                                             tmp_path, capsys):
    model = copy_model(partial_model, tmp_path / "swapped")
    shutil.copy2(uninterrupted / WEIGHTS, model / WEIGHTS)
    code, _, err = cli(capsys, *eval_args(model, small_real_root, tmp_path / "eval", "--allow-partial"))
    one_error_line(code, err, str(model), "inconsistent", WEIGHTS)


# --------------------------------------------------------------------------------------------------
# Evaluating an unfinished model
# --------------------------------------------------------------------------------------------------


def test_evaluate_refuses_an_unfinished_model_unless_allowed(partial_model, uninterrupted, small_real_root,
                                                             tmp_path, capsys):
    code, _, err = cli(capsys, *eval_args(partial_model, small_real_root, tmp_path / "refused"))
    one_error_line(code, err, str(partial_model), "unfinished", f"2 of {TOTAL}", "--allow-partial")
    assert not (tmp_path / "refused").exists()

    code, out, err = cli(capsys, *eval_args(partial_model, small_real_root, tmp_path / "partial", "--allow-partial"))
    assert code == 0, err
    record = json.loads((tmp_path / "partial" / "metrics.json").read_text())
    assert record["partial"] is True and (record["episodes_done"], record["episodes_planned"]) == (2, TOTAL)
    assert f"2 of {TOTAL}" in out

    code, _, err = cli(capsys, *eval_args(uninterrupted, small_real_root, tmp_path / "finished"))
    assert code == 0, err
    assert "partial" not in json.loads((tmp_path / "finished" / "metrics.json").read_text())


# --------------------------------------------------------------------------------------------------
# The generic atomic write: fsync before the rename, and the folder after it
# --------------------------------------------------------------------------------------------------


def test_atomic_write_fsyncs_the_file_before_renaming_and_the_folder_after(tmp_path, monkeypatch):
    from workers import files

    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "out.json"
    files.atomic_write_text(target, "{}")
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"]
    assert Path(calls[0][1]).parent == tmp_path and calls[0][1] != str(target)  # the temporary file
    assert calls[2][1] == str(tmp_path)  # then the folder holding the new name
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["out.json"]
