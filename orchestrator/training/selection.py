"""Checkpoint selection on validation categories (never the target).

Meta-training can make Ψ worse for unseen categories (measured: features collapse onto a few directions).
The guard is the usual one: set some training categories aside as validation tasks, score them every
`train.val_every` episodes exactly as a target is scored (K shots, the energy map), and keep the weights
that score best. Episode 0 (the initial Ψ) is a candidate too, so selection never returns a model worse
on validation than the one training started from; metadata records which episode won.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from model import metrics
from model.ebm.energy import AdaptiveEBM
from model.errors import InputError
from model.methods import MAML_AE
from model.methods.ours import OursScorer
from orchestrator.config import Config
from orchestrator.evaluation.evaluate import load_test_set, score_batches, scoring_options

BEST = "best.safetensors"  # the best weights so far, beside the checkpoint (resume continues the selection)


@dataclass
class ValidationTask:
    category: str
    support: torch.Tensor  # (K, 3, S, S)
    images: torch.Tensor  # (N, 3, S, S), normal and anomalous test images
    labels: torch.Tensor  # (N,)
    masks: torch.Tensor | None  # (N, S, S)


def validation_categories(cfg: Config, available: list[str]) -> list[str]:
    """cfg.train.val_categories minus the held-out ones (a target is never used for selection)."""
    chosen = [c for c in cfg.train.val_categories if c not in set(cfg.data.exclude)]
    for name in chosen:
        if name not in available:
            raise InputError(f"train.val_categories: {name!r} not found; available: {', '.join(available)}")
    return chosen


def _balanced(labels: torch.Tensor, limit: int, generator: torch.Generator) -> list[int]:
    """Up to limit/2 normal and limit/2 anomalous test indices, drawn reproducibly."""
    out = []
    for value in (0, 1):
        index = torch.nonzero(labels == value).flatten()
        pick = index[torch.randperm(index.numel(), generator=generator)[: max(1, limit // 2)]]
        out += pick.tolist()
    return sorted(out)


def load_tasks(source, categories: list[str], cfg: Config) -> list[ValidationTask]:
    g = torch.Generator().manual_seed(cfg.train.seed)
    tasks = []
    for category in categories:
        test = load_test_set(source, category, cfg.data.image_size)  # refuses a one-label test set
        keep = _balanced(test.labels, cfg.train.val_images, g)
        shots = torch.randperm(test.support_pool.shape[0], generator=g)[: cfg.eval.shots]
        tasks.append(ValidationTask(category, test.support_pool[shots], test.images[keep], test.labels[keep],
                                    None if test.masks is None else test.masks[keep]))
    return tasks


def ours_energy_scorer(model: AdaptiveEBM) -> OursScorer:
    """Ours with the unsmoothed energy map: what the selector scores an `ours` model with."""
    return OursScorer(model, smooth_sigma=0.0, map_mode="energy")


@dataclass
class CheckpointSelector:
    tasks: list[ValidationTask]
    device: torch.device
    metric: str = "pixel"  # train.val_metric: pixel | image | mean, per task (no masks: its image AUROC)
    best_score: float = float("-inf")
    best_episode: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    # model -> scorer: the variant's own (validation_scorer: MAML-AE adapts by its inner loop)
    scorer_for: Callable[[torch.nn.Module], Any] = ours_energy_scorer

    @torch.no_grad()
    def score(self, model: AdaptiveEBM) -> dict[str, float]:
        """Mean over tasks of image AUROC and (where masks exist) pixel AUROC of the energy map. val_score
        is the mean over tasks of the number `metric` names; with "pixel" a task without masks (ELPV, say)
        counts its image AUROC, so a category with image labels only still takes part."""
        was_training = model.training
        model.eval()
        image, pixel, per_task = [], [], []
        scorer = self.scorer_for(model)  # scored as a target would be
        for task in self.tasks:
            dictionary = scorer.adapt(task.support.to(self.device))
            scores, maps = score_batches(scorer, dictionary, task.images, 16, self.device)
            image.append(metrics.image_auroc(scores, task.labels))
            task_pixel = None
            if task.masks is not None and task.masks.any():
                task_pixel = metrics.pixel_auroc(maps, task.masks)
                pixel.append(task_pixel)
            own_pixel = image[-1] if task_pixel is None else task_pixel
            per_task.append({"pixel": own_pixel, "image": image[-1], "mean": (image[-1] + own_pixel) / 2}[self.metric])
        model.train(was_training)
        out = {"val_image_auroc": sum(image) / len(image)}
        if pixel:
            out["val_pixel_auroc"] = sum(pixel) / len(pixel)
        out["val_score"] = sum(per_task) / len(per_task)
        if len(self.tasks) > 1:  # each category's own number too: does training help all of them?
            out.update({f"val_score/{t.category}": v for t, v in zip(self.tasks, per_task)})
        return out

    def consider(self, episode: int, model: AdaptiveEBM) -> dict[str, float]:
        """Score the current weights (after `episode` episodes); keep a copy when they are the best so far."""
        result = self.score(model)
        self.history.append({"episode": episode, **{k: round(v, 6) for k, v in result.items()}})
        if result["val_score"] > self.best_score:
            self.best_score, self.best_episode = result["val_score"], episode
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return result


def validation_scorer(cfg: Config) -> Callable[[torch.nn.Module], Any]:
    """How the selector scores the model it selects: as its evaluation will. MAML-AE by its own inner loop
    and reconstruction-error maps with the pixel-level baselines' blur (PIXEL_MAP_SIGMA, whatever
    model.map_smooth_sigma says); ours by `ours_energy_scorer` (unsmoothed energy maps)."""
    if cfg.train.method != MAML_AE.model:
        return ours_energy_scorer
    return lambda model: MAML_AE.build(model, scoring_options(cfg))


def selection_record(selector: CheckpointSelector) -> dict:
    """The selection so far, for meta.json."""
    return {"best_episode": selector.best_episode, "best_val_score": selector.best_score, "history": selector.history}


def best_writer(selector: CheckpointSelector):
    """A checkpoint writer (path -> None) for the best weights so far."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in selector.best_state.items()}
    return lambda path: save_file(tensors, str(path))


def restore_selection(selector: CheckpointSelector, record: dict | None, path: Path) -> None:
    """Continue a selection after --resume from its meta.json record and best-weights file."""
    if not record or not path.is_file():
        return
    from safetensors.torch import load_file

    selector.best_state = load_file(str(path))
    selector.best_episode, selector.best_score = record["best_episode"], record["best_val_score"]
    selector.history = list(record.get("history", []))
