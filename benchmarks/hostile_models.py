"""Hostile cases for checkpoints and registered models, as rows for the table in docs/reliability.md.

Each function runs the real thing in a scratch folder — `python -m orchestrator.cli` subprocesses (killed
at a checkpoint step with the FSAD_CRASH_AT test hook), fresh interpreters loading a packaged model —
and returns Row(case, exit_code, message, left_on_disk): what a user would see and find afterwards.

    python -m benchmarks.hostile_models [--data ROOT]   # prints the rows as a Markdown table

--data: an MVTec-layout root with kolektor, juice_bottle and tire (default: a small copy of
../shared/data/fsad-real made in the scratch folder). Takes a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = "tire"
TOTAL, EVERY, KILL_AT = 6, 2, 4
TINY = {"data.image_size": 32, "train.shots": 2, "train.queries": 2, "train.checkpoint_every": EVERY,
        "train.episodes": TOTAL, "model.backbone.width": 8, "model.backbone.out_dim": 8, "langevin.steps": 2,
        "eval.overlays": 1}
MARKER_CODE = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


class Row(NamedTuple):
    case: str
    exit_code: str
    message: str
    left_on_disk: str


def _env(**extra) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), FSAD_TRACKING="0", **extra)


def fsad(*args, **env) -> tuple[int, str]:
    """`fsad ARGS` as a subprocess -> (exit status as a shell reports it, last stderr line)."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    code = 128 - proc.returncode if proc.returncode < 0 else proc.returncode  # -9 -> 137, as the shell says
    return code, lines[-1] if lines else ""


def python(code: str, *args, cwd: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in (proc.stderr if proc.returncode else proc.stdout).splitlines() if line.strip()]
    return proc.returncode, lines[-1] if lines else ""


def train_args(data: Path, out: Path, *extra) -> list:
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    return ["train", "--data", data, "--target", HELD_OUT, "--out", out, "--quiet", *sets, *extra]


def eval_args(model: Path, data: Path, out: Path, *extra) -> list:
    return ["evaluate", "--model", model, "--data", data, "--target", HELD_OUT, "--shots", 2, "--draws", 1,
            "--out", out, "--quiet", *extra]


def extras(folder: Path) -> str:
    """What besides the model files a folder holds (temporaries, checkpoint folders), with sizes."""
    usual = {"model.safetensors", "config.yaml", "meta.json", "state.pt", "checkpoint.json"}
    if not folder.exists():
        return "nothing (no folder)"
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name in usual:
            continue
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else entry.stat().st_size
        found.append(f"`{entry.name}{'/' if entry.is_dir() else ''}` ({size / 1e6:.2f} MB)")
    return ", ".join(found) or "only the model files"


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file
    import torch

    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_rows(data: Path, work: Path) -> list[Row]:
    rows = []
    reference = work / "uninterrupted"
    code, err = fsad(*train_args(data, reference))
    assert code == 0, err
    for step, what in (("write", "weights written into the new checkpoint folder, state not yet"),
                       ("commit", "new checkpoint folder complete, not yet renamed"),
                       ("publish", "new weights published beside the old state (the old corrupting point)"),
                       ("cleanup", "everything published, committed folder not yet removed")):
        out = work / f"kill_{step}"
        killed, _ = fsad(*train_args(data, out), FSAD_CRASH_AT=f"{step}@{KILL_AT}")
        after_kill = extras(out)
        code, err = fsad(*train_args(data, out, "--resume"))
        identical = code == 0 and same_weights(out, reference)
        rows.append(Row(
            f"`fsad train` SIGKILLed at episode {KILL_AT} of {TOTAL}: {what}; then `--resume`",
            f"{killed}, then {code}",
            err or f"resumed; final weights {'bit-identical to' if identical else 'DIFFERENT from'} an uninterrupted run",
            f"after the kill: {after_kill}; after the resume: {extras(out)}",
        ))

    partial = work / "partial"  # consistent at episode 2 of 6
    fsad(*train_args(data, partial), FSAD_CRASH_AT=f"write@{KILL_AT}")
    shutil.rmtree(next(partial.glob(".checkpoint-*")), ignore_errors=True)

    stale = work / "stale_tmp"
    shutil.copytree(partial, stale)
    (stale / ".state.pt.k3j9x0q1.tmp").write_bytes(os.urandom(1_500_000))  # a kill inside the old atomic write
    before = extras(stale)
    code, err = fsad(*train_args(data, stale, "--resume"))
    rows.append(Row("a 1.5 MB `.state.pt.*.tmp` left by a kill during an old-style state write; `--resume`",
                    str(code), err or "resumed", f"before: {before}; after: {extras(stale)}"))

    mixed = work / "mixed"
    shutil.copytree(partial, mixed)
    shutil.copy2(reference / "state.pt", mixed / "state.pt")  # state of episode 6 beside weights of episode 2
    before = {p.name: p.read_bytes() for p in mixed.iterdir() if p.is_file()}
    code, err = fsad(*train_args(data, mixed, "--resume"))
    unchanged = before == {p.name: p.read_bytes() for p in mixed.iterdir() if p.is_file()}
    rows.append(Row("`--resume` of a folder whose state.pt is from another episode (no complete checkpoint left)",
                    str(code), err, "every file unchanged" if unchanged else "FILES CHANGED"))

    publish = work / "kill_publish_again"
    fsad(*train_args(data, publish), FSAD_CRASH_AT=f"publish@{KILL_AT}")
    code, err = fsad(*eval_args(publish, data, work / "eval_mixed", "--allow-partial"))
    rows.append(Row("`fsad evaluate` of a model folder killed while publishing a checkpoint", str(code), err,
                    extras(work / "eval_mixed")))

    code, err = fsad(*eval_args(partial, data, work / "eval_partial"))
    rows.append(Row(f"`fsad evaluate` of a model stopped at 2 of {TOTAL} episodes", str(code), err,
                    extras(work / "eval_partial")))
    code, _ = fsad(*eval_args(partial, data, work / "eval_allowed", "--allow-partial"))
    record = json.loads((work / "eval_allowed" / "metrics.json").read_text()) if code == 0 else {}
    marks = {k: record.get(k) for k in ("partial", "episodes_done", "episodes_planned")}
    rows.append(Row("the same with `--allow-partial`", str(code), f"metrics.json marks it: {json.dumps(marks)}",
                    "metrics.json and overlays in --out"))
    return rows


# --------------------------------------------------------------------------------------------------
# Registered models


LOAD = {
    "mlflow": "import sys, numpy as np, mlflow.pyfunc\nm = mlflow.pyfunc.load_model(sys.argv[1])\n",
    "fsad": "import sys, numpy as np\nfrom orchestrator.tracking.pyfunc import load\nm = load(sys.argv[1])\n",
}
SCORE = "print(float(m.predict(np.full((1, 3, 32, 32), 0.5, dtype=np.float32))['score'][0]))"


def package(data: Path, work: Path) -> Path:
    """A trained, adapted and packaged model, as `fsad register` uploads it."""
    from orchestrator.tracking.artifacts import load_model_dir
    from orchestrator.tracking.pyfunc import save_dictionary, save_package
    from orchestrator.tracking.registry import adapt
    from workers.data.folders import load_images

    model_dir = work / "uninterrupted"
    if not (model_dir / "model.safetensors").is_file():
        code, err = fsad(*train_args(data, model_dir))
        assert code == 0, err
    model, cfg, _ = load_model_dir(model_dir)
    support, _ = load_images([data / HELD_OUT / "train" / "good"], cfg.data.image_size)
    dictionary, _ = adapt(model, cfg, support[:2])
    save_dictionary(dictionary, work / "dictionary.safetensors", HELD_OUT)
    save_package(work / "package", model_dir, work / "dictionary.safetensors", {"fsad_category": HELD_OUT})
    return work / "package"


def model_rows(data: Path, work: Path) -> list[Row]:
    import yaml

    clean = package(data, work)
    rows = []
    _, clean_score = python(LOAD["mlflow"] + SCORE, clean, cwd=work)

    planted = Path(shutil.copytree(clean, work / "planted"))
    markers = work / "markers"
    markers.mkdir()
    for index, rel in enumerate(("pyfunc_entry.py", "python_model.py", "data/fsad_model/__init__.py",
                                 "data/fsad_model/orchestrator/pyfunc.py", "code/orchestrator/__init__.py")):
        (planted / rel).parent.mkdir(parents=True, exist_ok=True)
        (planted / rel).write_text(MARKER_CODE.format(marker=str(markers / f"{index}")))
    for loader in ("mlflow", "fsad"):
        code, score = python(LOAD[loader] + SCORE, planted, cwd=work)
        rows.append(Row(f"registered model folder with 5 planted/tampered Python files, loaded by "
                        f"{'`mlflow.pyfunc.load_model`' if loader == 'mlflow' else '`orchestrator.tracking.pyfunc.load`'}",
                        str(code), f"loads and scores {'as the clean copy' if score == clean_score else 'DIFFERENTLY'}",
                        f"marker files written by planted code: {len(os.listdir(markers))}"))

    rewritten = Path(shutil.copytree(planted, work / "rewritten"))
    tree = yaml.safe_load((rewritten / "MLmodel").read_text())
    tree["flavors"]["python_function"]["code"] = "code"  # the attacker also rewrites MLmodel
    (rewritten / "MLmodel").write_text(yaml.safe_dump(tree))
    for loader in ("fsad", "mlflow"):
        for marker in markers.iterdir():
            marker.unlink()
        code, message = python(LOAD[loader] + SCORE, rewritten, cwd=work)
        rows.append(Row(f"MLmodel rewritten to name a planted `code/` folder, loaded by "
                        f"{'`orchestrator.tracking.pyfunc.load`' if loader == 'fsad' else '`mlflow.pyfunc.load_model` (MLflow obeys MLmodel)'}",
                        str(code), message[:300],
                        f"marker files written by planted code: {len(os.listdir(markers))}"))

    old = work / "old_format"
    (old / "artifacts" / "weights").mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml", "meta.json"):
        shutil.copyfile(clean / "data" / "fsad_model" / name, old / "artifacts" / "weights" / name)
    shutil.copyfile(clean / "data" / "fsad_model" / "dictionary.safetensors", old / "artifacts" / "dictionary.safetensors")
    for name in ("conda.yaml", "python_env.yaml", "requirements.txt"):
        shutil.copyfile(clean / name, old / name)
    (old / "pyfunc_entry.py").write_text("from mlflow.models import set_model\n\nfrom orchestrator.pyfunc import "
                                         "FsadModel\n\nset_model(FsadModel())\n")
    (old / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
        "artifacts": {"dictionary": {"path": "artifacts/dictionary.safetensors"}, "weights": {"path": "artifacts/weights"}},
        "env": {"conda": "conda.yaml", "virtualenv": "python_env.yaml"}, "loader_module": "mlflow.pyfunc.loaders.code_model",
        "model_code_path": "/old/host/orchestrator/pyfunc_entry.py", "python_version": "3.11.7"}},
        "mlflow_version": "3.17.2"}))
    code, message = python(LOAD["mlflow"] + SCORE, old, cwd=work)
    rows.append(Row("a version registered in the old models-from-code format, loaded by `mlflow.pyfunc.load_model`",
                    str(code), message[:400], "nothing"))
    return rows


def serving_rows(data: Path, work: Path) -> list[Row]:
    """Path inputs to a served model: what `mlflow models serve` answers (MlflowException -> HTTP 400)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from orchestrator.tracking.pyfunc import load

    clean = work / "package" if (work / "package").is_dir() else package(data, work)
    real_file = next((data / HELD_OUT / "test" / "good").iterdir())

    def answer(model, path: str) -> str:
        try:
            model.predict(pd.DataFrame({"path": [path]}))
        except MlflowException as exc:
            return exc.message
        return "scored"

    rows = []
    os.environ.pop("FSAD_SERVE_IMAGE_ROOT", None)
    model = load(str(clean))
    for path in ("/etc/passwd", "/no/such/file.png"):
        rows.append(Row(f"served model (no FSAD_SERVE_IMAGE_ROOT) asked for `{path}`", "HTTP 400", answer(model, path),
                        "nothing (no file opened)"))
    root = work / "served_images"
    root.mkdir()
    shutil.copy2(real_file, root / "a.png")
    (root / "link.png").symlink_to(real_file)
    os.environ["FSAD_SERVE_IMAGE_ROOT"] = str(root)
    try:
        model = load(str(clean))
        for path, what in (("a.png", "a file under the root"), (str(real_file), "an existing image outside the root"),
                           ("../../no/such.png", "a missing file outside the root"),
                           ("link.png", "a link under the root to a file outside it"),
                           ("/etc/passwd", "a system file")):
            rows.append(Row(f"served model with FSAD_SERVE_IMAGE_ROOT set, asked for {what} (`{path}`)",
                            "HTTP 200" if answer(model, path) == "scored" else "HTTP 400", answer(model, path),
                            "nothing"))
    finally:
        os.environ.pop("FSAD_SERVE_IMAGE_ROOT", None)
    return rows


def all_rows(data: Path | None = None, work: Path | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="fsad-hostile-") as scratch:
        work = Path(work or scratch)
        if data is None:
            sys.path.insert(0, str(REPO))
            from benchmarks.fixtures import REAL_ROOT, copy_small

            data = copy_small(REAL_ROOT, work / "data")
        rows = checkpoint_rows(data, work) + model_rows(data, work) + serving_rows(data, work)
        # the scratch folder's name changes every run: show it as <scratch>
        return [Row(*(str(field).replace(str(work), "<scratch>") for field in row)) for row in rows]


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| case | exit code | message | left on disk |", "|---|---|---|---|"]
    lines += [f"| {cell(r.case)} | {cell(r.exit_code)} | {cell(r.message)} | {cell(r.left_on_disk)} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="MVTec-layout root (default: a small copy of the real data)")
    args = parser.parse_args()
    print(markdown(all_rows(args.data)))


if __name__ == "__main__":
    main()
