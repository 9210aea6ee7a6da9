"""Data and services that benchmarks and tests share: the real images beside the clone, small copies of
them, and a real S3 endpoint (moto_server on 127.0.0.1). A library module, so benchmarks need not import
tests (tests/conftest.py and tests/test_dvc.py import from here).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The real benchmark lives beside the clone (CI checks ../shared out next to the repository); read-only.
REAL_ROOT = REPO.parent / "shared" / "data" / "fsad-real"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}

# The categories of the small copy (grey and RGB), and how many images of each it takes.
SMALL_CATEGORIES = ("juice_bottle", "kolektor", "tire")
N_TRAIN, N_TEST_GOOD, N_ANOMALOUS = 12, 4, 4

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServerMissing(RuntimeError):
    """moto_server is not installed beside this Python (pip install 'moto[server]')."""


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def copy_small(src_root: Path, dst_root: Path, categories=SMALL_CATEGORIES, n_train: int = N_TRAIN,
               n_test_good: int = N_TEST_GOOD, n_anomalous: int = N_ANOMALOUS) -> Path:
    """Copy a few images of each category (MVTec layout, masks included) from src_root to dst_root.

    Anomalous images are taken in defect-type order (first type first) until n_anomalous are copied;
    every copied anomalous image brings its ground-truth mask.
    """
    for category in categories:
        src, dst = src_root / category, dst_root / category
        for rel, n in (("train/good", n_train), ("test/good", n_test_good)):
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for f in image_files(src / rel)[:n]:
                shutil.copy2(f, dst / rel / f.name)
        left = n_anomalous
        for defect in sorted(p.name for p in (src / "test").iterdir() if p.is_dir() and p.name != "good"):
            if left <= 0:
                break
            chosen = image_files(src / "test" / defect)[:left]
            if not chosen:
                continue
            (dst / "test" / defect).mkdir(parents=True, exist_ok=True)
            (dst / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy2(f, dst / "test" / defect / f.name)
                mask = src / "ground_truth" / defect / f"{f.stem}_mask.png"
                shutil.copy2(mask, dst / "ground_truth" / defect / mask.name)
            left -= len(chosen)
    return dst_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def start_moto(log_dir: Path, auth: bool = False):
    """moto_server on 127.0.0.1 at a free port, as a subprocess; yields its endpoint URL.

    auth=True checks credentials on every request (moto's INITIAL_NO_AUTH_ACTION_COUNT=0), so unknown keys
    are refused as by AWS. Raises MotoServerMissing when moto_server is not installed.
    """
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.is_file():
        raise MotoServerMissing("moto_server is not installed (moto[server])")
    port = free_port()
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    log = open(log_dir / f"moto-{port}.log", "w")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {(log_dir / f'moto-{port}.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def upload_tree(client, root: Path, bucket: str, prefix: str) -> int:
    n = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
        n += 1
    return n
