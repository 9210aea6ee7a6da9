"""The one training loop (Alg. 1): a learner fed by a worker set, with checkpoints, resume and selection.

The in-process run is the distributed run with its worker in the learner's process (local mode,
orchestrator/training/local.py); `--workers N` swaps in Ray workers (orchestrator/training/remote.py).
Everything else is shared: the learner's update (orchestrator/training/learner.py), the non-finite loss
guard, the history, checkpoint selection on validation categories, and one crash-consistent checkpoint
written by `save_run` (orchestrator/training/checkpoint.py) and read back by `restore_run`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from model.errors import InputError
from model.methods import MAML_AE, OURS
from orchestrator.tracking.artifacts import META, STATE, WEIGHTS, build_model, model_writers, resolve_device
from orchestrator.config import Config
from orchestrator.training.checkpoint import recover, save_checkpoint
from orchestrator.training.inputs import (RunInputs, learns_from_defects, model_meta, open_inputs, prepare_out,
                                         refuse_changed_config, refuse_resume_across)
from orchestrator.training.learner import Learner, NonFiniteLoss, step_spec
from orchestrator.training.local import LocalWorkers
from orchestrator.training.selection import (
    BEST,
    CheckpointSelector,
    best_writer,
    load_tasks,
    restore_selection,
    selection_record,
    validation_scorer,
)


class TrainingDiverged(RuntimeError):
    """The loss went non-finite; the last good checkpoint is kept."""


class TrainingRun:
    """The state one run checkpoints: learner, worker set, history, selection, meta."""

    def __init__(self, cfg: Config, out: Path, inputs: RunInputs, learner: Learner, workers, meta: dict[str, Any],
                 on_checkpoint: Callable[[int, Path], None] | None):
        self.cfg, self.out, self.inputs, self.learner, self.workers = cfg, out, inputs, learner, workers
        self.meta, self.on_checkpoint = meta, on_checkpoint
        self.history: list[dict[str, Any]] = []
        self.selector: CheckpointSelector | None = None

    def save_run(self, episode: int) -> None:
        """The one checkpoint format: model files + state.pt {episode, optimizer, the worker set's state}."""
        meta_now = {**self.meta, "episodes_done": episode, "history": self.history}
        state = {"episode": episode, "optimizer": self.learner.optimizer.state_dict(), **self.workers.state_dict()}
        if self.selector is not None:
            meta_now["selection"] = selection_record(self.selector)
        writers = model_writers(self.learner.model, self.cfg, meta_now, state)
        writers.update(self.workers.extra_writers())
        if self.selector is not None and self.selector.best_state is not None:
            writers[BEST] = best_writer(self.selector)  # the best weights so far: part of the same atomic unit
        save_checkpoint(self.out, episode, writers)
        if self.on_checkpoint:  # e.g. tracking uploads the files just written
            self.on_checkpoint(episode, self.out)

    def restore_run(self) -> tuple[int, dict[str, Any]]:
        """Weights, optimizer, history and selection of the checkpoint in `out`; -> (episode, state)."""
        from safetensors.torch import load_file

        self.learner.model.load_state_dict(load_file(str(self.out / WEIGHTS)))
        state = torch.load(self.out / STATE, map_location="cpu", weights_only=True)
        start = int(state["episode"])
        # every update bumps the version once, so the version is the episode count
        self.learner.load_state_dict({"version": start, "optimizer": state["optimizer"]})
        saved_meta = json.loads((self.out / META).read_text())
        self.history = saved_meta.get("history", [])[:start]
        if self.selector is not None:
            restore_selection(self.selector, saved_meta.get("selection"), self.out / BEST)
        return start, state


def _open_run(cfg: Config, data_root, out: Path, resume: bool, manifest, splits, distributed: bool) -> RunInputs:
    """Input checks in the order a user fixes them: method, data, --out, the checkpoint's kind, categories."""
    if distributed and cfg.train.method != OURS.model:
        raise InputError(f"train.method={cfg.train.method!r}: distributed training (--workers) supports ours only")
    if distributed and data_root is not None and not isinstance(data_root, (str, Path)):
        raise InputError("distributed training (--workers) reads a data folder or a manifest, not a source object")

    def check_out() -> None:
        prepare_out(out, resume)
        if resume:
            recover(out)  # the newest consistent checkpoint, verified (or a one-line refusal)
            refuse_resume_across(out, distributed)
            refuse_changed_config(out, cfg)

    return open_inputs(cfg, data_root, manifest, splits, before_categories=check_out)


def _worker_set(cfg: Config, inputs: RunInputs, device: torch.device, distributed: bool, address: str | None):
    if not distributed:
        return LocalWorkers(cfg, inputs, device)
    if learns_from_defects(cfg):
        raise InputError("train.objective=defects runs in-process only for now (the Ray episode workers do not "
                         "load defect images); drop --workers or set train.objective=cd")
    from orchestrator.training.remote import RayWorkers  # imports ray: only runs with --workers load it

    return RayWorkers(cfg, inputs, address)


def trainable(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """train.trainable=head: freeze Ψ's trunk (no gradient, Adam skips it), so meta-training learns a linear
    map of fixed random features and the trunk cannot collapse. maml_ae always trains all of itself."""
    if cfg.train.trainable == "head" and cfg.train.method != MAML_AE.model:
        model.requires_grad_(False)
        model.backbone.head().requires_grad_(True)
    return model


def train(
    cfg: Config,
    data_root: str | Path | None,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    manifest: str | Path | None = None,
    splits: str | Path | None = None,
    distributed: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Meta-train on every category of `data_root` except cfg.data.exclude; returns a summary.

    data_root: a folder, or a ready source object (categories(), load(), content_sha256; e.g.
    workers.data.video.SceneTaskSource; in-process only). With `manifest` the images are the manifest's
    (data_root, if given, overrides its image root); with `splits` too, exactly the training rows of the
    fold of the one held-out category. `distributed`: cfg.distributed.workers Ray workers (joining
    `address`, or a Ray started here) instead of the in-process worker.
    """
    out = Path(out)
    inputs = _open_run(cfg, data_root, out, resume, manifest, splits, distributed)
    device = resolve_device(cfg.train.device)
    workers = _worker_set(cfg, inputs, device, distributed, address)  # the in-process one loads its images here
    torch.manual_seed(cfg.train.seed)
    lr = cfg.maml.outer_lr if cfg.train.method == MAML_AE.model else cfg.train.lr
    learner = Learner(trainable(build_model(cfg), cfg), lr, cfg.train.grad_clip, step_spec(cfg), device)
    meta = model_meta(cfg, inputs)
    if distributed:
        from dataclasses import asdict

        meta["distributed"] = asdict(cfg.distributed)
    run = TrainingRun(cfg, out, inputs, learner, workers, meta, on_checkpoint)
    if inputs.val_categories:
        run.selector = CheckpointSelector(load_tasks(inputs.source, inputs.val_categories, cfg), device,
                                          cfg.train.val_metric, scorer_for=validation_scorer(cfg))
    start, state = run.restore_run() if resume else (0, None)
    try:
        workers.start(learner, state, out)
        return _run_loop(run, start, progress, on_log)
    finally:
        workers.close()


def train_distributed(cfg: Config, data_root, out, address: str | None = None, resume: bool = False,
                      progress: bool = True, on_log: Callable[[dict[str, Any]], None] | None = None,
                      **kwargs) -> dict[str, Any]:
    """`train` with cfg.distributed.workers Langevin workers on Ray; -> a summary (counters, timing)."""
    return train(cfg, data_root, out, resume=resume, progress=progress, on_log=on_log, distributed=True,
                 address=address, **kwargs)


def _run_loop(run: TrainingRun, start: int, progress: bool, on_log) -> dict[str, Any]:
    cfg, learner, workers, selector, total = run.cfg, run.learner, run.workers, run.selector, run.cfg.train.episodes
    if selector is not None and start == 0:
        selector.consider(0, learner.model)  # the initial Ψ is a candidate: selection never does worse on validation
    began = time.perf_counter()
    bar = tqdm(total=total, initial=start, desc=workers.description, disable=not progress, dynamic_ncols=True)
    done = start
    try:
        for update in workers.updates(learner, start):
            rounded = {k: round(float(v), 6) for k, v in update.stats.items()}
            record = {"episode": done, "category": update.category, **rounded}
            done += 1
            if selector is not None and done % cfg.train.val_every == 0:
                record.update(selector.consider(done, learner.model))
            run.history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{update.stats['loss']:.4f}")
            if on_log:
                on_log(workers.log_record(record, rounded, update))
            if done % cfg.train.checkpoint_every == 0 and done < total:
                run.save_run(done)
    except NonFiniteLoss as exc:
        raise TrainingDiverged(
            f"loss became non-finite at episode {done} ({exc}); the last good checkpoint is in {run.out}; "
            "try a smaller train.lr or langevin.step_size"
        ) from None
    bar.close()
    elapsed = time.perf_counter() - began
    workers.finish()
    if selector is not None:
        if not selector.history or selector.history[-1]["episode"] != total:
            selector.consider(total, learner.model)  # the last weights, unless val_every just scored them
        learner.model.load_state_dict(selector.best_state)  # the model directory holds the selected weights
    run.save_run(total)
    summary = {"out": str(run.out), "episodes": total, "seconds": elapsed, "categories": run.inputs.categories}
    summary.update(workers.summary())
    summary["final"] = run.history[-1] if run.history else None
    return summary
