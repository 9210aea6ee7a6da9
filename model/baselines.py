"""Baselines with no learning and no support set: what a quality number must beat to be evidence.

`NoSupportScorer` draws a map from the image alone: the blurred magnitude of its grey-level gradient
(edges, specks and scratches light up whatever the category). Its image score is the mean of the top
`top_frac` map values. It ignores the support set entirely, so any method whose maps do not beat it
has not shown that it uses the K normal shots. (The untrained baselines, the same model and kNN with a
freshly initialised Ψ, are built by the caller from the model's own config.)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.energy import gaussian_blur, top_mean
from model.errors import InputError


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) in [0, 1] -> |∂x| + |∂y| of the grey image (B, H, W), forward differences."""
    grey = images.mean(1)  # (B, H, W)
    dx = F.pad((grey[:, :, 1:] - grey[:, :, :-1]).abs(), (0, 1))  # (B, H, W), last column 0
    dy = F.pad((grey[:, 1:, :] - grey[:, :-1, :]).abs(), (0, 0, 0, 1))  # (B, H, W), last row 0
    return dx + dy


class NoSupportScorer:
    """The support-free map baseline: adapt() keeps nothing, score() looks at the image only."""

    def __init__(self, smooth_sigma: float = 2.0, top_frac: float = 0.01):
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
