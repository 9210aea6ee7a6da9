"""Hostile-input cases against services: a tracking URI holding a token, S3 keys that leave the
dataset's tree, a Ray cluster address without its token."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.hostile_harness import REPO, Result, Workspace, case, images_in, listing, train_args


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
        image = images_in(ws.data / "kolektor" / "train" / "good")[0].read_bytes()
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
