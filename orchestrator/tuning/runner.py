"""The study loop of `fsad tune`: rounds of trials in this process or as Ray tasks sharing the storage,
until enough have finished; a killed study resumes (trials of dead processes are failed and retried)."""
from __future__ import annotations

import copy
import time
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from model.errors import InputError
from orchestrator.config import Config, config_from_dict
from orchestrator.tracking.runs import TrackedRun, end_running_runs
from orchestrator.tracking.server import redact
from orchestrator.tuning.objective import Objective, Plan, TrialSpec, make_plan
from orchestrator.tuning.results import finish
from orchestrator.tuning.sampler import make_pruner, make_sampler
from orchestrator.tuning.storage import open_storage
from workers.data.images import set_max_pixels

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TRACKING_KEY = "tracking_key"  # study user attribute: a random id, the MLflow tag fsad.tune_key of its parent run


def run_trials(spec: TrialSpec, n_trials: int) -> list[int]:
    """Run n_trials of the study in this process; -> the trial numbers that finished here."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = config_from_dict(spec.cfg_tree)
    set_max_pixels(cfg.data.max_pixels)  # also when this runs as a Ray task in another process
    study = optuna.load_study(study_name=spec.study, storage=open_storage(spec.storage, cfg),
                              sampler=make_sampler(cfg), pruner=make_pruner(cfg))
    objective = Objective(spec)
    done: list[int] = []
    study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,), gc_after_trial=True,
                   callbacks=[lambda _study, trial: done.append(trial.number)])
    return done


# ---------------------------------------------------------------------------------------------
# The study runner


def count(study: optuna.Study, states) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def tune(cfg: Config, data_root, target: str, storage: str, study_name: str, n_trials: int, out,
         parallel: int = 1, address: str | None = None, uri: str | None = None, spool=None,
         log=print) -> dict[str, Any]:
    """Run (or resume) the study until n_trials trials have finished (completed or pruned).

    Everything that can be wrong with the input is checked before the storage is opened."""
    if not study_name.strip():
        raise InputError("--study is empty: expected a study name")
    if n_trials < 1:
        raise InputError(f"--trials {n_trials}: expected N >= 1")
    if parallel < 1:
        raise InputError(f"--parallel {parallel}: expected P >= 1")
    if parallel > 1 and storage.startswith("sqlite:"):
        raise InputError("--storage sqlite with --parallel > 1: sqlite locks under parallel writers; "
                         "use a journal file path on one machine or PostgreSQL on a cluster")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    plan = make_plan(cfg, data_root, target)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage, cfg)
    study = _study(store, study_name, cfg, plan)
    out.mkdir(parents=True, exist_ok=True)
    key = study.user_attrs[TRACKING_KEY]
    parent = None
    if uri is not None:  # one parent run per study: a resumed study reopens the one tagged with its key
        parent = TrackedRun(uri, f"tune {study_name}", cfg.tracking.experiment,
                            {"fsad.kind": "tune", "optuna.study": study_name, "fsad.target": target,
                             "fsad.validation": ",".join(plan.validation)}, root=spool,
                            reopen=("fsad.tune_key", key))
        # per invocation (tags, overwritten on resume) and per study (params, the same on resume)
        parent.set_tags({"fsad.trials": n_trials, "fsad.parallel": parallel, "fsad.address": address or ""})
        parent.log_params({"storage": redact(storage), "train_categories": ",".join(plan.train),
                           "validation": ",".join(plan.validation),
                           **{k: str(v) for k, v in cfg.flatten().items() if k.startswith(("tune.", "train."))}})
    spec = TrialSpec(cfg.to_dict(), storage, study_name, asdict(plan), str(out.resolve()), uri,
                     parent.run_id if parent else None, str(spool) if spool else None,
                     {"optuna.study": study_name, "fsad.tune_key": key})
    status = "FAILED"
    try:
        _optimize(study, spec, n_trials, parallel, address, cfg, log)
        summary = finish(study, cfg, plan, out, parent)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            parent.end(status)


def _study(store: BaseStorage, name: str, cfg: Config, plan: Plan) -> optuna.Study:
    """Create the study, or load it and check it was made for the same target and validation split."""
    try:
        existing = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        existing = None
    if existing is not None:
        attrs = existing.user_attrs
        if attrs.get("target") not in (None, plan.target) or attrs.get("validation") not in (None, plan.validation):
            raise InputError(f"study {name!r} tunes target {attrs.get('target')!r} with validation "
                             f"{attrs.get('validation')}; this run asks for {plan.target!r} with {plan.validation}")
        if TRACKING_KEY not in attrs:  # a study made before the key existed
            existing.set_user_attr(TRACKING_KEY, uuid.uuid4().hex)
        return existing
    study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True)
    study.set_user_attr("target", plan.target)
    study.set_user_attr("validation", plan.validation)
    study.set_user_attr("train", plan.train)
    study.set_user_attr(TRACKING_KEY, uuid.uuid4().hex)
    return study


def _optimize(study: optuna.Study, spec: TrialSpec, n_trials: int, parallel: int, address: str | None,
              cfg: Config, log) -> None:
    """Rounds of trials until n_trials have finished; trials RUNNING elsewhere are waited for (they
    finish, or their heartbeat goes stale and they are failed and re-enqueued)."""
    ray_owned: bool | None = None  # True: this call started or joined Ray, so it disconnects at the end
    stalled = 0
    close_killed = KilledTrialRuns(spec, cfg.tracking.experiment, log)
    try:
        while True:
            optuna.storages.fail_stale_trials(study)
            close_killed(study)
            done = count(study, FINISHED)
            running = count(study, (TrialState.RUNNING,))
            need = n_trials - done - running
            if need <= 0:
                if running == 0:
                    return
                time.sleep(min(cfg.tune.heartbeat_interval, 2))
                continue
            if parallel > 1 or address is not None:
                if ray_owned is None:
                    import ray

                    ray_owned = not ray.is_initialized()  # else a caller's ray.init: theirs to end
                    _connect(address, parallel, cfg)
                _run_round(spec, need, parallel)
            else:
                run_trials(spec, need)
            after = count(study, FINISHED)
            stalled = stalled + 1 if after == done else 0
            if stalled >= 3:
                raise RuntimeError(f"study {spec.study}: three rounds without a finished trial (every trial fails?)")
            log(f"fsad tune: {after}/{n_trials} trials finished")
    finally:
        if ray_owned:  # also a joined cluster (--address): leave no driver connection behind
            import ray

            ray.shutdown()


class KilledTrialRuns:
    """Ends the MLflow runs a dead process left RUNNING: the nested run of every trial Optuna reports
    FAIL (failed by heartbeat, then retried) and is still RUNNING there becomes KILLED, tagged
    optuna.state=FAIL. A trial that failed in a live process ended its own run (FAILED) first.
    Asked again whenever more trials have failed; an unreachable server is warned about, and the next
    `fsad tune` on the study asks again."""

    def __init__(self, spec: TrialSpec, experiment: str, log=print):
        self.spec, self.experiment, self.log = spec, experiment, log
        self.asked: set[int] = set()

    def __call__(self, study: optuna.Study) -> None:
        if self.spec.uri is None:
            return
        failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        if failed <= self.asked:
            return
        self.asked |= failed
        tags = {"fsad.kind": "tune_trial", "fsad.tune_key": self.spec.tags["fsad.tune_key"]}
        ended = end_running_runs(self.spec.uri, self.experiment, tags, "KILLED", set_tags={"optuna.state": "FAIL"},
                                 select=lambda t: t.get("optuna.trial", "").isdigit() and int(t["optuna.trial"]) in failed)
        if ended:
            self.log(f"fsad tune: {len(ended)} run(s) of failed trials left RUNNING by a dead process marked KILLED")


def _connect(address: str | None, parallel: int, cfg: Config) -> bool:
    from orchestrator.training.cluster import connect

    c = copy.deepcopy(cfg)
    c.distributed.workers, c.distributed.num_cpus_per_worker = parallel, 1.0
    c.distributed.episode_workers = 0
    return connect(address, c)


def _run_round(spec: TrialSpec, need: int, parallel: int) -> None:
    """Split `need` trials over up to `parallel` Ray tasks sharing the storage."""
    import ray

    from workers.pool import input_error_of

    quotas = [need // parallel + (1 if i < need % parallel else 0) for i in range(min(parallel, need))]
    task = ray.remote(num_cpus=1, max_retries=0)(run_trials)
    refs = [task.remote(spec, q) for q in quotas]
    try:
        ray.get(refs)
    except Exception as exc:  # noqa: BLE001 - bad input inside a task is still bad input
        error = input_error_of(exc)
        if error is not None:
            raise error from None
        raise
