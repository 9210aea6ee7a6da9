"""A real local Ray cluster (`ray start --head` on free ports, 127.0.0.1 dashboard): `ray job submit` of a
short `fsad train` whose run lands in an `mlflow server` (and one refused for tracking into the job's
temporary copy), a driver SIGKILLed mid-run then `--resume`d (synchronous mode: identical final
weights to an uninterrupted run, which uses the embedded default), too many GPUs via the CLI, and a
driver without the cluster's token.

Token authentication is on; the token is made by the session's `ray_token` fixture (tests/conftest.py)
and passed as RAY_AUTH_TOKEN_PATH, so nothing is read from or left in the home directory.

The head runs as `ray start --block` in its own session, so teardown stops exactly the processes this
test started (SIGTERM to that process, then its process group); no machine-wide `ray stop`.
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
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HELD_OUT, REPO, copy_worktree, tiny_sets
from tests.test_ray_workers import one_error_line

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port(low: int = 20000) -> int:
    """A free port above Ray's default worker port range (10002-19999)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= low:
            return port
    raise RuntimeError("no free port above 20000")


def ray_env(token: Path | None) -> dict[str, str]:
    """The environment of a cluster member or client: token mode, the token file (None: no token)."""
    env = dict(os.environ, RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    if token is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory, ray_token):
    port, dash = free_port(), free_port()
    temp = Path(f"/tmp/rayt_{os.getpid()}")
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--object-store-memory", str(300 * 1024**2),
         "--temp-dir", str(temp), "--disable-usage-stats"],
        env=ray_env(ray_token), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2) as r:
                    if "ray_version" in r.read().decode():
                        break
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):  # token authentication: the dashboard is up and guarded
                    break
            except OSError:
                pass
            assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            assert time.time() < deadline, "head did not come up"
            time.sleep(1)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": str(temp),
               "env": ray_env(ray_token)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture created
        except ProcessLookupError:
            pass
        log.close()


def fsad_args(data, out, *extra):
    return ["train", "--data", str(data), "--target", HELD_OUT, "--out", str(out), "--quiet", "--no-track", *extra]


def test_killed_driver_resumes_to_identical_weights(head, small_real_root, tmp_path):
    total = 24
    sets = tiny_sets(train__episodes=total, train__checkpoint_every=4) + ["--set", "distributed.mode=sync"]
    python = [sys.executable, "-m", "orchestrator.cli"]
    # uninterrupted reference: the embedded default (Ray started in-process)
    ref = subprocess.run(python + fsad_args(small_real_root, tmp_path / "ref", "--workers", "1", *sets),
                         cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # the same run on the cluster, driver SIGKILLed after a checkpoint, then resumed
    out = tmp_path / "killed"
    args = fsad_args(small_real_root, out, "--workers", "1", "--address", head["address"], *sets)
    driver = subprocess.Popen(python + args, cwd=REPO, env=head["env"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    done = 0
    while time.time() < deadline and driver.poll() is None:
        if (out / "state.pt").is_file():
            done = int(torch.load(out / "state.pt", weights_only=True)["episode"])
            if done >= 8:
                break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read()[-3000:]
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    assert 8 <= done < total
    resumed = subprocess.run(python + args + ["--resume"], cwd=REPO, env=head["env"], capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["counters"]["applied"] == total
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["update"] for line in lines] == list(range(1, total + 1))


def test_more_gpus_than_the_cluster_has_is_exit_2(head, small_real_root, tmp_path):
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli",
         *fsad_args(small_real_root, tmp_path / "m", "--workers", "2", "--address", head["address"], *tiny_sets(),
                    "--set", "distributed.num_gpus_per_worker=1", "--set", "distributed.start_timeout_s=5")],
        cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=120)
    one_error_line(proc, "not placed within 5s", "the cluster has 2 CPU and 0 GPU")
    assert time.perf_counter() - began < 60
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("auth_mode", ["token", None])
def test_driver_without_the_token_is_exit_2(head, small_real_root, tmp_path, auth_mode):
    """A driver that lacks the cluster's token (empty home, no RAY_AUTH_TOKEN*) gets one line saying how to
    get it, with or without RAY_AUTH_MODE=token, and nothing is written."""
    env = ray_env(None)
    env["HOME"] = str(tmp_path / "empty_home")
    (tmp_path / "empty_home").mkdir()
    if auth_mode is None:
        env.pop("RAY_AUTH_MODE")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli",
         *fsad_args(small_real_root, tmp_path / "m", "--workers", "1", "--address", head["address"], *tiny_sets(),
                    "--set", "distributed.connect_timeout_s=5")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    one_error_line(proc, head["address"], "token", "RAY_AUTH_TOKEN_PATH", "docs/cluster.md")
    assert not (tmp_path / "m").exists()
    assert not any((tmp_path / "empty_home").iterdir())


def test_driver_with_another_clusters_token_is_exit_2(head, small_real_root, tmp_path):
    """The cluster does not answer a wrong token (Ray retries until the timeout): the message names the token."""
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli",
         *fsad_args(small_real_root, tmp_path / "m", "--workers", "1", "--address", head["address"], *tiny_sets(),
                    "--set", "distributed.connect_timeout_s=5")],
        cwd=REPO, env=ray_env(wrong), capture_output=True, text=True, timeout=120)
    one_error_line(proc, head["address"], "no Ray cluster answered", f"token differs from {wrong}")
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------------
# Where a job's runs go: a tracking server, never the job's temporary copy of the working directory


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 (sqlite backend, one worker, no job executor), stopped by PID."""
    from tests.test_tracking_server import OutageServer

    server = OutageServer(tmp_path_factory.mktemp("job_tracking"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def working_dir(tmp_path_factory) -> Path:
    """A snapshot of the repository for --working-dir (edits to the checkout meanwhile cannot break an upload)."""
    return copy_worktree(tmp_path_factory.mktemp("job_working_dir") / "repo")


def wait_for_job_agent(head, timeout_s: float = 120) -> None:
    """Until the head's job agent takes a job. The dashboard answers /api/version before the agent has
    registered, and a submit meanwhile waits 10 s for it, then fails ("No available agent to submit job");
    on a loaded machine (two test workers) the agent took longer. docs/cluster.md waits the same way."""
    if head.get("agent_ready"):
        return
    deadline = time.time() + timeout_s
    while True:
        probe = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head["dashboard"], "--no-wait", "--",
                                "true"], env=head["env"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            head["agent_ready"] = True
            return
        assert time.time() < deadline, "the head's job agent took no job: " + probe.stderr[-2000:]
        time.sleep(1)


def submit(head, working_dir: Path, *fsad, env_vars: dict | None = None) -> subprocess.CompletedProcess:
    """`ray job submit` of `fsad ...` with the repository as the working directory (waits for the end)."""
    wait_for_job_agent(head)
    runtime_env = json.dumps({"env_vars": {"OMP_NUM_THREADS": "1", **(env_vars or {})}})
    env = dict(head["env"])
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head["dashboard"], "--working-dir", str(working_dir),
           "--runtime-env-json", runtime_env, "--", "fsad", *fsad]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_ray_job_run_lands_in_the_tracking_server(head, working_dir, tracking_server, small_real_root, tmp_path):
    """The documented submit (docs/cluster.md): `ray job submit` of `fsad train --address auto` trains on the
    cluster; the run is on the server the user browses, complete, and --out/tracking.json names it, with
    nothing pointing into Ray's temporary copy of the working directory."""
    from orchestrator.tracking.server import client_for

    out = tmp_path / "job_model"
    proc = submit(head, working_dir, "train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                  "--workers", "1", "--address", "auto", "--tracking-uri", tracking_server.url,
                  *tiny_sets(train__episodes=4), env_vars={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith('{"out"')))
    assert summary["counters"]["applied"] == 4 and (out / "model.safetensors").is_file()  # the job trained
    recorded = json.loads((out / "tracking.json").read_text())
    assert recorded["run_id"] == summary["run_id"]
    assert "_ray_pkg_" not in json.dumps(recorded) and "runtime_resources" not in json.dumps(recorded)
    assert recorded["spool"] == str(tmp_path / "cache" / "fsad" / "mlflow-spool")  # journals outlive the job
    client = client_for(tracking_server.url)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fsad.kind"] == "train"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors"}
    experiment = client.get_experiment_by_name("fsad")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run.info.run_id]


def test_ray_job_refuses_a_sqlite_store_in_its_temporary_copy(head, working_dir, small_real_root, tmp_path):
    """Without --tracking-uri a job would create sqlite:///mlflow.db inside Ray's copy of the working
    directory, deleted after the job: the job fails at once with one line naming --tracking-uri."""
    out = tmp_path / "job_model"
    proc = submit(head, working_dir, "train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                  "--workers", "1", "--address", "auto", *tiny_sets(train__episodes=4),
                  env_vars={"FSAD_TRACKING": "1"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    errors = sorted({line for line in output.splitlines() if line.startswith("fsad: error: ")})  # ray repeats the log
    assert len(errors) == 1 and "--tracking-uri" in errors[0] and "temporary copy" in errors[0], output[-3000:]
    assert "_ray_pkg_" in errors[0] and not out.exists()
