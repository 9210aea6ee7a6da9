"""Langevin dynamics (Eq. 4): x̃ʲ = x̃ʲ⁻¹ − (β/2)∇ₓE(x̃ʲ⁻¹) + ω,  ω ~ N(0, s²·β·I), j = 1..J.

The paper's noise is N(0, βI) (s = 1); `noise_scale` = s is configurable because with a bounded energy the
drift (β/2)∇E is small next to √β noise, and most EBM practice decouples the two. Pixels are clamped to
`pixel_range` after every step. With `create_graph=True` the chain stays differentiable w.r.t. θ, so
L_rec (Eq. 11) trains the energy to inpaint; with False every step is detached.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from model.errors import InputError


def validate_langevin(steps: int, step_size: float, noise_scale: float) -> None:
    if not isinstance(steps, (int, float)) or not math.isfinite(steps) or int(steps) != steps or steps < 0:
        raise InputError(f"langevin.steps={steps}: expected an integer J >= 0")
    if not math.isfinite(step_size) or step_size <= 0:
        raise InputError(f"langevin.step_size={step_size}: expected a finite β > 0")
    if not math.isfinite(noise_scale) or noise_scale < 0:
        raise InputError(f"langevin.noise_scale={noise_scale}: expected a finite value >= 0")


def langevin(
    energy_fn: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    steps: int,
    step_size: float,
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    pixel_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Run J steps of Eq. 4 from x0 (B, C, H, W). energy_fn maps (B, C, H, W) -> (B,) energies.

    Each image's energy depends only on that image, so ∇ of the summed energy is every image's own ∇.
    """
    validate_langevin(steps, step_size, noise_scale)
    x = x0.detach().clone().requires_grad_(True)
    noise_std = noise_scale * math.sqrt(step_size)
    for _ in range(steps):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy_fn(x).sum(), x, create_graph=create_graph)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if noise_std > 0 else 0.0
        x = x - 0.5 * step_size * grad + noise_std * noise
        x = x.clamp(*pixel_range)
        if not create_graph:
            x = x.detach()
    return x if create_graph else x.detach()
