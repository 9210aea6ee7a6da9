"""Headless Chromium (Debian's `chromium`) for the gallery test and the MLflow screenshots.

The flags keep it off the network it cannot reach (no component updates, sync, QUIC or background
requests: without them it waits on them and hangs) and in a fresh profile every call.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
ENV = "FSAD_CHROMIUM"  # another binary than `chromium` on PATH


def chromium_binary() -> str | None:
    name = os.environ.get(ENV, "chromium")
    return shutil.which(name) or (name if Path(name).is_file() else None)


def run_chromium(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium not found: install Debian's chromium (apt-get install -y chromium) or "
                                f"set {ENV} to a Chromium binary")
    with tempfile.TemporaryDirectory(prefix="fsad-chromium-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def dump_dom(url: str, wait_ms: int = 5000, timeout: float = 120.0) -> str:
    """The page's DOM after it loaded and ran its scripts for up to wait_ms of virtual time."""
    proc = run_chromium([f"--virtual-time-budget={wait_ms}", "--dump-dom", url], timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom {url} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def screenshot(url: str, path: Path, width: int = 1400, height: int = 900, wait_ms: int = 10000,
               timeout: float = 180.0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = run_chromium([f"--virtual-time-budget={wait_ms}", f"--window-size={width},{height}",
                         f"--screenshot={path}", url], timeout)
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"chromium --screenshot {url} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return path
