"""`fsad tune --parallel 1` against `--parallel 2` on the same tiny budget: wall time, best value, distinct
parameter sets. Writes docs/benchmarks_tune.md (make bench copies it into docs/benchmarks.md).

    python -m benchmarks.tune_bench [--data ROOT] [--out bench_out/tune] [--trials 6] [--doc docs/benchmarks_tune.md]

The data is a small subset of fsad-real (links to the first images of each category, so a trial loads in
seconds); target tire, validation the last remaining category. Every trial trains the same number of
episodes (no pruning), so the two runs do the same work and differ only in how trials are spread.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fsad-real"
# The tests' tiny model (tests/conftest.py TINY) with 6 episodes per trial, a validation score every 3.
BUDGET = ["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8", "langevin.steps=2",
          "train.episodes=6", "train.shots=2", "train.queries=2", "tune.eval_every=3", "tune.eval_shots=2",
          "tune.eval_images=8", "tune.space.shots.choices=[1,2]", "tune.startup_trials=2", "tune.pruner=none",
          "tune.sampler_seed=0"]
SUBSET = {"train/good": 12, "test/good": 4}  # per category; plus the first 4 anomalous images with masks


def subset(src: Path, dst: Path, n_anomalous: int = 4) -> Path:
    """A small MVTec-layout root of symbolic links to the first images of every category of src."""
    for category in sorted(p for p in src.iterdir() if p.is_dir()):
        for rel, n in SUBSET.items():
            _link_first(category / rel, dst / category.name / rel, n)
        left = n_anomalous
        for defect in sorted(p for p in (category / "test").iterdir() if p.is_dir() and p.name != "good"):
            if left <= 0:
                break
            chosen = _link_first(defect, dst / category.name / "test" / defect.name, left)
            masks = dst / category.name / "ground_truth" / defect.name
            masks.mkdir(parents=True, exist_ok=True)
            for image in chosen:
                mask = category / "ground_truth" / defect.name / f"{image.stem}_mask.png"
                if not (masks / mask.name).exists():
                    (masks / mask.name).symlink_to(mask.resolve())
            left -= len(chosen)
    return dst


def _link_first(src: Path, dst: Path, n: int) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    chosen = sorted(p for p in src.iterdir() if p.is_file())[:n]
    for f in chosen:
        if not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    return chosen


def run(data: Path, out: Path, parallel: int, trials: int) -> dict:
    storage, study = out / f"p{parallel}" / "journal.log", f"bench-p{parallel}"
    cmd = [sys.executable, "-m", "orchestrator.cli", "tune", "--study", study, "--storage", str(storage),
           "--trials", str(trials), "--parallel", str(parallel), "--data", str(data), "--target", "tire",
           "--out", str(out / f"p{parallel}" / "out"), "--no-track", "--config", str(REPO / "params.yaml")]
    for item in BUDGET:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"tune --parallel {parallel} failed:\n{done.stderr[-3000:]}")
    loaded = optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(storage))))
    trials_done = loaded.get_trials(deepcopy=False)
    distinct = len({tuple(sorted(t.params.items())) for t in trials_done})
    return {"parallel": parallel, "wall_s": wall, "best": loaded.best_value, "best_trial": loaded.best_trial.number,
            "trials": len(trials_done), "distinct": distinct}


def markdown(rows: list[dict], command: str, trials: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(f"| {r['parallel']} | {r['trials']} | {r['distinct']} | {r['wall_s']:.0f} s | "
                      f"{r['best']:.4f} (trial {r['best_trial']}) |" for r in rows)
    return (
        "## Tuning: `fsad tune --parallel 1` against `--parallel 2`\n\n"
        f"Command: `{command}`  \n"
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); load average "
        f"{load:.1f} at the end (other jobs shared the machine); optuna {optuna.__version__}.  \n"
        f"Budget: {trials} trials of {' '.join(BUDGET)} on a subset of fsad-real (12 normal training images, "
        "4 normal and 4 anomalous test images per category), target tire, journal storage, no pruning, so both "
        "runs train the same number of episodes. Wall time includes starting Python (and Ray for P = 2).\n\n"
        "| P | trials | distinct parameter sets | wall time | best value |\n|---|---|---|---|---|\n"
        f"{table}\n\n"
        f"{_speed_note(rows, load)}"
        "Each trial's TPE sampler is seeded from (`tune.sampler_seed`, trial number) with constant liar, so "
        "concurrent trials draw different parameters; the first `tune.startup_trials` trials are the same "
        "in both runs, later ones depend on which trials had finished when they were asked "
        "(docs/tuning.md, \"Parallel trials and reproducibility\").\n"
    )


def _speed_note(rows: list[dict], load: float) -> str:
    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    note = f"P = 2 took {ratio:.2f}× the wall time of P = 1"
    if ratio > 0.9 and load > (os.cpu_count() or 1):
        note += (": with every core already busy (load above the core count) and Ray's start-up to pay, two "
                 "parallel trials could not finish sooner here (not measured on idle cores)")
    return note + ". The best values differ because the runs explore differently after the start-up trials.\n\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "bench_out" / "tune"))
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks_tune.md"))
    args = parser.parse_args(argv)
    command = "python -m benchmarks.tune_bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    if out.exists():
        import shutil

        shutil.rmtree(out)  # a fresh study each time: a resumed one would finish at once
    data = subset(Path(args.data), out / "data")
    rows = [run(data, out, p, args.trials) for p in (1, 2)]
    text = markdown(rows, command.strip(), args.trials)
    print(text)
    doc = Path(args.doc)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(doc)
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
