"""Hostile input, tried the way a new user or an attacker would: every case, its exit code, its message
and what it left on disk, written to docs/reliability.md.

    python -m benchmarks.hostile [--only NAME ...] [--code DIR] [--write docs/reliability.md]

Every case runs the real `fsad` console entry (`python -m orchestrator.cli`) in a subprocess against a
small copy of ../shared/data/fsad-real (or files planted in a copy), in a temporary workspace; its
peak RSS comes from wait4. tests/test_hostile.py runs the same cases and checks their expectations,
so the table and the tests cannot drift apart.

Adding a case: write a function `def my_case(ws: Workspace) -> Result` and decorate it with `@case`
(`@case(suite=False)` when the test suite already covers it elsewhere, e.g. with a Ray cluster).
It builds its input under `ws.fresh(...)`, runs `ws.fsad(...)`, and returns `ws.result(...)` with what
it expects (exit code, words of the message, paths that must not exist, files that must be unchanged).
--code runs another checkout's fsad on the same cases (e.g. the code before issue 11, to compare).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.bomb_memory import write_grey_png

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


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)


def copy_small(src: Path, dst: Path, n_train: int = 8, n_test: int = 3) -> Path:
    """train/good, test/good and a few anomalous images (with masks) of CATEGORIES."""
    for category in CATEGORIES:
        s, d = src / category, dst / category
        for rel, n in (("train/good", n_train), ("test/good", n_test)):
            (d / rel).mkdir(parents=True)
            for f in _images(s / rel)[:n]:
                shutil.copy2(f, d / rel / f.name)
        defect = sorted(p.name for p in (s / "test").iterdir() if p.is_dir() and p.name != "good")[0]
        (d / "test" / defect).mkdir(parents=True)
        (d / "ground_truth" / defect).mkdir(parents=True)
        for f in _images(s / "test" / defect)[:n_test]:
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
# The cases
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
    shutil.copy2(_images(ws.data / "kolektor" / "train" / "good")[0], elsewhere)
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


@case
def tracking_uri_with_token(ws: Workspace) -> Result:
    secret = "SuperSecretTok3n"
    folder = ws.fresh("tracking_token")
    out = folder / "model"
    args = train_args(ws.data, out, "--tracking-uri", f"http://127.0.0.1:9/?token={secret}")
    proc, peak = ws.run(args, env={"FSAD_TRACKING": "1", "FSAD_SPOOL_DIR": str(folder / "spool")})
    files = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    return ws.result("`--tracking-uri http://host/?token=SECRET`, server down", args, proc, peak,
                     f"model trained, run spooled; files holding the token: {len(files)}", expect_exit=0, pick="token=",
                     expect_words=["token=***"], secrets=[secret], must_not_exist=files)


@case
def s3_keys_leaving_the_tree(ws: Workspace) -> Result:
    from benchmarks.fixtures import FAKE_CREDENTIALS, s3_client, start_moto, upload_tree

    folder = ws.fresh("s3_keys")
    escape = Path("/train/good/x.png")  # where `ds//train/good/x.png` used to be written
    if ws.code != REPO:  # the code before issue 11 writes that file at the filesystem root
        raise RuntimeError("s3_keys_leaving_the_tree runs only this checkout's code (see --only)")
    existed = escape.exists()
    out = folder / "ingested"
    with start_moto(folder) as endpoint:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="fsad")
        upload_tree(client, ws.data, "fsad", "ds")
        image = _images(ws.data / "kolektor" / "train" / "good")[0].read_bytes()
        for key in ("ds//train/good/x.png", "ds/kolektor/train/good/../../../../escape.png"):
            client.put_object(Bucket="fsad", Key=key, Body=image)
        args = ["ingest", "--source", "s3://fsad/ds", "--name", "ds", "--out", out, "--endpoint-url", endpoint]
        proc, peak = ws.run(args, env=FAKE_CREDENTIALS)
    rejects = ""
    if (out / "rejects.parquet").is_file():
        import pyarrow.parquet as pq

        unsafe = [r["path"] for r in pq.read_table(out / "rejects.parquet").to_pylist() if "unsafe" in r["reason"]]
        rejects = f"; rejects.parquet lists {len(unsafe)} unsafe keys"
    return ws.result("S3 keys `ds//train/good/x.png` and `ds/kolektor/train/good/../../../../escape.png`", args,
                     proc, peak, f"{escape}: {'absent' if not escape.exists() else 'present'}{rejects}",
                     expect_exit=0, pick="accepted", expect_words=["rejected"],
                     must_not_exist=[] if existed else [escape, folder / "escape.png"])


@case(suite=False)  # tests/test_ray_cluster.py checks this against its own cluster
def ray_address_without_token(ws: Workspace) -> Result:
    folder = ws.fresh("ray_token")
    home = folder / "head_home"
    home.mkdir()
    ray = str(Path(sys.executable).with_name("ray"))
    head_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    subprocess.run([ray, "get-auth-token", "--generate"], env={**head_env, "HOME": str(home)}, check=True,
                   capture_output=True, timeout=120)
    head_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(home / ".ray" / "auth_token"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir = Path(tempfile.gettempdir()) / f"rayh_{port}"  # Ray's socket paths must stay short
    head = subprocess.Popen([ray, "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard", "false", "--temp-dir", str(temp_dir),
                             "--disable-usage-stats"], env=head_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(8)  # the GCS is up within seconds; a driver that came too early would only wait longer
        out = folder / "model"
        empty_home = folder / "driver_home"
        empty_home.mkdir()
        args = train_args(ws.data, out, "--workers", "1", "--address", f"127.0.0.1:{port}", "--no-track")
        env = {"HOME": str(empty_home), "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_TOKEN": ""}
        proc, peak = ws.run(args, env=env)
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
    return ws.result("`fsad train --address HOST:PORT` of a token-authenticated cluster, no token on this machine",
                     args, proc, peak, listing(out), expect_words=["no Ray cluster token", "RAY_AUTH_TOKEN_PATH"],
                     must_not_exist=[out])


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

INTRO = """# Reliability: hostile input

Written by `{command}` (benchmarks/hostile.py) on {date}.

Each case runs the real `fsad` command in a subprocess, against a small copy of fsad-real or files
planted in a copy. tests/test_hostile.py runs the same cases and fails when one breaks the rules: bad
input exits 2 with one `fsad: error:` line naming the file or value, nothing is written outside the
output folder, nothing already written is lost, no secret is printed. "message" is the last line on
stderr (or the line that matters); "left on disk" is what the output path held afterwards; "peak" is
the peak RSS of the command. `$WS` is the temporary workspace. New cases are functions in
benchmarks/hostile.py decorated with `@case`.

| case | exit | message | left on disk | peak | rules met |
|---|---|---|---|---|---|
"""


def table(rows: list[dict], command: str) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    body = "".join(f"| {cell(r['case'])} | {r['exit']} | `` {cell(r['message'][:300])} `` | {cell(r['left'])} | "
                   f"{r['peak_mb']} MB | {'yes' if r['ok'] else 'NO'} |\n" for r in rows)
    return INTRO.format(command=command, date=time.strftime("%Y-%m-%d")) + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose fsad runs (default: this one)")
    parser.add_argument("--only", nargs="*", default=None, help="case function names")
    parser.add_argument("--write", type=Path, default=None, help=f"write the table here (e.g. {DOC.relative_to(REPO)})")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.only is None or c.__name__ in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fsad-hostile-") as tmp:
        ws = Workspace(Path(tmp), args.data, args.code.resolve())
        for fn in cases:
            began = time.perf_counter()
            result = fn(ws)
            rows.append({"name": fn.__name__, **result.row(), "problems": result.problems()})
            print(json.dumps({**rows[-1], "seconds": round(time.perf_counter() - began, 1)}), flush=True)
    if args.write:
        command = "python -m benchmarks.hostile" + (f" --write {args.write}" if args.write else "")
        text = table(rows, command)
        if args.only is None:  # the whole table: the checkpoint, registered-model and serving cases too
            from benchmarks import hostile_models

            text += ("\n## Checkpoints, registered models and serving\n\nFrom benchmarks/hostile_models.py "
                     "(run by the same command); tests/test_checkpoint.py and tests/test_pyfunc.py assert "
                     "the same outcomes.\n\n" + hostile_models.markdown(hostile_models.all_rows()))
        args.write.write_text(text)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
