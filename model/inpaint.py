"""Learning by inpainting (Section 3.3): put a uniform-noise patch at a random place."""
from __future__ import annotations

import torch

from model.errors import InputError


def noise_patch(
    images: torch.Tensor,
    min_frac: float,
    max_frac: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, C, H, W) in [0, 1] -> (corrupted (B, C, H, W), patch mask (B, H, W) bool).

    Every image gets one square patch of side round(f·min(H, W)), f ~ U[min_frac, max_frac], at a
    uniformly random position fully inside the image, filled with U[0, 1) noise per pixel and channel.
    """
    if not (0 < min_frac <= max_frac <= 1):
        raise InputError(f"inpaint patch fraction [{min_frac}, {max_frac}]: expected 0 < min <= max <= 1")
    B, C, H, W = images.shape
    corrupted = images.clone()
    mask = torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
    fracs = min_frac + (max_frac - min_frac) * torch.rand(B, generator=generator)
    for b in range(B):
        side = max(1, int(round(float(fracs[b]) * min(H, W))))
        top = int(torch.randint(0, H - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, W - side + 1, (1,), generator=generator))
        noise = torch.rand(C, side, side, generator=generator).to(images)
        corrupted[b, :, top : top + side, left : left + side] = noise
        mask[b, top : top + side, left : left + side] = True
    return corrupted, mask
