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


CORRUPTIONS = ("noise", "cutpaste", "blend")


def _square(side: int, H: int, W: int, generator) -> tuple[int, int]:
    top = int(torch.randint(0, H - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, W - side + 1, (1,), generator=generator))
    return top, left


def corrupt(
    images: torch.Tensor,
    kinds: tuple[str, ...],
    min_frac: float,
    max_frac: float,
    generator: torch.Generator | None = None,
    donors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain starts for learning by inpainting: images (B, C, H, W) -> (corrupted, mask (B, H, W) bool).

    Every image draws one kind from `kinds` and one square region of side f·min(H, W), f ~ U[min, max]:
      noise     U[0, 1) noise in the square (the paper's start);
      cutpaste  the same-size square cut from a random place of a donor image (another category's normal
                image when `donors` (N, C, H, W) is given, else another image of the batch): a real but
                foreign structure;
      blend     a donor image blended in through a smooth random mask (bilinearly upsampled 4×4 noise) inside
                the square: a foreign texture with soft borders, no square edge to give it away.
    """
    if not (0 < min_frac <= max_frac <= 1):
        raise InputError(f"inpaint patch fraction [{min_frac}, {max_frac}]: expected 0 < min <= max <= 1")
    bad = [k for k in kinds if k not in CORRUPTIONS]
    if not kinds or bad:
        raise InputError(f"inpaint.kinds={list(kinds)}: expected a non-empty list of {', '.join(CORRUPTIONS)}")
    B, C, H, W = images.shape
    if donors is not None and donors.shape[-2:] != images.shape[-2:]:
        # a larger donor would only ever give its top-left H × W corner: cut donors to the images' size first
        raise ValueError(f"corrupt: donors of {tuple(donors.shape[-2:])} px for images of {(H, W)} px; "
                         "expected donors of the images' own size")
    pool = images if donors is None else donors.to(images)
    corrupted = images.clone()
    mask = torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
    for b in range(B):
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
        frac = min_frac + (max_frac - min_frac) * float(torch.rand(1, generator=generator))
        side = max(1, int(round(frac * min(H, W))))
        top, left = _square(side, H, W, generator)
        region = (slice(top, top + side), slice(left, left + side))
        if kind == "noise":
            corrupted[b, :, region[0], region[1]] = torch.rand(C, side, side, generator=generator).to(images)
            mask[b, region[0], region[1]] = True
            continue
        donor = pool[int(torch.randint(pool.shape[0], (1,), generator=generator))]  # (C, H, W)
        if kind == "cutpaste":
            src_top, src_left = _square(side, H, W, generator)
            corrupted[b, :, region[0], region[1]] = donor[:, src_top : src_top + side, src_left : src_left + side]
            mask[b, region[0], region[1]] = True
        else:  # blend
            coarse = torch.rand(1, 1, 4, 4, generator=generator).to(images)
            alpha = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear",
                                                    align_corners=True)[0, 0]  # (side, side)
            alpha = torch.sigmoid((alpha - 0.5) * 12.0)  # soft blob edges, values near 0 or 1
            window = corrupted[b, :, region[0], region[1]]  # (C, side, side)
            foreign = donor[:, region[0], region[1]]  # (C, side, side)
            corrupted[b, :, region[0], region[1]] = (1 - alpha) * window + alpha * foreign
            mask[b, region[0], region[1]] = alpha > 0.5
    return corrupted, mask
