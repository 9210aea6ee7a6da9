"""In-process episodic meta-training (Alg. 1) with checkpoints, resume and a non-finite loss guard.

`episode_step` is the pure update rule (one episode -> loss terms); `train` is the loop around it:
data loading, the episode sampler, Adam, progress bar, periodic crash-consistent checkpoints
(orchestrator/checkpoint.py) and `--resume`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from model.ebm.energy import AdaptiveEBM
from model.errors import InputError
from orchestrator.tracking.artifacts import build_model, META, model_writers, resolve_device, STATE, WEIGHTS
from model.methods import MAML_AE
from orchestrator.checkpoint import has_checkpoint, recover, save_checkpoint
from orchestrator.config import Config
from orchestrator.learner import step_spec
from orchestrator.selection import (
    BEST,
    CheckpointSelector,
    load_tasks,
    best_writer,
    restore_selection,
    selection_record,
    validation_categories,
)
from workers.data.sources import as_source, open_source
from workers.episodes import Episode, EpisodeSampler
from workers.negatives import EpisodeLoss, episode_loss


class TrainingDiverged(RuntimeError):
    """The loss went non-finite; the last good checkpoint is kept."""


EpisodeResult = EpisodeLoss  # (loss, stats): the one loss composition lives in workers/negatives.py


def episode_step(
    model: AdaptiveEBM, episode: Episode, cfg: Config, generator: torch.Generator | None, device: torch.device
) -> EpisodeLoss:
    """Alg. 1 lines 7-9 for one episode: dictionary, Langevin negatives, L = η₀L_rec + η₁L_cd.

    The same function the Ray Langevin workers run, so in-process and distributed updates agree."""
    return episode_loss(model, episode, step_spec(cfg), generator, device)


def load_normals(root, categories: list[str], image_size: int) -> dict[str, torch.Tensor]:
    """{category: train/good images (N, 3, S, S)}; root: a folder or a workers.data.sources source."""
    source = as_source(root)
    normals = {}
    for category in categories:
        items = source.load(category, image_size, split="train")
        normals[category] = torch.stack([item.image for item in items])
    return normals


def training_categories(root, cfg: Config) -> list[str]:
    root = as_source(root)
    available = root.categories()
    chosen = cfg.data.categories or available
    for name in list(chosen) + list(cfg.data.exclude):
        if name not in available:
            raise InputError(f"category {name!r} not found under {root}; available: {', '.join(available)}")
    categories = [c for c in chosen if c not in set(cfg.data.exclude)]
    if not categories:
        raise InputError(f"no training categories under {root} once {cfg.data.exclude} are held out")
    return categories


def _fold(cfg: Config, splits) -> str | None:
    """The held-out category whose fold a splits file restricts training to."""
    if splits is None:
        return None
    if len(cfg.data.exclude) != 1:
        raise InputError(f"--splits needs exactly one held-out category (--exclude CAT); got {cfg.data.exclude}")
    return cfg.data.exclude[0]


def _split_categories(source, cfg: Config) -> tuple[list[str], list[str]]:
    """(training categories, validation categories) of a run: the validation ones are set aside."""
    categories = training_categories(source, cfg)
    val_categories = validation_categories(cfg, source.categories())
    categories = [c for c in categories if c not in val_categories]
    if not categories:
        raise InputError(f"no training categories left once train.val_categories={val_categories} are set aside")
    return categories, val_categories


def _model_meta(cfg: Config, source, categories: list[str], val_categories: list[str], manifest) -> dict[str, Any]:
    return {
        "method": cfg.train.method,
        "train_categories": categories,
        "held_out": list(cfg.data.exclude),
        "data_root": str(source),
        "image_size": cfg.data.image_size,
        "manifest": str(manifest) if manifest is not None else None,
        "manifest_sha256": source.content_sha256,  # traces the model to its exact data
        "splits_sha256": source.splits.content_sha256 if getattr(source, "splits", None) else None,
        "val_categories": val_categories,
    }


def write_initial_model(cfg: Config, data_root: str | Path, out: str | Path) -> dict[str, Any]:
    """A model directory with Ψ at its initialisation (the seed `train` starts from) and no episode run.

    What the baselines need and nothing more: `untrained` and `knn_untrained` rebuild Ψ from the config's
    seed and `nosupport` uses no model, but all three read the directory's config and its record of the
    categories seen in training. `fsad loo --methods nosupport,untrained,...` evaluates them on it without
    meta-training. It records 0 episodes done, so `ours` and `knn` refuse it as unfinished."""
    out = Path(out)
    source = open_source(data_root, None, None)
    _prepare_out(out, resume=False)
    categories, val_categories = _split_categories(source, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    meta = {**_model_meta(cfg, source, categories, val_categories, None), "episodes_done": 0, "history": [],
            "initial": True}
    save_checkpoint(out, 0, model_writers(model, cfg, meta, {"episode": 0}))
    return {"out": str(out), "episodes": 0, "categories": categories}


def _prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if not resume and ((out / WEIGHTS).exists() or has_checkpoint(out)):
        raise InputError(f"--out {out} already holds a trained model; pass --resume to continue or choose another directory")
    if resume and not has_checkpoint(out):
        raise InputError(f"--resume: {out} has no {STATE} checkpoint to continue from")
    # The directory itself is created by the first checkpoint (save_checkpoint), so bad data found
    # later leaves no empty --out behind.


def train(
    cfg: Config,
    data_root: str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    manifest: str | Path | None = None,
    splits: str | Path | None = None,
) -> dict[str, Any]:
    """Meta-train on every category of `data_root` except cfg.data.exclude; returns a summary.

    data_root: a folder, or a ready source object (categories(), load(), content_sha256; e.g.
    workers.data.video.SceneTaskSource).

    With `manifest` the images are the manifest's (data_root, if given, overrides its image root);
    with `splits` too, exactly the training rows of the fold of the one held-out category.
    """
    out = Path(out)
    source = open_source(data_root, manifest, splits, fold=_fold(cfg, splits))
    _prepare_out(out, resume)
    device = resolve_device(cfg.train.device)
    categories, val_categories = _split_categories(source, cfg)
    normals = load_normals(source, categories, cfg.data.image_size)
    sampler = EpisodeSampler(
        normals, cfg.train.shots, cfg.train.queries, (cfg.inpaint.min_frac, cfg.inpaint.max_frac),
        cfg.train.augment, cfg.train.seed, exclude=tuple(cfg.data.exclude), corruptions=tuple(cfg.inpaint.kinds),
    )
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg).to(device)
    is_maml = cfg.train.method == MAML_AE.model
    lr = cfg.maml.outer_lr if is_maml else cfg.train.lr
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    history: list[dict[str, float]] = []
    selector = CheckpointSelector(load_tasks(source, val_categories, cfg), device) if val_categories else None
    start = 0
    if resume:
        from safetensors.torch import load_file

        recover(out)  # the newest consistent checkpoint, verified (or a one-line refusal)
        model.load_state_dict(load_file(str(out / WEIGHTS)))
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler_rng"])
        generator.set_state(state["langevin_rng"].to(generator.get_state().device))
        start = int(state["episode"])
        saved_meta = json.loads((out / META).read_text())
        history = saved_meta.get("history", [])[:start]
        if selector is not None:
            restore_selection(selector, saved_meta.get("selection"), out / BEST)
    meta = _model_meta(cfg, source, categories, val_categories, manifest)

    def checkpoint(episode: int) -> None:
        meta_now = {**meta, "episodes_done": episode, "history": history}
        state = {
            "episode": episode,
            "optimizer": optimizer.state_dict(),
            "sampler_rng": sampler.get_state(),
            "langevin_rng": generator.get_state().cpu(),
        }
        if selector is not None:
            meta_now["selection"] = selection_record(selector)
        writers = model_writers(model, cfg, meta_now, state)
        if selector is not None and selector.best_state is not None:
            writers[BEST] = best_writer(selector)  # the best weights so far: part of the same atomic unit
        save_checkpoint(out, episode, writers)
        if on_checkpoint:  # e.g. tracking uploads the files just written
            on_checkpoint(episode, out)

    model.train()
    if selector is not None and start == 0:
        selector.consider(0, model)  # the initial Ψ is a candidate: selection never does worse on validation
    began = time.perf_counter()
    bar = tqdm(range(start, cfg.train.episodes), initial=start, total=cfg.train.episodes,
               desc=f"train {cfg.train.method}", disable=not progress, dynamic_ncols=True)
    for episode_index in bar:
        episode = sampler.sample()
        if is_maml:
            from model.maml_ae import meta_train_step

            stats = meta_train_step(model, optimizer, episode.support.to(device), episode.queries.to(device),
                                    cfg.maml.inner_steps, cfg.maml.inner_lr)
            loss_value = stats["loss"]
        else:
            result = episode_step(model, episode, cfg, generator, device)
            stats, loss_value = result.stats, float(result.loss.detach())
            if math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                if cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                optimizer.step()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"loss became non-finite at episode {episode_index} ({stats}); the last good checkpoint "
                f"is in {out}; try a smaller train.lr or langevin.step_size"
            )
        record = {"episode": episode_index, "category": episode.category, **{k: round(float(v), 6) for k, v in stats.items()}}
        if selector is not None and (episode_index + 1) % cfg.train.val_every == 0:
            record.update(selector.consider(episode_index + 1, model))
        history.append(record)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if on_log:
            on_log(record)
        if (episode_index + 1) % cfg.train.checkpoint_every == 0:
            checkpoint(episode_index + 1)
    if selector is not None:
        if not selector.history or selector.history[-1]["episode"] != cfg.train.episodes:
            selector.consider(cfg.train.episodes, model)  # the last weights, unless val_every just scored them
        model.load_state_dict(selector.best_state)  # the model directory holds the selected weights
    checkpoint(cfg.train.episodes)
    elapsed = time.perf_counter() - began
    return {"out": str(out), "episodes": cfg.train.episodes, "seconds": elapsed, "categories": categories,
            "final": history[-1] if history else None}
