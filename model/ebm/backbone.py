"""Feature extractors Ψ(x; θ): images (B, 3, H, W) in [0, 1] -> features (B, d, H/s, W/s).

Nothing pretrained can be downloaded here, so Ψ is a small conv net meta-trained from scratch.
Grey images reach Ψ as three equal channels (workers/data/images.py replicates them), so one network serves
grey and RGB categories alike; a 1-channel batch is also accepted and expanded here.

`ConvBackbone` layout (width w, depth n, output stride s = 2**k, k <= n):
    stem: conv3x3(3 -> w), SiLU
    n blocks: conv3x3 (stride 2 for the first k blocks, else 1) -> GroupNorm -> SiLU, width doubling at
              each stride-2 block up to `max_width`
    head: conv1x1 -> out_dim (the feature dimension d the sparse-coding layer sees)
With `hypercolumn`, the head reads every block's output instead of the last one only: each block's SiLU
output is average-pooled to the output grid, scaled to unit ℓ2 norm per position (so a 64-channel early
block weighs as much as a 128-channel late one) and concatenated. Early blocks keep fine texture and
intensity that the deeper blocks of a small net (and most of all an untrained one) blur away; the head's
1×1 conv then projects the column back to out_dim, so the sparse-coding layer's cost does not grow.
Measured on the validation categories with the untrained Ψ (docs/benchmarks.md, "Hypercolumn").
SiLU (Swish) rather than ReLU because Langevin dynamics and the anomaly map differentiate E w.r.t. the
input, and smooth activations give non-zero, smooth input gradients (the paper cites [15] for this).
GroupNorm rather than BatchNorm: support and query images pass separately and must not share batch
statistics. `receptive_field()` reports the receptive field in input pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.errors import InputError


@dataclass(frozen=True)
class BackboneSpec:
    # No defaults: the config schema (orchestrator/config/schema.py) holds them.
    name: str  # a key of BACKBONES
    width: int  # channels after the stem
    depth: int  # conv blocks after the stem
    stride: int  # output stride (power of two, <= 2**depth)
    out_dim: int  # feature dimension d
    max_width: int  # channel cap of the deeper blocks
    input_norm: str  # a key of INPUT_NORMS: what Ψ removes from each image before its first layer
    hypercolumn: bool  # the head reads every block's output (module doc), not only the last block's


INPUT_NORMS = ("none", "mean", "standardize")


def normalize_input(images: torch.Tensor, mode: str) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> (B, 3, H, W) as Ψ's first layer sees them.

    none: centred to [-1, 1]. mean: each image's per-channel mean removed (exposure offsets between a
    product line's shots and its later images cancel). standardize: also divided by the per-channel std.
    """
    if mode == "none":
        return images * 2.0 - 1.0
    mean = images.mean(dim=(-2, -1), keepdim=True)  # (B, 3, 1, 1)
    if mode == "mean":
        return (images - mean) * 2.0
    std = images.std(dim=(-2, -1), keepdim=True)  # (B, 3, 1, 1)
    return (images - mean) / (std + 0.05) * 0.5  # the floor keeps flat images from exploding


def check_precomputed(features: torch.Tensor, images: torch.Tensor) -> None:
    """Features a caller computed once (Ψ(images), (B, d, h', w')) must belong to the B images given."""
    if features.shape[0] != images.shape[0]:
        raise InputError(f"features for {features.shape[0]} images, {images.shape[0]} images given")


def _group_count(channels: int) -> int:
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


class ConvBackbone(nn.Module):
    def __init__(self, spec: BackboneSpec):
        super().__init__()
        if spec.stride < 1 or spec.stride & (spec.stride - 1):
            raise InputError(f"model.backbone.stride={spec.stride}: expected a power of two >= 1")
        n_down = int(math.log2(spec.stride))
        if n_down > spec.depth:
            raise InputError(
                f"model.backbone.stride={spec.stride} needs depth >= {n_down}, got depth={spec.depth}"
            )
        if spec.width < 1 or spec.out_dim < 1 or spec.depth < 1:
            raise InputError(f"model.backbone width/depth/out_dim must be >= 1, got {spec}")
        if spec.input_norm not in INPUT_NORMS:
            raise InputError(f"model.backbone.input_norm={spec.input_norm!r}: expected one of {', '.join(INPUT_NORMS)}")
        self.spec = spec
        layers: list[nn.Module] = [nn.Conv2d(3, spec.width, 3, padding=1), nn.SiLU()]
        self._kernel_strides = [(3, 1)]
        self._block_outputs: list[int] = []  # indices in `features` of each block's SiLU
        channels = spec.width
        column = 0  # channels of the hypercolumn
        for block in range(spec.depth):
            stride = 2 if block < n_down else 1
            out_channels = min(channels * 2, spec.max_width) if stride == 2 else channels
            layers += [
                nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1),
                nn.GroupNorm(_group_count(out_channels), out_channels),
                nn.SiLU(),
            ]
            self._kernel_strides.append((3, stride))
            self._block_outputs.append(len(layers) - 1)
            channels = out_channels
            column += out_channels
        layers.append(nn.Conv2d(column if spec.hypercolumn else channels, spec.out_dim, 1))
        self._kernel_strides.append((1, 1))
        self.features = nn.Sequential(*layers)

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    @property
    def stride(self) -> int:
        return self.spec.stride

    def head(self) -> nn.Module:
        """The last 1×1 layer (train.trainable=head learns only this)."""
        return self.features[-1]

    def receptive_field(self) -> int:
        """Receptive field of one output feature, in input pixels (standard recursion r += (k-1)*j)."""
        field, jump = 1, 1
        for kernel, stride in self._kernel_strides:
            field += (kernel - 1) * jump
            jump *= stride
        return field

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1], C in {1, 3} -> features (B, d, H/s, W/s)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise InputError(
                f"backbone input of shape {tuple(images.shape)}: expected (B, 1 or 3, H, W)"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> (B, 3, H, W), R = G = B
        x = normalize_input(images, self.spec.input_norm)
        if not self.spec.hypercolumn:
            return self.features(x)
        return self.head()(self.hypercolumn(x))  # (B, Σ c_i, h', w') -> (B, d, h', w')

    def hypercolumn(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (B, 3, H, W) -> the column the hypercolumn head reads (B, Σ c_i, h', w'): every
        block's SiLU output average-pooled to the output grid, unit ℓ2 norm per position (whatever `spec.hypercolumn`)."""
        levels = []
        for index, layer in enumerate(self.features[:-1]):  # every layer but the head
            x = layer(x)
            if index in self._block_outputs:
                levels.append(x)
        grid = levels[-1].shape[-2:]  # (h', w'): the output grid
        return torch.cat(
            [F.normalize(F.adaptive_avg_pool2d(level, grid), dim=1, eps=1e-6) for level in levels], dim=1
        )  # n blocks of (B, c_i, h_i, w_i) -> (B, Σ c_i, h', w')


BACKBONES: dict[str, type[nn.Module]] = {"conv": ConvBackbone}


def build_backbone(spec: BackboneSpec, weights: str | Path | None = None) -> nn.Module:
    """Build Ψ from its spec; optionally load a state dict a user has locally (never unpickles)."""
    if spec.name not in BACKBONES:
        raise InputError(f"model.backbone.name={spec.name!r}: expected one of {sorted(BACKBONES)}")
    net = BACKBONES[spec.name](spec)
    if weights:
        net.load_state_dict(load_state_dict_file(weights))
    return net


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure is bad input
        raise InputError(f"weights file {path} could not be read: {type(exc).__name__}") from exc
    if not isinstance(state, dict):
        raise InputError(f"weights file {path}: expected a state dict")
    return state
