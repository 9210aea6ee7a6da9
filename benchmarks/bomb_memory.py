"""Peak memory of a tiny `fsad train` with a planted image bomb, against a normal run (docs/benchmarks.md).

    python -m benchmarks.bomb_memory [--data ROOT] [--side 13000] [--code DIR] [--markdown]

A small copy of fsad-real (3 categories, 12 train/good images each) is trained on with a tiny budget
three times, each in a fresh subprocess whose peak RSS is ru_maxrss from wait4:

* normal: the copy as is;
* bomb: plus a 16-bit grey PNG of side × side pixels in a training folder (13000²: ~330 KB on disk,
  338 MB decoded, over 1 GB as float64);
* at the cap: plus a 16-bit grey PNG just under data.max_pixels (what is still decoded).

--code runs another checkout's fsad (e.g. the code before the pixel cap) on the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fsad-real"
CATEGORIES = ("juice_bottle", "kolektor", "tire")
HELD_OUT = "tire"
N_TRAIN = 12
TINY = ["data.image_size=32", "train.episodes=3", "train.shots=2", "train.queries=2", "train.checkpoint_every=2",
        "model.backbone.width=8", "model.backbone.out_dim=8", "langevin.steps=2"]


def write_grey_png(path: Path, width: int, height: int, bit_depth: int = 16) -> Path:
    """An all-black grey PNG of any size, streamed row by row: large when decoded, tiny on disk, and
    cheap to make (nothing of its decoded size is ever held in memory here)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = bytes(1 + width * bit_depth // 8)  # filter byte 0 + one row of zeros
    compressor = zlib.compressobj(9)
    idat = bytearray()
    for _ in range(height):
        idat += compressor.compress(row)
    idat += compressor.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", bytes(idat)))
        f.write(chunk(b"IEND", b""))
    return path


def small_copy(src: Path, dst: Path) -> Path:
    for category in CATEGORIES:
        folder = src / category / "train" / "good"
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:N_TRAIN]
        (dst / category / "train" / "good").mkdir(parents=True)
        for f in files:
            shutil.copy2(f, dst / category / "train" / "good" / f.name)
    return dst


def peak_run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[int, float, str]:
    """-> (exit code, peak RSS in MB, last stderr line) of one subprocess."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return proc.returncode, usage.ru_maxrss / 1024, lines[-1] if lines else ""


def measure(data: Path, side: int, code: Path, work: Path, cap: int) -> dict:
    root = small_copy(data, work / "data")
    env = dict(os.environ, PYTHONPATH=str(code), FSAD_TRACKING="0")
    sets = [arg for kv in TINY for arg in ("--set", kv)]

    def train(name: str) -> dict:
        cmd = [sys.executable, "-m", "orchestrator.cli", "train", "--data", str(root), "--target", HELD_OUT,
               "--out", str(work / name), "--quiet", *sets]
        code_, peak, last = peak_run(cmd, code, env, work / f"{name}.log")
        return {"exit": code_, "peak_mb": round(peak), "stderr": last.replace(str(work), "$WORK")}

    runs = {"normal": train("normal")}
    bomb = write_grey_png(root / "kolektor" / "train" / "good" / "zz_bomb.png", side, side)
    runs["bomb"] = {**train("bomb"), "file_kb": round(bomb.stat().st_size / 1024), "pixels": side * side}
    bomb.unlink()
    at_cap = int((cap - 1) ** 0.5)
    big = write_grey_png(root / "kolektor" / "train" / "good" / "zz_at_cap.png", at_cap, at_cap)
    runs["at_cap"] = {**train("at_cap"), "file_kb": round(big.stat().st_size / 1024), "pixels": at_cap * at_cap}
    big.unlink()
    runs["bomb_over_normal"] = round(runs["bomb"]["peak_mb"] / runs["normal"]["peak_mb"], 2)
    return runs


def markdown(runs: dict, side: int, command: str) -> str:
    n, b, c = runs["normal"], runs["bomb"], runs["at_cap"]
    side_cap = int(c["pixels"] ** 0.5)
    return "\n".join([
        f"Command: `{command}`  ",
        "",
        "| run | exit | peak RSS | |",
        "|---|---|---|---|",
        f"| normal (36 train/good images) | {n['exit']} | {n['peak_mb']} MB | |",
        f"| + a {side}² 16-bit PNG ({b['file_kb']} KB) | {b['exit']} | {b['peak_mb']} MB "
        f"| {runs['bomb_over_normal']:.2f}× normal; `{b['stderr'][:160]}` |",
        f"| + a {side_cap}² 16-bit PNG (just under the cap) | {c['exit']} | {c['peak_mb']} MB | decoded and trained on |",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--side", type=int, default=13000, help="bomb side in pixels (default 13000)")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose fsad runs (default: this one)")
    parser.add_argument("--cap", type=int, default=40_000_000, help="data.max_pixels of --code (default 40 M)")
    parser.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md table too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fsad-bomb-") as work:
        runs = measure(args.data, args.side, args.code.resolve(), Path(work), args.cap)
    print(json.dumps(runs, indent=2))
    if args.markdown:
        print(markdown(runs, args.side, "python -m benchmarks.bomb_memory " + " ".join(argv or sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
