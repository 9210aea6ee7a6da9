"""The dihedral group on images (flips and 90° rotations, Section 4.1): training episodes and support
augmentation at adaptation time both draw from it."""
from __future__ import annotations

import torch

DIHEDRAL_SIZE = 8  # 4 rotations × {plain, flipped}


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """One of the 8 flips/90° rotations of (..., H, W) images: index = 4·flip + rotations."""
    if index >= 4:
        images = images.flip(-1)
    return torch.rot90(images, index % 4, dims=(-2, -1))
