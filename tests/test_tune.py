"""fsad tune: tiny studies on a journal file and on PostgreSQL, MLflow parent/nested runs (one parent per
study, reopened on resume), median and Hyperband pruning, kill and resume (journal and PostgreSQL), two
parallel Ray workers (local, and on a `ray start --head` cluster via --address), best params into
`fsad train`, optuna-dashboard, bad input."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.config import load_config, parse_overrides
from tests.conftest import HELD_OUT, REPO, tiny_sets
from tests.test_ray_cluster import head  # noqa: F401 - head: the real `ray start --head` fixture

FSAD = str(Path(sys.executable).with_name("fsad"))
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def tune_sets(**changes) -> list[str]:
    """The tiny budget: 4 episodes, a validation report every 2, K in {1, 2}, 6 validation images."""
    values = dict(train__episodes=4, tune__eval_every=2, tune__eval_images=6, tune__eval_shots=2,
                  tune__space__shots__choices="[1,2]", tune__startup_trials=1, tune__heartbeat_interval=1,
                  tune__grace_period=2)
    values.update(changes)
    return tiny_sets(**values)


def tune_args(root, storage, out, study="s", trials=2, *extra) -> list[str]:
    return ["tune", "--study", study, "--storage", str(storage), "--trials", str(trials), "--data", str(root),
            "--target", HELD_OUT, "--out", str(out), *extra]


def journal(path) -> optuna.storages.BaseStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def numbers(study) -> list[int]:
    return [t.number for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def journal_study(small_real_root, tmp_path_factory):
    """A 3-trial study on a journal file, tracked to a private sqlite MLflow."""
    base = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    os.environ["FSAD_SPOOL_DIR"] = str(base / "spool")
    try:
        code = main(tune_args(small_real_root, base / "journal.log", base / "out", "s", 3, *tune_sets(),
                              "--tracking-uri", uri))
    finally:
        os.environ.pop("FSAD_SPOOL_DIR", None)
    assert code == 0
    return base, uri


def test_tiny_study_on_journal_writes_best_params_and_plots(journal_study):
    base, _ = journal_study
    study = optuna.load_study(study_name="s", storage=journal(base / "journal.log"))
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 3 and sorted(numbers(study)) == [0, 1, 2]
    assert study.user_attrs["target"] == HELD_OUT and HELD_OUT not in study.user_attrs["validation"]
    assert HELD_OUT not in study.user_attrs["train"]
    assert not set(study.user_attrs["train"]) & set(study.user_attrs["validation"])  # no leakage
    assert all(t.intermediate_values for t in finished)  # reported while training
    best = json.loads((base / "out" / "best.json").read_text())
    assert best["trial"] == study.best_trial.number and set(best["params"]) <= {
        "model.lam_max", "model.lam_star", "model.tau", "langevin.step_size", "train.shots"}
    for name in ("history", "parallel_coordinate"):
        assert (base / "out" / "plots" / f"{name}.png").stat().st_size > 1000
    # trials never trained on the target or the validation category
    meta = json.loads((base / "out" / "trials" / "trial_0000" / "meta.json").read_text())
    assert meta["train_categories"] == study.user_attrs["train"]


def test_mlflow_parent_run_and_nested_trial_runs(journal_study):
    from mlflow import MlflowClient

    base, uri = journal_study
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("fsad.kind") == "tune"]
    trials = [r for r in runs if r.data.tags.get("fsad.kind") == "tune_trial"]
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "best_objective" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/history.png" in artifacts
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"best_params.yaml", "best.json"}
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "model.tau" in run.data.params
        assert client.get_metric_history(run.info.run_id, "val_objective")  # intermediate values
        assert run.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")


def test_best_params_round_trip_into_fsad_train(journal_study, small_real_root, tmp_path, capsys):
    base, _ = journal_study
    best = json.loads((base / "out" / "best.json").read_text())
    cfg = load_config(base / "out" / "best_params.yaml")
    for key, value in best["params"].items():
        section, _, leaf = key.rpartition(".")
        node = cfg
        for part in section.split("."):
            node = getattr(node, part)
        assert getattr(node, leaf) == pytest.approx(value)
    assert set(yaml.safe_load((base / "out" / "best_params.yaml").read_text())) == set(yaml.safe_load(
        (REPO / "params.yaml").read_text()))  # params.yaml-shaped: `dvc exp run` takes it as params.yaml
    assert main(["train", "--config", str(base / "out" / "best_params.yaml"), "--data", str(small_real_root),
                 "--exclude", HELD_OUT, "--out", str(tmp_path / "m"), "--quiet"]) == 0
    trained = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert trained["model"]["tau"] == pytest.approx(best["params"].get("model.tau", cfg.model.tau))
    sets = [a for s in best["set"] for a in ("--set", s)]  # the same values as --set arguments
    assert main(["train", *tiny_sets(), *sets, "--data", str(small_real_root), "--exclude", HELD_OUT,
                 "--out", str(tmp_path / "m2"), "--quiet"]) == 0


def test_pruning_stops_a_planted_bad_trial(small_real_root, tmp_path, capsys):
    """Two finished trials planted at 0.99 on every step, then an enqueued terrible setting (β = 1000,
    λ tiny): MedianPruner stops it at its first report, before the last episode."""
    storage = tmp_path / "j.log"
    study = optuna.create_study(study_name="p", storage=journal(storage), direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.5, 2.0)
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"model.lam_max": 1.0}, distributions={"model.lam_max": dist},
                                                  value=0.99, intermediate_values={2: 0.99, 4: 0.99}))
    study.enqueue_trial({"langevin.step_size": 1000.0, "model.lam_max": 0.5, "model.lam_star": 0.01})
    assert main(tune_args(small_real_root, storage, tmp_path / "out", "p", 3, *tune_sets())) == 0
    trial = optuna.load_study(study_name="p", storage=journal(storage)).trials[2]
    assert trial.params["langevin.step_size"] == 1000.0
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [2]  # stopped at episode 2 of 4


def test_hyperband_pruner_completes_a_study_and_prunes(small_real_root, tmp_path, capsys):
    """Hyperband with min resource tune.eval_every=2 and max train.episodes=4: one bracket whose only rung
    is episode 2. A fresh study's first trial is promoted (it competes with itself) and completes; a trial
    planted at 1.0 on that rung then makes the next one stop at episode 2, and the study still finishes.
    On sqlite (one process), the storage no other test runs a study on."""
    storage, sets = f"sqlite:///{tmp_path / 'h.db'}", tune_sets(tune__pruner="hyperband")
    assert main(tune_args(small_real_root, storage, tmp_path / "out", "h", 1, *sets)) == 0
    study = optuna.load_study(study_name="h", storage=storage)
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE and list(first.intermediate_values) == [2, 4]
    assert "completed_rung_0" in first.system_attrs  # Hyperband's successive halving judged it at episode 2
    dist = optuna.distributions.FloatDistribution(0.5, 2.0)
    study.add_trial(optuna.trial.create_trial(params={"model.lam_max": 1.0}, distributions={"model.lam_max": dist},
                                              value=1.0, intermediate_values={2: 1.0, 4: 1.0},
                                              system_attrs={"completed_rung_0": 1.0}))
    assert main(tune_args(small_real_root, storage, tmp_path / "out", "h", 3, *sets)) == 0
    trials = optuna.load_study(study_name="h", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[2]
    assert list(pruned.intermediate_values) == [2] and "diverged" not in pruned.user_attrs
    assert pruned.system_attrs["completed_rung_0"] < 1.0  # below the planted rung value: not promoted
    assert json.loads((tmp_path / "out" / "best.json").read_text())["trial"] in (0, 1)


def test_parent_run_is_reopened_by_its_key_also_when_logged_offline(tmp_path, monkeypatch):
    """TrackedRun(reopen=(tag, value)) continues the run tagged so; the choice is made when the journal
    reaches the server, so an invocation that started while the server was down joins the same run."""
    from mlflow import MlflowClient

    from orchestrator.tracking.runs import TrackedRun
    from orchestrator.tracking.spool import Replayer, sync_runs

    uri, spool = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool"

    def parent(key):
        return TrackedRun(uri, "tune s", "tune-test", {"fsad.kind": "tune"}, root=spool, reopen=("fsad.tune_key", key))

    first = parent("k1")
    first.log_params({"p": 1})
    first.end("KILLED")
    replay = Replayer.replay
    monkeypatch.setattr(Replayer, "replay", lambda self, journal: (_ for _ in ()).throw(ConnectionError("down")))
    offline = parent("k1")
    offline.log_params({"p": 1})  # the same value again: accepted
    offline.log_metrics({"best_objective": 0.5}, step=3)
    offline.end("FINISHED")
    assert offline.run_id is None  # nothing reached the server yet
    monkeypatch.setattr(Replayer, "replay", replay)
    assert sync_runs(uri, spool)["synced"] == 1
    other = parent("k2")  # another study: its own run
    other.end("FINISHED")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tune-test").experiment_id])
    assert sorted(r.data.tags["fsad.tune_key"] for r in runs) == ["k1", "k2"]
    reopened = next(r for r in runs if r.data.tags["fsad.tune_key"] == "k1")
    assert reopened.info.run_id == first.run_id and reopened.info.status == "FINISHED"
    assert reopened.data.metrics["best_objective"] == 0.5 and reopened.data.params == {"p": "1"}


def test_runs_left_running_by_failed_trials_are_killed_and_an_unreachable_server_is_no_crash(tmp_path, capsys):
    """KilledTrialRuns ends only the RUNNING runs of this study's FAIL trials (not another study's, not a
    running trial's); against a dead server it warns and returns."""
    from mlflow import MlflowClient

    from orchestrator.tracking.runs import TrackedRun
    from orchestrator.tuning.objective import TrialSpec
    from orchestrator.tuning.runner import KilledTrialRuns

    uri, spool = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "spool"
    study = optuna.create_study(study_name="f", storage=journal(tmp_path / "j.log"))
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING):
        study.add_trial(optuna.trial.create_trial(state=state))
    runs = {}
    for key, number in (("k1", 0), ("k1", 1), ("k2", 0)):  # k2: another study's trial 0
        runs[key, number] = TrackedRun(uri, f"trial {number}", "tune-test", {"fsad.kind": "tune_trial",
                                       "fsad.tune_key": key, "optuna.trial": number}, root=spool).run_id
    spec = TrialSpec({}, "", "f", {}, "", uri, tags={"fsad.tune_key": "k1"})
    KilledTrialRuns(spec, "tune-test", log=lambda _: None)(study)
    client = MlflowClient(uri)
    status = {k: client.get_run(run_id).info.status for k, run_id in runs.items()}
    assert status == {("k1", 0): "KILLED", ("k1", 1): "RUNNING", ("k2", 0): "RUNNING"}
    assert client.get_run(runs["k1", 0]).data.tags["optuna.state"] == "FAIL"
    capsys.readouterr()
    dead = TrialSpec({}, "", "f", {}, "", "http://127.0.0.1:1", tags={"fsad.tune_key": "k1"})
    t0 = time.monotonic()
    KilledTrialRuns(dead, "tune-test", log=lambda _: None)(study)  # no exception
    assert time.monotonic() - t0 < 20 and "could not end the RUNNING runs" in capsys.readouterr().err


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database per test, dropped afterwards (skipped without the server)."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"fsad_optuna_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["journal", "postgresql"])
def kill_storage(request, tmp_path):
    """(--storage argument, the same storage opened here): a journal file, or a fresh PostgreSQL database
    (Optuna's own RDB heartbeat rather than JournalHeartbeatStorage)."""
    if request.param == "journal":
        yield str(tmp_path / "j.log"), journal(tmp_path / "j.log")
        return
    url = request.getfixturevalue("pg_url")
    storage = optuna.storages.RDBStorage(url)  # creates Optuna's tables before the tune process starts
    try:
        yield url, storage
    finally:
        storage.engine.dispose()


def test_kill_and_resume_continues_the_same_study(kill_storage, small_real_root, tmp_path):
    """SIGKILL mid-trial, the same command again: the dead trial is failed by heartbeat and retried, no
    trial lost or duplicated, every trial of both invocations is a child of the study's one MLflow
    parent run (reopened, not a second one), and the dead trial's run, left RUNNING, is ended KILLED."""
    from mlflow import MlflowClient

    storage, store = kill_storage
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [FSAD, *tune_args(small_real_root, storage, out, "k", 3, *tune_sets(train__episodes=6, tune__pruner="none"),
                            "--tracking-uri", uri)]
    env = {**os.environ, "FSAD_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="k", storage=store).get_trials()
            except (KeyError, FileNotFoundError):
                continue
            # mid-training (it has reported), not mid-suggest: a retry keeps only the params already stored
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values]
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and running:
                proc.send_signal(signal.SIGKILL)
                killed = running[0]
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed is not None, "the study finished before it could be killed mid-trial"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="k", storage=store)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3  # none lost
    assert len(numbers(study)) == len(set(numbers(study)))  # none duplicated
    assert optuna.trial.TrialState.RUNNING not in states
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [killed.number]  # failed by heartbeat ...
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retried = [t for t in study.trials if retry(t) == killed.number]
    assert len(retried) == 1 and retried[0].params == failed[0].params  # ... and retried as is
    # MLflow: one parent for both invocations, finished, with the trials of both under it (the killed
    # trial's run too, when the kill came after it was created)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("fsad.kind") == "tune"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and "best_objective" in parent.data.metrics
    assert parent.data.tags["fsad.tune_key"] == study.user_attrs["tracking_key"]
    children = [r for r in runs if r.data.tags.get("fsad.kind") == "tune_trial"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert set(numbers(study)) - {killed.number} <= {int(r.data.tags["optuna.trial"]) for r in children}
    assert [r.data.tags.get("optuna.retry_of") for r in children
            if int(r.data.tags["optuna.trial"]) == retried[0].number] == [str(killed.number)]
    # the killed trial's run (created before it reported) is KILLED on resume; nothing is left RUNNING
    assert [(r.info.status, r.data.tags["optuna.state"]) for r in children
            if int(r.data.tags["optuna.trial"]) == killed.number] == [("KILLED", "FAIL")]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def param_sets(study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_parallel_ray_workers_share_one_study_and_explore(kind, small_real_root, tmp_path, capsys, request):
    """--parallel 2: two Ray worker processes, and every trial has its own parameters (each process's
    sampler used to start from the same seed, so the two trials of a round were one trial run twice)."""
    if kind == "journal":
        storage, store = str(tmp_path / "j.log"), journal(tmp_path / "j.log")
    else:
        storage = request.getfixturevalue("pg_url")
        store = optuna.storages.RDBStorage(storage)
    assert main(tune_args(small_real_root, storage, tmp_path / "out", "r", 4, "--parallel", "2",
                          *tune_sets(tune__pruner="none", tune__startup_trials=2))) == 0
    study = optuna.load_study(study_name="r", storage=store)
    assert sorted(numbers(study)) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(set(param_sets(study))) == 4, param_sets(study)  # no two trials share their parameters
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # two Ray worker processes
    assert str(os.getpid()) not in {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials}
    if kind == "postgresql":
        store.engine.dispose()


def test_concurrent_processes_draw_their_own_parameters_reproducibly(tmp_path):
    """Two processes' samplers on one storage (as two Ray tasks) with the same tune.sampler_seed: trials
    asked at the same time get different parameters, in the random start-up phase and under TPE; a new
    study with the same seed draws the same start-up trials again."""
    from orchestrator.tuning.objective import suggest
    from orchestrator.tuning.sampler import make_sampler

    cfg = load_config(None, parse_overrides(["tune.startup_trials=2"]))

    def process(path):  # what run_trials opens in each Ray task
        return optuna.load_study(study_name="c", storage=journal(path), sampler=make_sampler(cfg))

    first = {}
    for name in ("one", "two"):
        path = tmp_path / f"{name}.log"
        optuna.create_study(study_name="c", storage=journal(path), direction="maximize")
        a, b = process(path), process(path)
        ta, tb = a.ask(), b.ask()  # both RUNNING before either samples
        pa, pb = suggest(ta, cfg), suggest(tb, cfg)
        assert pa != pb
        a.tell(ta, 0.5)
        b.tell(tb, 0.6)
        first[name] = (ta.number, pa), (tb.number, pb)
        tc, td = a.ask(), b.ask()  # past start-up: TPE on the two finished trials
        assert suggest(tc, cfg) != suggest(td, cfg)
    assert dict(first["one"]) == dict(first["two"])  # the start-up trials: a function of seed and number


def test_trials_run_on_a_ray_cluster_joined_with_address(head, pg_url, small_real_root, tmp_path):
    """The cluster setup: `fsad tune --address HOST:PORT` against a real `ray start --head`
    (tests/test_ray_cluster.py's fixture, token auth) with a PostgreSQL study. The two trials run in that
    cluster's worker processes (their pids name worker logs of the head's session), not in a Ray started
    by the driver."""
    cmd = [FSAD, *tune_args(small_real_root, pg_url, tmp_path / "out", "a", 2, "--parallel", "2",
                            "--address", head["address"], *tune_sets(tune__pruner="none"))]
    done = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.load_study(study_name="a", storage=storage)
    assert sorted(numbers(study)) == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials}
    logs = Path(head["temp_dir"]) / "session_latest" / "logs"
    for pid in pids:
        assert list(logs.glob(f"worker-*-{pid}.out")), f"pid {pid} is no worker of the head at {head['address']}"
    storage.engine.dispose()


def test_tiny_study_on_postgresql(pg_url, small_real_root, tmp_path, capsys):
    assert main(tune_args(small_real_root, pg_url, tmp_path / "out", "pg", 2, *tune_sets())) == 0
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.load_study(study_name="pg", storage=storage)
    assert sorted(numbers(study)) == [0, 1] and (tmp_path / "out" / "best_params.yaml").is_file()
    # bad input against an existing study: exit 2, one line, the study untouched
    before = [(t.number, t.state, t.params) for t in study.get_trials()]
    capsys.readouterr()
    assert main(tune_args(small_real_root, pg_url, tmp_path / "out", "pg", 4, *tune_sets(),
                          "--set", "tune.space.tau.low=500")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert [(t.number, t.state, t.params) for t in optuna.load_study(study_name="pg", storage=storage).get_trials()] == before
    storage.engine.dispose()


@pytest.mark.parametrize("sets,needle", [
    (["--set", "tune.space.tau.low=500"], "inverted range"),
    (["--set", "tune.space.step_size.low=5", "--set", "tune.space.step_size.high=5"], "empty range"),
    (["--set", "tune.space.lam_max.log=true", "--set", "tune.space.lam_max.low=0"], "log range needs low > 0"),
    (["--set", "tune.space.shots.choices=[]"], "non-empty list"),
    (["--set", "tune.space.shots.choices=[1,50]"], "normal images"),
    (["--set", "tune.eval_shots=50"], "normal training images of validation category"),
    (["--set", f"tune.validation=[{HELD_OUT}]"], "never be seen"),
])
def test_bad_search_space_is_one_line_exit_2_and_study_untouched(sets, needle, small_real_root, tmp_path, capsys):
    storage = tmp_path / "j.log"
    code = main(tune_args(small_real_root, storage, tmp_path / "out", "b", 2, *tune_sets(), *sets))
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not storage.exists() and not (tmp_path / "out").exists()  # nothing created


@pytest.mark.parametrize("storage,needle", [
    ("postgresql+psycopg2://postgres@127.0.0.1:1/nope", "unreachable"),
    ("redis://127.0.0.1:6379", "expected sqlite"),
    ("{tmp}/a-file/j.log", "cannot create folder"),  # its folder cannot be made: a file is in the way
    ("sqlite:///{tmp}/a-file/t.db", "cannot create folder"),
])
def test_unreachable_storage_is_one_line_exit_2(storage, needle, small_real_root, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    storage = storage.format(tmp=tmp_path)
    t0 = time.monotonic()
    code = main(tune_args(small_real_root, storage, tmp_path / "out", "u", 2, *tune_sets()))
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert time.monotonic() - t0 < 20 and not (tmp_path / "out").exists()


def test_sqlite_refuses_parallel_writers(small_real_root, tmp_path, capsys):
    code = main(tune_args(small_real_root, f"sqlite:///{tmp_path / 'o.db'}", tmp_path / "out", "q", 2,
                          "--parallel", "2", *tune_sets()))
    assert code == 2 and "parallel writers" in capsys.readouterr().err
    assert not (tmp_path / "o.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_opens_the_study(journal_study):
    base, _ = journal_study
    port = _free_port()
    dashboard = str(Path(sys.executable).with_name("optuna-dashboard"))
    proc = subprocess.Popen([dashboard, str(base / "journal.log"), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["s"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_partial_override_of_a_range_keeps_its_other_bounds():
    cfg = load_config(None, parse_overrides(["tune.space.tau.low=5"]))
    assert (cfg.tune.space.tau.low, cfg.tune.space.tau.high, cfg.tune.space.tau.log) == (5.0, 100.0, True)


@pytest.mark.parametrize("name,kind", [("median", "MedianPruner"), ("hyperband", "HyperbandPruner"),
                                       ("none", "NopPruner")])
def test_pruner_choice(name, kind):
    from orchestrator.tuning.sampler import make_pruner

    assert type(make_pruner(load_config(None, parse_overrides([f"tune.pruner={name}"])))).__name__ == kind


@pytest.mark.parametrize("storage", ["tune/journal.log", "sqlite:///tune/db/tune.db"])
def test_missing_storage_folder_is_created(storage, tmp_path, monkeypatch):
    """docs/tuning.md's first command on a fresh clone: --storage tune/journal.log with no tune/ yet."""
    from orchestrator.tuning.storage import open_storage

    monkeypatch.chdir(tmp_path)
    store = open_storage(storage, load_config(None))
    optuna.create_study(study_name="fresh", storage=store)
    assert [s.study_name for s in optuna.get_all_study_summaries(store)] == ["fresh"]
    assert (tmp_path / "tune").is_dir()
    if hasattr(store, "engine"):
        store.engine.dispose()
