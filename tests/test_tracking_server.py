"""Tracking against real servers on 127.0.0.1, started and stopped here:

* server mode: `mlflow server` with a PostgreSQL backend (a fresh database, dropped afterwards) and
  artifacts in S3 (a `moto_server` bucket); a training run, an evaluation and a registration go through
  it, artifacts land in the bucket, `mlflow models serve` answers over HTTP (200 with a score, 400 with
  a message for a wrong channel count), and no secret reaches params, tags, artifacts or our output;
* outage: the tracking server is stopped in the middle of a training run (and started again, or only
  after the run, then `fsad sync-runs`): training does not crash and no metric or checkpoint is lost.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HELD_OUT, tiny_sets

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
AWS_KEY_ID = "AKIAFSADTESTKEYID0042"
AWS_SECRET = "fsadTestSecretAccessKey0123456789abcdefXYZ"
DB_PASSWORD = "fsadDbPassw0rdNeverLogged"
BASIC_PASSWORD = "fsadTrackingPassw0rdNeverLogged"
SECRETS = (AWS_KEY_ID, AWS_SECRET, DB_PASSWORD, BASIC_PASSWORD)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # uvicorn, gunicorn live beside mlflow
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no 2.8 GB job executor
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 15 s."""
    if proc.poll() is None:
        with _suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    stop(proc)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def post_json(url: str, body) -> tuple[int, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ---------------------------------------------------------------------------------------------
# Server mode: PostgreSQL + S3 (moto)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3

    folder = tmp_path_factory.mktemp("moto")
    port = free_port()
    proc = start([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], server_env(), folder / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(f"{endpoint}/moto-api/", proc, folder / "moto.log", 60)
    bucket = f"fsad-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=AWS_SECRET)
    client.create_bucket(Bucket=bucket)
    yield {"endpoint": endpoint, "bucket": bucket, "client": client}
    stop(proc)


@pytest.fixture(scope="module")
def database():
    """A fresh PostgreSQL database per run, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"fsad_mlflow_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg2.connect(dbname="test", **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 is not reachable: {exc}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield name
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.fixture(scope="module")
def server(s3, database, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    backend = f"postgresql+psycopg2://postgres:{DB_PASSWORD}@127.0.0.1:5432/{database}"  # trust auth ignores it
    env = server_env(MLFLOW_S3_ENDPOINT_URL=s3["endpoint"], AWS_ACCESS_KEY_ID=AWS_KEY_ID,
                     AWS_SECRET_ACCESS_KEY=AWS_SECRET, AWS_DEFAULT_REGION="us-east-1")
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
           f"s3://{s3['bucket']}/", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = start(cmd, env, folder / "server.log")
    wait_http(f"http://127.0.0.1:{port}/health", proc, folder / "server.log", 150)
    yield {"url": f"http://127.0.0.1:{port}", "log": folder / "server.log"}
    stop(proc)


@pytest.fixture(scope="module")
def through_server(server, small_real_root, tmp_path_factory):
    """Train, evaluate and register through the server, with secrets in the client's environment and
    a password in the tracking URI. Returns what the checks need, including all our output."""
    from orchestrator.cli import main

    folder = tmp_path_factory.mktemp("through_server")
    uri = server["url"].replace("http://", f"http://fsad:{BASIC_PASSWORD}@")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FSAD_SPOOL_DIR")}
    os.environ.update(AWS_ACCESS_KEY_ID=AWS_KEY_ID, AWS_SECRET_ACCESS_KEY=AWS_SECRET,
                      FSAD_SPOOL_DIR=str(folder / "spool"))
    out_file = folder / "output.txt"
    try:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            codes = [
                main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(folder / "m"),
                      "--quiet", "--tracking-uri", uri, *tiny_sets()]),
                main(["evaluate", "--model", str(folder / "m"), "--data", str(small_real_root), "--target", HELD_OUT,
                      "--shots", "2", "--draws", "1", "--out", str(folder / "e"), "--quiet", "--tracking-uri", uri]),
            ]
            run_id = json.loads((folder / "m" / "tracking.json").read_text())["run_id"]
            codes.append(main(["register", "--run", run_id, "--target", HELD_OUT, "--draw", "0", "--shots", "2",
                               "--data", str(small_real_root), "--tracking-uri", uri]))
            # unreachable stores whose URIs hold passwords: the errors must not show them
            for dead in (f"postgresql+psycopg2://postgres:{DB_PASSWORD}@127.0.0.1:1/nodb",
                         f"http://fsad:{BASIC_PASSWORD}@127.0.0.1:1"):
                codes.append(main(["adapt", "--model", "models:/fsad-x@champion", "--support", str(folder),
                                   "--name", "y", "--tracking-uri", dead]))
        out_file.write_text(buffer.getvalue())
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {"codes": codes, "run_id": run_id, "output": out_file.read_text(), "folder": folder}


def test_server_mode_train_evaluate_register_with_artifacts_in_s3(server, s3, through_server):
    from orchestrator.tracking.server import client_for

    assert through_server["codes"][:3] == [0, 0, 0], through_server["output"][-3000:]
    client = client_for(server["url"])
    run = client.get_run(through_server["run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    experiment = client.get_experiment_by_name("fsad")
    evals = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert {r.data.tags["fsad.kind"] for r in evals} == {"eval", "register"}
    # the training run says where its runs table is: the link that opens MLflow 3.17's UI on it
    runs_page = f"{server['url'].rstrip('/')}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert f"is in the runs table at {runs_page}" in through_server["output"]
    version = client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion")
    assert version.tags["fsad.train_run_id"] == run.info.run_id
    keys = [o["Key"] for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"])
            for o in page.get("Contents", [])]
    assert any(k.endswith("model/model.safetensors") for k in keys)  # the training run's model
    assert any(k.endswith("checkpoints/episode_000002/state.pt") for k in keys)
    assert any(k.endswith("plots/roc.png") for k in keys) and any(k.endswith("plots/pro.png") for k in keys)
    assert any(k.endswith("model/data/fsad_model/dictionary.safetensors") for k in keys)  # the registered package
    assert any(k.endswith("model/MLmodel") for k in keys)


def test_no_secret_in_params_tags_artifacts_or_output(server, s3, through_server):
    from orchestrator.tracking.server import client_for

    assert through_server["codes"][3:] == [2, 2]  # the unreachable stores: one-line errors ...
    output = through_server["output"]
    assert output.count("fsad: error:") == 2 and "unreachable" in output and "fsad:***@" in output
    client = client_for(server["url"])
    texts = [output]
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            texts += list(run.data.params.values()) + list(run.data.tags.values()) + list(run.data.metrics)
    for model in client.search_registered_models():
        texts += list(model.tags.values())
        for version in client.search_model_versions(f"name = '{model.name}'"):
            texts += list(version.tags.values()) + [version.source or ""]
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"]):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith((".json", ".yaml", ".yml", ".txt", "MLmodel", ".py")):
                texts.append(s3["client"].get_object(Bucket=s3["bucket"], Key=obj["Key"])["Body"].read().decode())
    for path in through_server["folder"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml"):
            texts.append(path.read_text())
    blob = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in blob, f"a secret leaked ({secret[:6]}...)"


def test_served_champion_answers_http_with_a_score_and_400_for_wrong_channels(server, through_server, tmp_path):
    assert through_server["codes"][2] == 0
    port = free_port()
    env = server_env(MLFLOW_TRACKING_URI=server["url"])
    cmd = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/fsad-{HELD_OUT}@champion", "--env-manager",
           "local", "-h", "127.0.0.1", "-p", str(port)]
    proc = start(cmd, env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, tmp_path / "serve.log", 120)
        image = np.random.default_rng(0).random((1, 3, 32, 32)).round(4).tolist()
        status, body = post_json(f"http://127.0.0.1:{port}/invocations", {"inputs": image})
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert len(predictions["score"]) == 1 and np.isfinite(predictions["score"][0])
        assert np.asarray(predictions["anomaly_map"]).shape == (1, 32, 32)
        status, body = post_json(f"http://127.0.0.1:{port}/invocations",
                                 {"inputs": np.zeros((1, 4, 32, 32)).tolist()})
        assert status == 400 and "4 channels" in json.loads(body)["message"], body
        # image paths are off unless the operator names a root: the same answer for any file, existing or not
        answers = set()
        for path in ("/etc/passwd", "/no/such/file.png"):
            status, body = post_json(f"http://127.0.0.1:{port}/invocations",
                                     {"dataframe_split": {"columns": ["path"], "data": [[path]]}})
            assert status == 400, body
            message = json.loads(body)["message"]  # mlflow prefixes the request's data, then "Error: <ours>"
            assert "exist" not in message, message
            answers.add(message.split("Error: ")[-1])
        assert len(answers) == 1 and "arrays only" in answers.pop()
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------
# Outage: the server goes away mid-run


class OutageServer:
    """An `mlflow server` (sqlite backend, local artifacts) that a test can stop and start again."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder}/o.db",
               "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
               str(self.port), "--workers", "1"]
        self.proc = start(cmd, server_env(), self.folder / "server.log")
        wait_http(f"{self.url}/health", self.proc, self.folder / "server.log", 120)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture
def outage_server(tmp_path):
    srv = OutageServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _train_with_outage(monkeypatch, srv, data, out, restart_at: int | None, episodes: int = 7):
    from orchestrator.cli import main
    from orchestrator.tracking.tracked import TrainingTracker

    # Try the server on every event: with the production pacing (a flush every 2 s, a retry 5 s after
    # a failure) a fast run can cross the whole outage without trying once, and then nothing is warned.
    monkeypatch.setattr("orchestrator.tracking.runs.FLUSH_EVERY_S", 0.0)
    monkeypatch.setattr("orchestrator.tracking.runs.RETRY_AFTER_S", 0.0)
    original = TrainingTracker.on_log

    def on_log(self, record):
        original(self, record)
        if record["episode"] == 1:
            srv.stop()  # the server goes away in the middle of the run
        if restart_at is not None and record["episode"] == restart_at:
            srv.start()

    monkeypatch.setattr(TrainingTracker, "on_log", on_log)
    return main(["train", "--data", str(data), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 "--tracking-uri", srv.url, *tiny_sets(train__episodes=episodes)])


def _assert_complete(url: str, run_id: str, episodes: int = 7) -> None:
    from orchestrator.tracking.server import client_for

    client = client_for(url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for name in ("loss", "l_rec", "l_cd", "staleness"):
        assert sorted(m.step for m in client.get_metric_history(run_id, name)) == list(range(episodes)), name
    files = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert files == {f"checkpoints/episode_{e:06d}" for e in (2, 4, 6, 7)}
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/model.safetensors"}


def test_outage_mid_run_training_continues_and_catches_up(outage_server, small_real_root, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("FSAD_SPOOL_DIR", str(tmp_path / "spool"))
    code = _train_with_outage(monkeypatch, outage_server, small_real_root, tmp_path / "m", restart_at=4)
    assert code == 0
    err = capfd.readouterr().err
    assert "server unreachable" in err and "caught up" in err
    run_id = json.loads((tmp_path / "m" / "tracking.json").read_text())["run_id"]
    _assert_complete(outage_server.url, run_id)
    assert not list((tmp_path / "spool").glob("*/events.jsonl"))  # nothing left behind


def test_outage_until_the_end_then_sync_runs(outage_server, small_real_root, tmp_path, monkeypatch, capfd):
    from orchestrator.cli import main

    monkeypatch.setenv("FSAD_SPOOL_DIR", str(tmp_path / "spool"))
    code = _train_with_outage(monkeypatch, outage_server, small_real_root, tmp_path / "m", restart_at=None)
    assert code == 0  # training finished although the server never came back
    assert "fsad sync-runs" in capfd.readouterr().err
    assert len(list((tmp_path / "spool").glob("*/events.jsonl"))) == 1  # the run waits in the spool
    outage_server.start()
    assert main(["sync-runs", "--tracking-uri", outage_server.url]) == 0
    run_id = json.loads((tmp_path / "m" / "tracking.json").read_text())["run_id"]
    _assert_complete(outage_server.url, run_id)
    assert not list((tmp_path / "spool").glob("*/events.jsonl"))
