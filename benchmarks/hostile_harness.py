"""The harness of the hostile-input cases (benchmarks/hostile.py): a workspace with a small data copy
and a tiny trained model, `fsad` run in a subprocess with its peak RSS, a case's Result and the rules it
is checked against, and the `@case` registry the case modules (benchmarks/hostile_*.py) fill."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fsad-real"
DOC = REPO / "docs" / "reliability.md"
CATEGORIES = ("juice_bottle", "kolektor", "tire")
HELD_OUT = "tire"
TINY = ["data.image_size=32", "train.episodes=3", "train.shots=2", "train.queries=2", "train.checkpoint_every=2",
        "model.backbone.width=8", "model.backbone.out_dim=8", "langevin.steps=2", "eval.overlays=2"]
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Root is not stopped by file modes: drop the two capabilities that bypass them for "unreadable" cases.
UNPRIVILEGED = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                "--bounding-set=-dac_override,-dac_read_search"]


def tiny_sets(*extra: str) -> list[str]:
    return [arg for kv in (*TINY, *extra) for arg in ("--set", kv)]


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)


def copy_small(src: Path, dst: Path, n_train: int = 8, n_test: int = 3) -> Path:
    """train/good, test/good and a few anomalous images (with masks) of CATEGORIES."""
    for category in CATEGORIES:
        s, d = src / category, dst / category
        for rel, n in (("train/good", n_train), ("test/good", n_test)):
            (d / rel).mkdir(parents=True)
            for f in images_in(s / rel)[:n]:
                shutil.copy2(f, d / rel / f.name)
        defect = sorted(p.name for p in (s / "test").iterdir() if p.is_dir() and p.name != "good")[0]
        (d / "test" / defect).mkdir(parents=True)
        (d / "ground_truth" / defect).mkdir(parents=True)
        for f in images_in(s / "test" / defect)[:n_test]:
            shutil.copy2(f, d / "test" / defect / f.name)
            mask = s / "ground_truth" / defect / f"{f.stem}_mask.png"
            shutil.copy2(mask, d / "ground_truth" / defect / mask.name)
    return dst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Result:
    """One hostile case: what was run and what happened; `expect_*` are what the rules require."""

    name: str
    command: str
    exit: int
    message: str
    left: str
    peak_mb: float
    stderr: str = ""
    stdout: str = ""
    expect_exit: int = 2
    expect_words: list[str] = field(default_factory=list)
    must_not_exist: list[Path] = field(default_factory=list)
    unchanged: dict[Path, str] = field(default_factory=dict)  # path -> sha256 before the run
    secrets: list[str] = field(default_factory=list)  # must appear in no output

    def problems(self) -> list[str]:
        """What breaks the rules (empty: the case behaves)."""
        found = []
        if self.exit != self.expect_exit:
            found.append(f"exit {self.exit}, expected {self.expect_exit}")
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        if self.expect_exit == 2 and not (len(lines) == 1 and lines[0].startswith("fsad: error: ")):
            found.append(f"expected one `fsad: error:` line, got {len(lines)} lines: {lines[-3:]}")
        for word in self.expect_words:
            if word not in self.message:
                found.append(f"{word!r} not in the message")
        for path in self.must_not_exist:
            if path.exists():
                found.append(f"{path} exists")
        for path, digest in self.unchanged.items():
            if not path.is_file() or sha256(path) != digest:
                found.append(f"{path} changed")
        for secret in self.secrets:
            if secret in self.stderr or secret in self.stdout:
                found.append("a secret was printed")
        return found

    def row(self) -> dict:
        return {"case": self.name, "command": self.command, "exit": self.exit, "message": self.message,
                "left": self.left, "peak_mb": round(self.peak_mb), "ok": not self.problems()}


class Workspace:
    """A temporary folder with a small data copy and, on first use, a tiny trained model."""

    def __init__(self, root: Path, data: Path = DEFAULT_DATA, code: Path = REPO):
        self.root, self.code = Path(root), Path(code)
        self.data = copy_small(data, self.root / "data")
        self._model: Path | None = None
        self._n = 0

    def fresh(self, name: str) -> Path:
        """A new, empty folder for one case."""
        self._n += 1
        folder = self.root / f"{self._n:02d}_{name}"
        folder.mkdir()
        return folder

    def data_copy(self, folder: Path) -> Path:
        return Path(shutil.copytree(self.data, folder / "data"))

    @property
    def model(self) -> Path:
        """An `ours` model trained (tiny budget) on the copy with HELD_OUT left out."""
        if self._model is None:
            out = self.root / "model"
            proc, _ = self.run(["train", "--data", self.data, "--target", HELD_OUT, "--out", out, "--quiet",
                                *tiny_sets()])
            if proc.returncode != 0:
                raise RuntimeError(f"training the workspace model failed: {proc.stderr[-2000:]}")
            self._model = out
        return self._model

    def run(self, args: list, unprivileged: bool = False, env: dict | None = None,
            timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
        """`fsad ARGS` in a subprocess of this workspace's checkout -> (process, peak RSS in MB)."""
        cmd = [sys.executable, "-m", "orchestrator.cli", *map(str, args)]
        if unprivileged and os.geteuid() == 0:
            cmd = UNPRIVILEGED + cmd
        run_env = {**os.environ, "PYTHONPATH": str(self.code), "FSAD_TRACKING": "0", **(env or {})}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, cwd=self.root, env=run_env, stdout=out, stderr=err, start_new_session=True)
            deadline = time.monotonic() + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and its children
                    deadline = float("inf")
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
        return done, usage.ru_maxrss / 1024

    def short(self, text: str) -> str:
        return str(text).replace(str(self.root), "$WS").replace(str(REPO), "$REPO")

    def result(self, name: str, args: list, proc: subprocess.CompletedProcess, peak: float, left: str,
               pick: str | None = None, **expect) -> Result:
        """The message is the last stderr line (else stdout's), or with `pick` the first output line holding it."""
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else (proc.stdout.strip().splitlines() or [""])[-1]
        if pick is not None:
            message = next((line for line in (proc.stderr + proc.stdout).splitlines() if pick in line), message)
        return Result(name=name, command=self.short("fsad " + " ".join(map(str, args))), exit=proc.returncode,
                      message=self.short(message), left=self.short(left), peak_mb=peak, stderr=proc.stderr,
                      stdout=proc.stdout, **expect)


def listing(path: Path) -> str:
    """What is at `path`: absent, a file, or the names in a folder (temporary files included)."""
    if not path.exists():
        return f"{path.name}: absent"
    if path.is_file():
        return f"{path.name}: a file"
    names = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    if not names:
        return f"{path.name}/: empty"
    shown = ", ".join(names[:4]) + (f", ... ({len(names)} files)" if len(names) > 4 else "")
    return f"{path.name}/: {shown}"


# --------------------------------------------------------------------------------------------------
# The case registry and the commands the cases share
# --------------------------------------------------------------------------------------------------

CASES: list[Callable[[Workspace], Result]] = []


def case(fn=None, *, suite: bool = True):
    """Register a case; suite=False: tests/test_hostile.py leaves it to another test file."""
    def register(f):
        f.in_suite = suite
        CASES.append(f)
        return f
    return register(fn) if fn is not None else register


def train_args(data: Path, out: Path, *extra: str) -> list:
    return ["train", "--data", data, "--target", HELD_OUT, "--out", out, "--quiet", *tiny_sets(), *extra]


def eval_args(ws: Workspace, data: Path, out: Path, category: str = HELD_OUT) -> list:
    return ["evaluate", "--model", ws.model, "--data", data, "--target", category, "--shots", 2, "--draws", 1,
            "--out", out, "--quiet", "--no-track"]
