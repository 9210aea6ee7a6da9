"""One trial of `fsad tune`: the plan of categories, the trial's config, its training run with a
validation score every tune.eval_every episodes, and pruning."""
from __future__ import annotations

import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback

from model.methods import OURS
from model.errors import InputError
from orchestrator.config import TUNE_KEYS, Config, FloatRange, config_from_dict, with_values
from orchestrator.tracking.runs import TrackedRun


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
    from workers.data.sources import as_source

    if cfg.train.method != OURS.model:
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
    from orchestrator.evaluation.evaluate import load_test_set

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
    from orchestrator.tracking.artifacts import load_model_dir, resolve_device
    from orchestrator.evaluation.evaluate import evaluate_scorer, make_scorer

    model, model_cfg, _ = load_model_dir(model_dir)
    device = resolve_device(model_cfg.train.device)
    model.to(device).eval()
    scorer = make_scorer(OURS.name, model, model_cfg)
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
        from orchestrator.training.loop import TrainingDiverged, train

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
