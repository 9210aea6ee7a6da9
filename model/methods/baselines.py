"""Baselines with no learning and no support set: what a quality number must beat to be evidence.

untrained = ours with a freshly initialised Ψ, knn_untrained = kNN on that Ψ (the caller builds the
network from the model's own config and passes it, as Method.untrained says), nosupport = the map below.

`NoSupportScorer` draws a map from the image alone: the blurred magnitude of its grey-level gradient
(edges, specks and scratches light up whatever the category). Its image score is the mean of the top
`top_frac` map values. It ignores the support set entirely, so any method whose maps do not beat it
has not shown that it uses the K normal shots. Every quality table shows these beside the learnt methods.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ebm.energy import gaussian_blur, top_mean
from model.errors import InputError
from model.methods import knn, ours
from model.methods.base import PIXEL_MAP_SIGMA, Method, ScoringOptions


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) in [0, 1] -> |∂x| + |∂y| of the grey image (B, H, W), forward differences."""
    grey = images.mean(1)  # (B, H, W)
    dx = F.pad((grey[:, :, 1:] - grey[:, :, :-1]).abs(), (0, 1))  # (B, H, W), last column 0
    dy = F.pad((grey[:, 1:, :] - grey[:, :-1, :]).abs(), (0, 0, 0, 1))  # (B, H, W), last row 0
    return dx + dy


class NoSupportScorer:
    """The support-free map baseline: adapt() keeps nothing, score() looks at the image only."""

    uses_support = False  # evaluation may score a test set once for all support draws

    def __init__(self, smooth_sigma: float = PIXEL_MAP_SIGMA, top_frac: float = 0.01):
        if not math.isfinite(smooth_sigma) or smooth_sigma < 0:
            raise InputError(f"nosupport smooth_sigma={smooth_sigma}: expected a finite value >= 0")
        if not (math.isfinite(top_frac) and 0 < top_frac <= 1):
            raise InputError(f"nosupport top_frac={top_frac}: expected a fraction in (0, 1]")
        self.smooth_sigma, self.top_frac = float(smooth_sigma), float(top_frac)

    def adapt(self, support: torch.Tensor) -> None:
        return None

    @torch.no_grad()
    def score(self, images: torch.Tensor, state: None) -> tuple[torch.Tensor, torch.Tensor]:
        maps = gradient_magnitude(images)  # (B, H, W)
        if self.smooth_sigma > 0:
            maps = gaussian_blur(maps, self.smooth_sigma)
        return top_mean(maps, self.top_frac), maps


def build_nosupport(network: nn.Module, options: ScoringOptions) -> NoSupportScorer:
    return NoSupportScorer(PIXEL_MAP_SIGMA, options.top_frac)  # the network is not used


# Baselines read the config of an `ours` model, never its weights.
_READS_CONFIG = "reads the config of an `ours` model"
METHODS = (
    Method(name="untrained", label="ours, untrained Ψ", model="ours", model_use=_READS_CONFIG, baseline=True,
           untrained=True, build=ours.build),
    Method(name="knn_untrained", label="kNN, untrained Ψ", model="ours", model_use=_READS_CONFIG, baseline=True,
           untrained=True, build=knn.build),
    Method(name="nosupport", label="no support (image gradient)", model="ours", model_use=_READS_CONFIG,
           baseline=True, untrained=False, build=build_nosupport),
)
