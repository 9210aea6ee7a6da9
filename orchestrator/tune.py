"""Hyperparameter search with Optuna: the objective, the storage, and the study runner (trials as Ray tasks).

Protocol (no leakage into the leave-one-out numbers): the final `target` category is never loaded; the
validation categories (tune.validation, default the last remaining category) are held out of every
trial's training; a trial meta-trains on the rest and, every tune.eval_every episodes, adapts to each
validation category with tune.eval_shots normal images and reports

    objective = mean over validation categories of mean(image AUROC, pixel AUROC where masks exist)

to the pruner (MedianPruner by default, HyperbandPruner or none). Trial parameters are named by the
config key they set (`model.tau`, ...), so the best ones are `fsad train --set` arguments as they stand.

Storage: an RDB URL (sqlite:///…, postgresql+psycopg2://…) uses Optuna's heartbeat; a file path (or
journal:PATH) is a JournalFileBackend log, given the same heartbeat here (`JournalHeartbeatStorage`).
A trial whose process died is failed once its heartbeat is tune.grace_period seconds old and re-enqueued
with the same parameters (RetryHeartbeatStaleTrialCallback), so a killed study resumes without
duplicate or lost trials. Parallel trials are Ray tasks (`run_trials`, a plain function made remote
only in `_run_round`) that all open the same storage.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials() looks for
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from model.errors import InputError
from orchestrator.config import TUNE_KEYS, Config, FloatRange, config_from_dict, save_config, with_values
from orchestrator.tracking import TrackedRun, check_database_reachable, end_running_runs, redact
from workers.data import set_max_pixels
from workers.files import atomic_write_text

HEARTBEAT_ATTR = "fsad:heartbeat"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
BEST_PARAMS = "best_params.yaml"
BEST_JSON = "best.json"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
TRACKING_KEY = "tracking_key"  # study user attribute: a random id, the MLflow tag fsad.tune_key of its parent run


# ---------------------------------------------------------------------------------------------
# Storage


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """A journal log with Optuna's heartbeat protocol: the heartbeat is a trial system attribute."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int, callback=None):
        super().__init__(JournalFileBackend(path))
        self.path, self.heartbeat_interval, self.grace_period, self.callback = path, heartbeat_interval, grace_period, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp() if trial.datetime_start else now)
            if now - last > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.callback


def storage_kind(url: str) -> str:
    """rdb | journal; anything else is bad input."""
    scheme = re.match(r"^([a-zA-Z][\w+.-]*)://", url)
    if scheme:
        if scheme.group(1).split("+")[0] in RDB_SCHEMES:
            return "rdb"
        raise InputError(f"--storage {redact(url)!r}: expected sqlite:///FILE, postgresql+psycopg2://…, "
                         "mysql://… or a journal file path")
    return "journal"


def open_storage(url: str, cfg: Config) -> BaseStorage:
    """The Optuna storage behind `url`, heartbeat on; an unreachable one is a one-line InputError."""
    t = cfg.tune
    retry = RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry)
    if not url.strip():
        raise InputError("--storage is empty: expected a journal file path or a database URL")
    if storage_kind(url) == "journal":
        path = Path(url[len("journal:"):] if url.startswith("journal:") else url)
        if path.is_dir():
            raise InputError(f"--storage {url} is a directory; expected a journal file path")
        _make_folder(path.parent, url)
        return JournalHeartbeatStorage(str(path), t.heartbeat_interval, t.grace_period, retry)
    if url.startswith("sqlite:///"):
        _make_folder(Path(url[len("sqlite:///"):]).parent, url)
    try:
        check_database_reachable(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=t.heartbeat_interval,
                              grace_period=t.grace_period, heartbeat_stale_trial_callback=retry)
    except ImportError as exc:
        raise InputError(f"--storage {redact(url)}: no database driver ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, unknown database, bad credentials ...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--storage {redact(url)}: unreachable ({redact(first)})") from None


def _make_folder(folder: Path, url: str) -> None:
    """The storage file's folder, created when missing (docs/tuning.md's tune/journal.log on a fresh clone)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--storage {url}: cannot create folder {folder} ({exc.strerror or type(exc).__name__}); "
                         "expected a path in a folder you can write") from None


# ---------------------------------------------------------------------------------------------
# The plan: categories, data checks, the trial's config


@dataclass
class Plan:
    target: str  # never loaded
    train: list[str]
    validation: list[str]
    data_root: str


def make_plan(cfg: Config, data_root, target: str) -> Plan:
    """Training and validation categories, and the data checks that need counts (K vs images)."""
    from workers.manifest import as_source

    if cfg.train.method != "ours":
        raise InputError(f"train.method={cfg.train.method!r}: fsad tune searches the `ours` model's knobs")
    if data_root is None or (isinstance(data_root, (str, Path)) and not Path(data_root).is_dir()):
        raise InputError(f"--data {data_root}: not a directory")
    source = as_source(data_root)
    available = source.categories()
    if target not in available:
        raise InputError(f"--target {target!r} not found under {data_root}; available: {', '.join(available)}")
    chosen = cfg.data.categories or available
    for name in list(chosen) + list(cfg.data.exclude) + list(cfg.tune.validation):
        if name not in available:
            raise InputError(f"category {name!r} not found under {data_root}; available: {', '.join(available)}")
    if target in cfg.tune.validation:
        raise InputError(f"tune.validation contains the target {target!r}: it must never be seen while tuning")
    pool = [c for c in chosen if c != target and c not in set(cfg.data.exclude)]
    validation = list(cfg.tune.validation) or pool[-1:]
    train = [c for c in pool if c not in set(validation)]
    if not validation or not train:
        raise InputError(f"fsad tune needs a training and a validation category besides the target {target!r}; "
                         f"have {pool}")
    # K: the largest shot count a trial can draw, plus M queries, must fit every training category
    space = cfg.tune.space
    k_max = max(space.shots.choices) if space.shots.search else cfg.train.shots
    for category in train:
        n = len(source.load(category, 8, split="train"))
        if k_max + cfg.train.queries > n:
            raise InputError(f"tune.space.shots: K={k_max} + train.queries={cfg.train.queries} needs "
                             f"{k_max + cfg.train.queries} normal images; category {category!r} has {n}")
    for category in validation:
        n = len(source.load(category, 8, split="train"))
        if cfg.tune.eval_shots > n:
            raise InputError(f"tune.eval_shots={cfg.tune.eval_shots} is larger than the {n} normal training "
                             f"images of validation category {category!r}")
    return Plan(target, train, validation, str(data_root))


def suggest(trial: optuna.Trial, cfg: Config) -> dict[str, Any]:
    """{config key: value} sampled from the searched dimensions of tune.space."""
    params = {}
    for name, key in TUNE_KEYS.items():
        dim = getattr(cfg.tune.space, name)
        if not dim.search:
            continue
        if isinstance(dim, FloatRange):
            params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        else:
            params[key] = trial.suggest_categorical(key, list(dim.choices))
    return params


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """A copy of cfg with {dotted key: value} set (validated)."""
    return with_values(cfg, params)


def trial_config(cfg: Config, plan: Plan, params: dict[str, Any]) -> Config:
    """The trial's training config: the target and the validation categories held out."""
    held_out = sorted({plan.target, *plan.validation, *cfg.data.exclude})
    return apply_params(cfg, {**params, "data.exclude": held_out, "train.checkpoint_every": cfg.tune.eval_every})


# ---------------------------------------------------------------------------------------------
# Validation


def load_validation(plan: Plan, cfg: Config) -> list:
    """A small test set per validation category: at most tune.eval_images images, half normal."""
    from orchestrator.evaluate import load_test_set

    sets = []
    for category in plan.validation:
        test = load_test_set(plan.data_root, category, cfg.data.image_size)
        half = max(1, cfg.tune.eval_images // 2)
        normal = torch.nonzero(test.labels == 0).flatten()[:half]
        anomalous = torch.nonzero(test.labels == 1).flatten()[: cfg.tune.eval_images - len(normal)]
        keep = torch.cat([normal, anomalous])
        test.images, test.labels = test.images[keep], test.labels[keep]
        test.masks = test.masks[keep] if test.masks is not None else None
        test.paths = [test.paths[i] for i in keep.tolist()]
        sets.append(test)
    return sets


def validation_score(model_dir: Path, sets: list, cfg: Config) -> dict[str, float]:
    """{objective, image_auroc, pixel_auroc (when masks exist)} of the model in model_dir."""
    from orchestrator.artifacts import load_model_dir, resolve_device
    from orchestrator.evaluate import evaluate_scorer, make_scorer

    model, model_cfg, _ = load_model_dir(model_dir)
    device = resolve_device(model_cfg.train.device)
    model.to(device).eval()
    scorer = make_scorer("ours", model, model_cfg)
    per_category, images, pixels = [], [], []
    for test in sets:
        result = evaluate_scorer(scorer, test, cfg.tune.eval_shots, cfg.tune.eval_draws, cfg.eval.seed,
                                 cfg.eval.batch_size, device, progress=False)
        image = result["image_auroc"]["mean"]
        pixel = (result.get("pixel_auroc") or {}).get("mean")
        pixel = pixel if pixel is not None and math.isfinite(pixel) else None
        images.append(image)
        if pixel is not None:
            pixels.append(pixel)
        per_category.append((image + pixel) / 2 if pixel is not None else image)
    out = {"objective": sum(per_category) / len(per_category), "image_auroc": sum(images) / len(images)}
    if pixels:
        out["pixel_auroc"] = sum(pixels) / len(pixels)
    return out


# ---------------------------------------------------------------------------------------------
# One process's trials (in-process or as a Ray task)


@dataclass
class TrialSpec:
    """Everything a trial process needs (picklable: Ray ships it to the task)."""

    cfg_tree: dict[str, Any]
    storage: str
    study: str
    plan: dict[str, Any]
    out: str
    uri: str | None = None
    parent_run_id: str | None = None
    spool: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)


class Objective:
    """objective(trial) -> validation objective at the end of training; reports every eval_every episodes."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec
        self.cfg = config_from_dict(spec.cfg_tree)
        self.plan = Plan(**spec.plan)
        self.sets = load_validation(self.plan, self.cfg)

    def __call__(self, trial: optuna.Trial) -> float:
        from orchestrator.train import TrainingDiverged, train

        params = suggest(trial, self.cfg)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        try:
            cfg = trial_config(self.cfg, self.plan, params)
        except InputError as exc:  # e.g. an enqueued setting with λ* > λ_max: this trial, not the study
            trial.set_user_attr("invalid", str(exc)[:300])
            raise optuna.TrialPruned(f"invalid setting: {exc}") from None
        out = Path(self.spec.out) / "trials" / f"trial_{trial.number:04d}"
        shutil.rmtree(out, ignore_errors=True)
        run = self._run(trial, params)
        reported: dict[int, float] = {}

        def on_checkpoint(episode: int, model_dir: Path) -> None:
            if episode in reported:  # the final checkpoint repeats the last periodic one
                return
            scores = validation_score(model_dir, self.sets, self.cfg)
            reported[episode] = scores["objective"]
            trial.report(scores["objective"], episode)
            if run is not None:
                run.log_metrics({f"val_{k}": v for k, v in scores.items()}, step=episode)
            if trial.should_prune():
                raise optuna.TrialPruned(f"episode {episode}: objective {scores['objective']:.4f}")

        state = "FAIL"
        try:
            train(cfg, self.plan.data_root, out, progress=False, on_checkpoint=on_checkpoint)
            value = reported[cfg.train.episodes]
            state = "COMPLETE"
            if run is not None:
                run.log_metrics({"objective": value}, step=cfg.train.episodes)
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except TrainingDiverged as exc:  # a bad setting (e.g. a huge β): a pruned trial, not a crash
            state = "PRUNED"
            trial.set_user_attr("diverged", str(exc)[:300])
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        finally:
            if run is not None:
                run.set_tags({"optuna.state": state})
                run.end("FINISHED" if state != "FAIL" else "FAILED")

    def _run(self, trial: optuna.Trial, params: dict[str, Any]) -> TrackedRun | None:
        s = self.spec
        if s.uri is None:
            return None
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial.study._storage.get_trial(trial._trial_id))
        tags = {**s.tags, "fsad.kind": "tune_trial", "optuna.trial": trial.number}
        if retried is not None:
            tags["optuna.retry_of"] = retried
        run = TrackedRun(s.uri, f"trial {trial.number}", self.cfg.tracking.experiment, tags,
                         parent=s.parent_run_id, root=s.spool)
        run.log_params({k: str(v) for k, v in params.items()})
        return run


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


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    return TrialSeededTPE(cfg.tune.sampler_seed, max(1, cfg.tune.startup_trials))


def trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler seed of trial `number`: distinct per trial, the same in every process."""
    return int(np.random.SeedSequence([sampler_seed, number]).generate_state(1)[0])


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE (constant liar on) whose random state is reseeded from (tune.sampler_seed, trial number).

    One TPESampler(seed=S) in each of P processes made the same draws in each: P parallel trials got
    the same parameters. The trial number is unique in the storage, so here concurrent trials draw
    differently while a trial's draws stay a function of the seed, its number and the trials it sees:
    the first tune.startup_trials trials (random sampling) are identical in any run with the same seed,
    whatever --parallel; later ones also depend on which trials had finished when they were asked
    (deterministic with --parallel 1). Running trials count as bad values (constant liar), so
    concurrent TPE trials spread out."""

    def __init__(self, seed: int, n_startup_trials: int):
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._number: int | None = None
        self._tpe: optuna.samplers.TPESampler | None = None

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number != self._number:  # one trial at a time per process (study.optimize, n_jobs=1)
            self._number = trial.number
            self._tpe = optuna.samplers.TPESampler(seed=trial_seed(self.seed, trial.number), constant_liar=True,
                                                   n_startup_trials=self.n_startup_trials)
        return self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_steps)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=t.eval_every, max_resource=cfg.train.episodes)
    return optuna.pruners.NopPruner()


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
    from orchestrator.pool import connect

    c = copy.deepcopy(cfg)
    c.distributed.workers, c.distributed.num_cpus_per_worker = parallel, 1.0
    c.distributed.episode_workers = 0
    return connect(address, c)


def _run_round(spec: TrialSpec, need: int, parallel: int) -> None:
    """Split `need` trials over up to `parallel` Ray tasks sharing the storage."""
    import ray

    from orchestrator.pool import input_error_of

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


# ---------------------------------------------------------------------------------------------
# Results


def finish(study: optuna.Study, cfg: Config, plan: Plan, out: Path, parent: TrackedRun | None) -> dict[str, Any]:
    """best_params.yaml (params.yaml-shaped), best.json, plots/; all of them logged to the parent run."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(trials), "states": states,
                               "target": plan.target, "validation": plan.validation, "train": plan.train}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    files = []
    if complete:
        best = study.best_trial
        best_cfg = apply_params(cfg, best.params)
        save_config(best_cfg, out / BEST_PARAMS)
        record = {"value": best.value, "trial": best.number, "params": best.params, **set_arguments(best.params)}
        atomic_write_text(out / BEST_JSON, json.dumps(record, indent=2))
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params,
                       best_params_file=str(out / BEST_PARAMS))
        files += [out / BEST_PARAMS, out / BEST_JSON]
    plots = write_plots(study, out / "plots")
    summary["plots"] = [str(p) for p in plots]
    if parent is not None:
        step = len(trials)  # a resumed study's parent gets one point per invocation
        if complete:
            parent.log_metrics({"best_objective": study.best_value}, step=step)
        parent.log_metrics({f"trials_{k}": v for k, v in states.items()}, step=step)
        parent.log_artifacts(files, "")
        parent.log_artifacts(plots, "plots")
        summary["run_id"] = parent.run_id
    return summary


def set_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """best.json's command-line forms of {config key: value}: `set` (k=v), `fsad_train` (--set k=v ...),
    `dvc_exp_run` (-S k=v ...)."""
    sets = [f"{k}={v}" for k, v in params.items()]
    return {"set": sets, "fsad_train": " ".join(f"--set {s}" for s in sets),
            "dvc_exp_run": " ".join(f"-S {s}" for s in sets)}


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """History, parameter importances, parallel coordinates as PNG; a plot the study cannot have yet
    (importances need two completed trials with varied parameters) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("history", vis.plot_optimization_history), ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.savefig(folder / f"{name}.png", dpi=80, bbox_inches="tight")
            plt.close(figure)
            written.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
            plt.close("all")
    return written
