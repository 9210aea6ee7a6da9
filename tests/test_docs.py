"""The docs, run as written: every ```bash block of README.md and docs/{data,tuning,cluster,mlflow}.md is
marked, and the marked ones run, in order, in a fresh copy of the repository on a tiny budget against
real local services (a Ray head, an mlflow server, optuna-dashboard, all started by the docs themselves
on 127.0.0.1 and stopped by PID).

Markers (an HTML comment on the line before the fence, invisible when rendered):

    <!-- docs-test -->                 run this block
    <!-- docs-test: skip REASON -->    do not run it; REASON says why, and SKIPPED below lists it

An unmarked bash block fails the test, so a new command cannot slip past it.

How the budget shrinks, without touching the docs' text:
* the copy's params.yaml is a tiny one (32 px, 3 episodes, one target, two methods): what `dvc repro`
  and `dvc exp run` read (and `fsad`, which reads ./params.yaml);
* `fsad` on PATH is a wrapper that appends TINY `--set` overrides to the verbs that take them (train,
  tune, loo, demo, video); every other verb runs unchanged;
* SUBSTITUTIONS replaces a few literal budget values and the fixed ports (free ones are taken);
* ../shared/data/fsad-real beside the copy is the small copy of the real data (tests/conftest.py).

Each document runs as one bash script (`set -m`, as an interactive shell: background commands get their
own process group, which the docs' `kill -- -PID` relies on; `set -euo pipefail`). Whatever the docs
started and recorded in a *.pid file is stopped by that PID afterwards, also when a block failed.
"""
from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY, copy_worktree

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DOCS = ("docs/data.md", "docs/tuning.md", "docs/cluster.md", "docs/mlflow.md", "README.md")  # run in this order
MARKER = re.compile(r"^<!-- docs-test(?:: skip (?P<reason>.+?))? -->$")

# Blocks that do not run, by (document, first line): each with the reason its marker gives.
SKIPPED = {
    ("README.md", "make demo   # creates .venv, installs pinned deps, meta-trains on real data, prints ours vs kNN vs MAML-AE vs baselines"):
        "make demo meta-trains on the real data (minutes) and make test is the whole suite",
    ("README.md", "source .venv/bin/activate"):
        "the paper's protocol takes minutes even on a tiny budget; tests/test_dvc.py runs it",
    ("docs/cluster.md", "fsad train ... --workers 8 --address auto              # $RAY_ADDRESS, or the cluster `ray start` made here"):
        "fragments: `...` stands for the options above; the one-machine cluster below runs --address auto",
    ("docs/cluster.md", "# on the head: make the cluster token once, keep it private (mode 600)"):
        'needs several machines (scp, ssh); "A cluster on one machine" below is the same journey and is run',
    ("docs/cluster.md", "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=~/.ray/fsad_cluster_token   # on the head: ~/.ray/auth_token"):
        "placeholders (raysubmit_XXXXXXXX, a node's token path); the one-machine cluster above runs ray job "
        "status/logs/list on its own job",
    ("docs/cluster.md", "ray stop            # on each worker node: stops the Ray processes started there"):
        "needs worker nodes and an SSH tunnel, and `ray stop` stops every Ray process of the machine (other "
        "users' too); the one-machine cluster above is stopped by PID",
    ("docs/mlflow.md", "# from a training run: support draw 0 of the evaluation protocol (K = eval.shots unless --shots)"):
        "placeholders (<RUN_ID>, path/to/good_shots/, new_line/good/); tests/test_tracking.py registers and adapts",
    ("docs/mlflow.md", "# the venv's bin/ must be on PATH (uvicorn); fsad installed in that environment"):
        "needs a registered fsad-tire; tests/test_tracking_server.py serves the champion over HTTP",
    ("docs/mlflow.md", "FSAD_SERVE_IMAGE_ROOT=/srv/inspection/images MLFLOW_TRACKING_URI=sqlite:///mlflow.db \\"):
        "needs a registered fsad-tire and a folder /srv/inspection/images",
    ("docs/mlflow.md", "export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:9000   # any S3-compatible store; omit for AWS"):
        "needs PostgreSQL credentials and an S3 endpoint; tests/test_tracking_server.py runs exactly this",
    ("docs/mlflow.md", "fsad sync-runs --tracking-uri http://127.0.0.1:5000   # exit 0 when every journal was uploaded"):
        "needs a tracking server that was down during a run; tests/test_tracking_server.py runs it",
    ("docs/tuning.md", "optuna-dashboard sqlite:///tune.db --host 127.0.0.1 --port 8080"):
        "the same server on other storages; PostgreSQL needs a database (tests/test_tune.py starts it on one)",
    ("docs/data.md", "fsad ingest --source s3://my-bucket/datasets/fsad-real --name fsad-real --out data/fsad-real \\"):
        "needs an S3 bucket and endpoint (tests/test_dvc.py ingests from a moto S3); elpv writes 2,600 images",
    ("docs/data.md", "dvc exp run --temp -S train.episodes=300 -S data.image_size=128"):
        "the command above at a larger budget (minutes); tests/test_dvc.py runs dvc exp run --temp in a second "
        "clone and checks the workspace's results stay as they were",
    ("docs/data.md", "dvc push                               # to the default local remote"):
        "needs an S3 endpoint and credentials; tests/test_dvc.py pushes and pulls through a moto S3 remote",
}

# Literal budget values of the docs -> tiny ones (ports are added per run: fixed ports may be taken).

def quiet_ports(count: int, low: int = 20000, high: int = 32768) -> list[int]:
    """`count` distinct free ports between Ray's worker range (10002-19999) and the kernel's ephemeral range
    (32768 up). tests.test_ray_cluster.free_port() draws from the ephemeral range, where the Ray processes a doc starts later take
    their own random ports: once, the MLflow server of docs/cluster.md found its port taken by one and died
    ("address already in use"). Ports below 32768 are handed out only when asked for by number."""
    rng, chosen = random.Random(), []
    for _ in range(1000):
        port = rng.randrange(low, high)
        if port in chosen:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError(f"no {count} free ports in [{low}, {high})")

SUBSTITUTIONS = {
    "--trials 40": "--trials 2",
    "--draws 5": "--draws 1",
}
PORTS = ("6380", "8265", "10011", "5000", "8080")
SET_VERBS = ("train", "tune", "loo", "demo", "video")
TUNE_TINY = {"tune.eval_every": 2, "tune.eval_images": 6, "tune.eval_shots": 2, "tune.space.shots.choices": "[1,2]",
             "tune.startup_trials": 1}
TINY_PARAMS = {
    "data": {"image_size": 32},
    "model": {"backbone": {"width": 8, "out_dim": 8}},
    "langevin": {"steps": 2},
    "train": {"episodes": 3, "shots": 2, "queries": 2, "checkpoint_every": 2},
    "eval": {"draws": 1, "overlays": 1, "calibration_size_correction": False},
    # the small copy of fsad-real only (the default source also links fsad-extra, which the copy lacks)
    "pipeline": {"name": "fsad-real", "source": "../shared/data/fsad-real", "targets": ["tire"], "shots": [1],
                 "methods": ["ours", "knn"], "val_categories": ["kolektor"]},
}


def collect(doc: str) -> list[dict]:
    """The bash blocks of `doc`: text, marker (run / skip reason / None) and line number."""
    lines = (REPO / doc).read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            match = MARKER.match(lines[i - 1].strip()) if i > 0 else None
            text = textwrap.dedent("\n".join(lines[i + 1:end]) + "\n")  # a block inside a list item is indented
            blocks.append({"doc": doc, "line": i + 1, "text": text, "first": text.split("\n", 1)[0],
                           "marked": match is not None,
                           "skip": match.group("reason") if match else None})
            i = end
        i += 1
    return blocks


def test_every_bash_block_is_marked_and_every_skip_is_listed_with_its_reason():
    blocks = [b for doc in DOCS for b in collect(doc)]
    unmarked = [f"{b['doc']}:{b['line']}" for b in blocks if not b["marked"]]
    assert not unmarked, f"bash blocks without a <!-- docs-test --> marker: {unmarked}"
    skipped = {(b["doc"], b["first"]): b["skip"] for b in blocks if b["skip"]}
    assert skipped == SKIPPED
    assert sum(1 for b in blocks if b["marked"] and not b["skip"]) >= 10


def fsad_wrapper(folder: Path) -> Path:
    """`fsad` that appends the tiny budget to the verbs that take --set."""
    sets = " ".join(f"--set {k}={v}" for k, v in {**TINY, "eval.overlays": 1}.items())
    tune_sets = " ".join(f"--set {k}={v}" for k, v in TUNE_TINY.items())
    script = folder / "fsad"
    script.write_text(f"""#!/bin/bash
verb="$1"
case "$verb" in
  tune) exec "{sys.executable}" -m orchestrator.cli "$@" {sets} {tune_sets} ;;
  {'|'.join(v for v in SET_VERBS if v != 'tune')}) exec "{sys.executable}" -m orchestrator.cli "$@" {sets} ;;
  *) exec "{sys.executable}" -m orchestrator.cli "$@" ;;
esac
""")
    script.chmod(0o755)
    return script


def make_copy(base: Path, small_real_root: Path) -> Path:
    """A fresh git repository holding the working tree's files (tracked and untracked, not ignored)."""
    repo = copy_worktree(base / "repo")
    (base / "shared" / "data").mkdir(parents=True)
    (base / "shared" / "data" / "fsad-real").symlink_to(small_real_root)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wrappers = base / "bin"
    wrappers.mkdir()
    fsad_wrapper(wrappers)
    venv_bin = repo / ".venv" / "bin"  # what `make venv` builds: here the suite's own environment
    venv_bin.mkdir(parents=True)
    (venv_bin / "activate").write_text(f'export PATH="{wrappers}:{BIN}:$PATH"\n')
    (venv_bin / "python").symlink_to(sys.executable)
    return repo


def doc_script(doc: str, ports: dict[str, str]) -> str:
    parts = ["set -m", "set -euo pipefail"]
    for block in collect(doc):
        if not block["marked"] or block["skip"]:
            continue
        text = block["text"]
        for old, new in SUBSTITUTIONS.items():
            text = text.replace(old, new)
        for old, new in ports.items():
            text = re.sub(rf"(?<![\d.]){old}(?!\d)", new, text)
        parts.append(f'echo "docs-test: {doc}:{block["line"]} at $(date +%s.%N)" >&2')
        parts.append(text)
    return "\n".join(parts) + "\n"


def block_times(err: str, ended: float) -> dict[str, float]:
    """Seconds per block, from the `docs-test: DOC:LINE at EPOCH` lines the script writes before each."""
    marks = [(m.group(1), float(m.group(2))) for m in re.finditer(r"^docs-test: (\S+) at ([\d.]+)$", err, re.M)]
    ends = [t for _, t in marks[1:]] + [ended]
    return {where: round(end - start, 1) for (where, start), end in zip(marks, ends)}


def stop_recorded(repo: Path) -> None:
    """Whatever a failed doc left running: the process groups and processes its *.pid files name."""
    signalled = False
    for pid_file in repo.glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        for target, sig in ((-pid, signal.SIGTERM), (pid, signal.SIGTERM)):
            try:
                os.kill(target, sig)
                signalled = True
            except (ProcessLookupError, PermissionError):
                pass
    if not signalled:  # the docs stopped everything they started
        return
    time.sleep(2)
    for pid_file in repo.glob("*.pid"):
        try:
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (ValueError, ProcessLookupError, PermissionError):
            pass


def test_the_docs_run_as_written(small_real_root, tmp_path):
    repo = make_copy(tmp_path, small_real_root)
    home = tmp_path / "home"
    home.mkdir()
    # a user's environment: none of the suite's settings (FSAD_PARAMS=0 would make fsad ignore the copy's
    # params.yaml, FSAD_TRACKING=0 switch tracking off); tracking is on, as by default
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "FSAD_", "DVC_"))}
    env.update(HOME=str(home), PATH=f"{tmp_path / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(repo), FSAD_TRACKING="1", DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    ports = dict(zip(PORTS, map(str, quiet_ports(len(PORTS)))))
    failures, timings, block_seconds, configs = [], {}, {}, set()
    for doc in DOCS:
        script = doc_script(doc, ports)
        began = time.perf_counter()
        try:
            proc = subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                                  timeout=600)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = "timeout", str(exc.stdout or ""), str(exc.stderr or "")
        finally:
            stop_recorded(repo)
        timings[doc] = round(time.perf_counter() - began, 1)
        block_seconds.update(block_times(err, time.time()))
        configs.update(re.findall(r"^fsad: config: (.+)$", err, re.M))
        if code != 0:
            where = [line for line in err.splitlines() if line.startswith("docs-test: ")]
            failures.append(f"{doc} (exit {code}) at {where[-1] if where else '?'}:\n{out[-1500:]}\n{err[-2500:]}")
    print("docs-test seconds per document:", timings)
    print("docs-test slowest blocks (s):", sorted(block_seconds.items(), key=lambda kv: -kv[1])[:8])
    assert not failures, "\n\n".join(failures)
    # every fsad verb read the copy's params.yaml, as a user's would (evaluate: for what a model does not fix)
    assert configs and {c.split(" (")[0] for c in configs} == {"./params.yaml"}, configs


def test_docs_figures_holds_only_what_the_report_stage_writes():
    """docs/figures is an output of experiments/dvc.yaml's report stage, which dvc empties before each run:
    a picture another tool puts there is deleted by the next `dvc repro`. Those live in docs/images."""
    import re

    report = (REPO / "docs" / "results.md").read_text()
    linked = set(re.findall(r"\]\(figures/([^)]+)\)", report))
    committed = {p.name for p in (REPO / "docs" / "figures").iterdir()}
    assert committed == linked, f"in docs/figures but not in the report: {sorted(committed - linked)}; " \
                                f"linked but missing: {sorted(linked - committed)}"
    for doc in (REPO / "docs").glob("*.md"):
        for target in re.findall(r"\]\((images/[^)]+)\)", doc.read_text()):
            assert (REPO / "docs" / target).is_file(), f"{doc.name} links {target}, which does not exist"
