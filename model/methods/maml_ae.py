"""maml_ae: the paper's meta-learning baseline (Section 4.1, App. A.3) as a method. Adapting runs the
inner SGD loop of the meta-trained autoencoder (model/maml_ae.py) on the shots; anomalies are what the
adapted AE reconstructs badly.
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call

from model.ebm.energy import gaussian_blur
from model.errors import InputError
from model.maml_ae import ConvAutoencoder, adapt, check_images, check_inner
from model.methods.base import PIXEL_MAP_SIGMA, Method, ScoringOptions


@torch.no_grad()
def score(
    ae: ConvAutoencoder, params: dict[str, torch.Tensor], images: torch.Tensor, smooth_sigma: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction-error scores (B,) and maps (B, H, W) for images (B, 3, H, W) under `params`.

    map = squared error per pixel averaged over channels, optionally Gaussian-blurred (σ in pixels);
    score = mean of the unblurred map, i.e. the image's MSE (blurring is for localisation only and
    would only move the mean by border effects).
    """
    if not math.isfinite(smooth_sigma) or smooth_sigma < 0:
        raise InputError(f"maml_ae.smooth_sigma={smooth_sigma}: expected a finite value >= 0")
    check_images(images, ae.spec.depth, "query batch")
    recon = functional_call(ae, params, (images,))  # (B, 3, H, W)
    errors = (recon - images).pow(2).mean(1)  # (B, H, W)
    scores = errors.flatten(1).mean(1)  # (B,)
    maps = gaussian_blur(errors, smooth_sigma) if smooth_sigma > 0 else errors
    return scores, maps


class MamlAEScorer:
    """Scorer interface (adapt, score) around a meta-trained ConvAutoencoder."""

    def __init__(self, ae: ConvAutoencoder, inner_steps: int, inner_lr: float, smooth_sigma: float = 0.0):
        check_inner(inner_steps, inner_lr)
        if not math.isfinite(smooth_sigma) or smooth_sigma < 0:
            raise InputError(f"maml_ae.smooth_sigma={smooth_sigma}: expected a finite value >= 0")
        self.ae = ae
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.smooth_sigma = float(smooth_sigma)

    def adapt(self, support: torch.Tensor) -> dict[str, torch.Tensor]:
        """support (K, 3, H, W) -> adapted params."""
        return adapt(self.ae, support, self.inner_steps, self.inner_lr)

    def score(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> scores (B,), maps (B, H, W)."""
        return score(self.ae, params, images, self.smooth_sigma)


def build(network: ConvAutoencoder, options: ScoringOptions) -> MamlAEScorer:
    return MamlAEScorer(network, options.inner_steps, options.inner_lr, smooth_sigma=PIXEL_MAP_SIGMA)


METHOD = Method(name="maml_ae", label="MAML-AE", model="maml_ae",
                model_use="needs a model trained with --method maml_ae", baseline=False, untrained=False, build=build)
