"""What a training run reads and where it writes: its data source, categories, output directory, meta."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from model.errors import InputError
from model.methods import MAML_AE
from orchestrator.tracking.artifacts import CONFIG, STATE, WEIGHTS, build_model, model_writers
from orchestrator.config import RUNTIME_KEYS, Config, key_in, load_config
from orchestrator.training.checkpoint import has_checkpoint, newest_state, save_checkpoint
from orchestrator.training.selection import validation_categories
from workers.data.sources import as_source, open_source


@dataclass
class RunInputs:
    """One run's data: the opened source, its training and validation categories, how it was named."""

    source: Any  # workers.data.sources FolderSource / ManifestSource, or a ready source object
    categories: list[str]
    val_categories: list[str]
    data_root: str | Path | None
    manifest: str | Path | None
    splits: str | Path | None
    fold: str | None


def load_normals(root, categories: list[str], image_size: int) -> dict[str, torch.Tensor]:
    """{category: train/good images (N, 3, S, S)}; root: a folder or a workers.data.sources source."""
    source = as_source(root)
    normals = {}
    for category in categories:
        items = source.load(category, image_size, split="train")
        normals[category] = torch.stack([item.image for item in items])
    return normals


def learns_from_defects(cfg: Config) -> bool:
    """train.objective=defects applies to ours (maml_ae has its own objective)."""
    return cfg.train.objective == "defects" and cfg.train.method != MAML_AE.model


def load_defects(root, categories: list[str], image_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{category: (anomalous test images (N, 3, S, S), their masks (N, S, S) bool)} of the *training*
    categories (train.objective=defects), only the images whose mask marks something."""
    source = as_source(root)
    defects = {}
    for category in categories:
        items = [it for it in source.load(category, image_size, split="test")
                 if it.label == 1 and it.mask is not None and bool(it.mask.any())]
        if items:
            defects[category] = (torch.stack([it.image for it in items]), torch.stack([it.mask.bool() for it in items]))
    return defects


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


def splits_fold(cfg: Config, splits) -> str | None:
    """The held-out category whose fold a splits file restricts training to."""
    if splits is None:
        return None
    if len(cfg.data.exclude) != 1:
        raise InputError(f"--splits needs exactly one held-out category (--target CAT); got {cfg.data.exclude}")
    return cfg.data.exclude[0]


def split_categories(source, cfg: Config) -> tuple[list[str], list[str]]:
    """(training categories, validation categories) of a run: the validation ones are set aside."""
    categories = training_categories(source, cfg)
    val_categories = validation_categories(cfg, source.categories())
    categories = [c for c in categories if c not in val_categories]
    if not categories:
        raise InputError(f"no training categories left once train.val_categories={val_categories} are set aside")
    return categories, val_categories


def open_inputs(cfg: Config, data_root, manifest=None, splits=None,
                before_categories: Callable[[], None] | None = None) -> RunInputs:
    """Open the source, then (after `before_categories`: the output checks) choose the categories."""
    fold = splits_fold(cfg, splits)
    source = open_source(data_root, manifest, splits, fold=fold)
    if before_categories is not None:
        before_categories()
    categories, val_categories = split_categories(source, cfg)
    return RunInputs(source, categories, val_categories, data_root, manifest, splits, fold)


def model_meta(cfg: Config, inputs: RunInputs) -> dict[str, Any]:
    source, manifest = inputs.source, inputs.manifest
    return {
        "method": cfg.train.method,
        "train_categories": inputs.categories,
        "held_out": list(cfg.data.exclude),
        "data_root": str(source),
        "image_size": cfg.data.image_size,
        "manifest": str(manifest) if manifest is not None else None,
        "manifest_sha256": source.content_sha256,  # traces the model to its exact data
        "splits_sha256": source.splits.content_sha256 if getattr(source, "splits", None) else None,
        "val_categories": inputs.val_categories,
    }


def prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if not resume and ((out / WEIGHTS).exists() or has_checkpoint(out)):
        raise InputError(f"--out {out} already holds a trained model; pass --resume to continue or choose another directory")
    if resume and not has_checkpoint(out):
        raise InputError(f"--resume: {out} has no {STATE} checkpoint to continue from")
    # The directory itself is created by the first checkpoint (save_checkpoint), so bad data found
    # later leaves no empty --out behind.


def checkpoint_is_distributed(out: str | Path) -> bool | None:
    """None: no checkpoint in `out`; True/False: written with Ray workers / with the in-process workers."""
    path = newest_state(Path(out))
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable: resume's consistency check refuses it with one line
        return None
    return bool(state.get("distributed", False))


def refuse_resume_across(out: str | Path, distributed: bool) -> None:
    """An in-process checkpoint continues on Ray workers (its episodes count as issued and applied); a Ray
    one has no sampler state for the in-process worker to continue from."""
    if not distributed and checkpoint_is_distributed(out):
        raise InputError(f"--resume: {out} holds a checkpoint written with Ray workers; resume it with --workers N")


# what a resumed run may change: its budget, the run-time keys, and sections no training reads; the rest shaped
# the episodes already run
RESUMABLE_KEYS = ("train.episodes", "train.checkpoint_every", *RUNTIME_KEYS, "distributed.", "pipeline.",
                  "experiments.", "tune.")


def refuse_changed_config(out: str | Path, cfg: Config) -> None:
    """--resume continues the training that out/config.yaml describes. Another crop, learning rate, model, ...
    would train the remaining episodes differently and leave a config.yaml that no longer describes the
    episodes already run, so only RESUMABLE_KEYS may differ (one line naming what changed, else)."""
    path = Path(out) / CONFIG
    if not path.is_file():  # a checkpoint from before config.yaml was published: the consistency check decides
        return
    saved, now = load_config(path).flatten(), cfg.flatten()
    changed = [key for key in now if key in saved and now[key] != saved[key] and not key_in(key, RESUMABLE_KEYS)]
    if changed:
        shown = ", ".join(f"{key}={now[key]!r} (checkpoint: {saved[key]!r})" for key in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        allowed = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)
        raise InputError(f"--resume: {out} was trained with another config: {shown}{more}; a resumed run may change "
                         f"only {allowed}: train into a new --out to change the rest")


def write_initial_model(cfg: Config, data_root: str | Path, out: str | Path) -> dict[str, Any]:
    """A model directory with Ψ at its initialisation (the seed `train` starts from) and no episode run.

    What the baselines need and nothing more: `untrained` and `knn_untrained` rebuild Ψ from the config's
    seed and `nosupport` uses no model, but all three read the directory's config and its record of the
    categories seen in training. `fsad loo --methods nosupport,untrained,...` evaluates them on it without
    meta-training. It records 0 episodes done, so `ours` and `knn` refuse it as unfinished."""
    out = Path(out)
    source = open_source(data_root, None, None)
    prepare_out(out, resume=False)
    categories, val_categories = split_categories(source, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    inputs = RunInputs(source, categories, val_categories, data_root, None, None, None)
    meta = {**model_meta(cfg, inputs), "episodes_done": 0, "history": [], "initial": True}
    save_checkpoint(out, 0, model_writers(model, cfg, meta, {"episode": 0}))
    return {"out": str(out), "episodes": 0, "categories": categories}
