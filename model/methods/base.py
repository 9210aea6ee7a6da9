"""What every evaluation method is: a Scorer (adapt to K shots, then score images) and the Method
record the registry (model/methods/__init__.py) holds for it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn


class Scorer(Protocol):
    """adapt(support) -> state; score(images, state) -> (scores (B,), maps (B, H, W)).

    A scorer may also have `features(images)`: the part of score() that depends on the images alone (Ψ's
    features), or None where it does not exist; its score() then takes them as `features=` and gives the
    same result. Evaluation computes them once for a test set scored under several support draws.

    Scorers of unit-norm feature volumes may also have `unit_volume_field()`: the receptive field l of the
    volumes they compare (None where they compare others). One that codes them over its top-k atoms has
    `score_and_atoms(images, state, features)` -> (scores, maps, candidates (B, h'w', SHARED_CANDIDATES)); one
    that searches a memory bank of them (kNN) takes those as `score(..., candidates=)`, for the same Ψ and shots,
    and skips the search (orchestrator.evaluation.evaluate, ScoreCache)."""

    def adapt(self, support: torch.Tensor) -> Any: ...

    def score(self, images: torch.Tensor, state: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


# Gaussian σ (pixels) of the pixel-level baselines' maps: MAML-AE's reconstruction error and the support-free
# image-gradient map, which are computed per pixel rather than upsampled from a 4-px feature grid. Fixed at the
# value they were always scored with; model.map_smooth_sigma (ScoringOptions.smooth_sigma) was chosen for the
# feature-grid maps of ours and kNN (docs/benchmarks.md, "Map smoothing") and must not weaken these rivals.
PIXEL_MAP_SIGMA = 2.0


# Nearest-atom candidates per feature position that a scorer coding unit volumes over its top-k atoms (ours) keeps
# for kNN on the same Ψ and shots: kNN's nearest row is the most similar atom, so the first candidate already is
# it up to float rounding; a few more make the exact-distance pick among them robust to ties.
SHARED_CANDIDATES = 4


@dataclass(frozen=True)
class ScoringOptions:
    """The settings scorers read (filled from model.*, maml.* and eval.* of a model's config)."""

    smooth_sigma: float = 0.0  # Gaussian σ (pixels) on the feature-grid maps (ours, kNN); 0 = off
    augment_support: bool = False  # ours: add the 8 dihedral copies of every shot to the dictionary
    anomaly_map: str = "gradient"  # ours: gradient | energy
    top_frac: float = 0.01  # nosupport: image score = mean of the top fraction of the map
    inner_steps: int = 5  # maml_ae: SGD steps on the support
    inner_lr: float = 0.05  # maml_ae: their step size


# network (the trained model, or the untrained one when Method.untrained), options -> Scorer
ScorerFactory = Callable[[nn.Module, ScoringOptions], Scorer]


@dataclass(frozen=True)
class Method:
    """One evaluation method, as registered."""

    name: str  # what --method / pipeline.methods call it
    label: str  # how tables and figures show it
    model: str  # the kind of trained model directory it reads: "ours" or "maml_ae"
    model_use: str  # why it needs that model, for the error when the directory holds another kind
    baseline: bool  # needs no training: its numbers do not depend on trained weights
    untrained: bool  # scores with the freshly initialised network instead of the trained one
    build: ScorerFactory
