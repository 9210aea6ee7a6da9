"""Shared fixtures: the real data in ../shared (read-only), small copies of it, tiny CLI budgets.

The real benchmark lives beside the clone at ../shared/data/fsad-real (CI checks ../shared out next to
the repository). It is never modified and never copied into the repository: tests that plant bad
files do so in a copy under tmp_path.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# tests import these names from here; they live in benchmarks/fixtures.py, shared with the benchmarks
from benchmarks.fixtures import (  # noqa: F401
    IMAGE_EXTENSIONS,
    N_ANOMALOUS,
    N_TEST_GOOD,
    N_TRAIN,
    REAL_ROOT,
    REPO,
    SMALL_CATEGORIES,
    copy_small,
    image_files,
)
from model.errors import InputError

# The CLI tests run untracked (no ./mlflow.db); tests/test_tracking*.py pass --tracking-uri explicitly.
os.environ.setdefault("FSAD_TRACKING", "0")
# ... and on the embedded defaults: many run with the repository as working directory, whose
# ./params.yaml (edited by a user, or by `dvc exp run`) fsad would otherwise read. Tests of that rule
# (tests/test_cli.py) remove this variable.
os.environ.setdefault("FSAD_PARAMS", "0")

# Under pytest-xdist (`make test` runs two workers on the 2-core machines) each worker, and every fsad process
# it starts, does its torch math on one thread: two workers of two OpenMP threads would oversubscribe the cores,
# and tests that compare a subprocess's weights bit for bit with this process's need the same thread count.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# HELD_OUT is the target category of CLI tests (one of SMALL_CATEGORIES).
HELD_OUT = "tire"

# Tiny budgets: every CLI run finishes in seconds on 2 CPU cores.
TINY = {
    "data.image_size": 32,
    "train.episodes": 3,
    "train.shots": 2,
    "train.queries": 2,
    "train.checkpoint_every": 2,
    "model.backbone.width": 8,
    "model.backbone.out_dim": 8,
    "langevin.steps": 2,
    "eval.overlays": 2,
    "maml.width": 8,
    "maml.latent": 8,
    "maml.inner_steps": 2,
    # the K - 2 scoring doubles every calibration; tests/test_calibration.py tests it, the CLI tests need not
    "eval.calibration_size_correction": False,
}


def tiny_sets(**changes) -> list[str]:
    """`--set KEY=VALUE ...` arguments for the tiny budget; keyword changes use "__" for ".".

    tiny_sets(train__episodes=4) -> [..., "--set", "train.episodes=4", ...]
    """
    values = dict(TINY)
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def copy_worktree(dst: Path) -> Path:
    """The repository's working tree (tracked and untracked files, not git-ignored ones) copied to dst: a
    snapshot that edits to the checkout while a test runs cannot change (e.g. a Ray job's --working-dir,
    which Ray hashes, uploads and unpacks in separate steps)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.fixture(scope="session")
def real_root() -> Path:
    """../shared/data/fsad-real (read-only). Tests that need it are skipped when it is absent."""
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real data {REAL_ROOT} is absent (CI checks ../shared out beside the clone)")
    return REAL_ROOT


@pytest.fixture(scope="session")
def small_real_root(real_root: Path, tmp_path_factory) -> Path:
    """One small copy for the whole session. Treat as read-only: plant bad files in small_real_copy."""
    return copy_small(real_root, tmp_path_factory.mktemp("small_real") / "root")


@pytest.fixture
def small_real_copy(small_real_root: Path, tmp_path: Path) -> Path:
    """A private small copy under tmp_path (12 train/good, 4 test/good, 4 anomalous + masks per
    category of SMALL_CATEGORIES): free to modify, e.g. to plant corrupt files."""
    dst = tmp_path / "data"
    shutil.copytree(small_real_root, dst)
    return dst


@pytest.fixture(scope="session")
def trained_model(small_real_root: Path, tmp_path_factory) -> Path:
    """An `ours` model directory trained (tiny budget) on the small copy with HELD_OUT excluded."""
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("trained") / "model"
    code = main(["train", "--data", str(small_real_root), "--exclude", HELD_OUT, "--out", str(out), "--quiet",
                 *tiny_sets()])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def trained_maml(small_real_root: Path, tmp_path_factory) -> Path:
    """A `maml_ae` model directory trained (tiny budget) on the small copy with HELD_OUT excluded."""
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("trained_maml") / "model"
    code = main(["train", "--method", "maml_ae", "--data", str(small_real_root), "--exclude", HELD_OUT,
                 "--out", str(out), "--quiet", *tiny_sets()])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def ray_token(tmp_path_factory) -> Path:
    """A Ray cluster token made for this session, so cluster tests need nothing in the home directory.

    `ray get-auth-token --generate` always writes ~/.ray/auth_token, so it runs with HOME pointing at a
    private folder; clusters and clients started by the tests read the file through RAY_AUTH_TOKEN_PATH.
    """
    home = tmp_path_factory.mktemp("ray_home")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(home)
    done = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], env=env,
                          capture_output=True, text=True, timeout=120)
    token = home / ".ray" / "auth_token"
    assert done.returncode == 0 and token.is_file(), done.stderr[-2000:]
    assert done.stdout.strip() == token.read_text().strip() and len(done.stdout.strip()) >= 32
    return token


def expect_error(fn, *needles) -> str:
    """fn() raises one InputError whose one-line message contains every needle; returns the message."""
    with pytest.raises(InputError) as exc:
        fn()
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, f"{needle!r} not in {message!r}"
    return message


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run `fsad ARGS` in-process: (exit code, stdout, stderr) of this call alone."""
    from orchestrator.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, err: str, *needles) -> str:
    """Exit 2 and exactly one `fsad: error:` line on stderr, containing every needle; returns the line."""
    assert code == 2, f"expected exit 2, got {code}: {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fsad: error: "), lines
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]
