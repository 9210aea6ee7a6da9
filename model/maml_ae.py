"""MAML-AE: the paper's meta-learning baseline (Section 4.1, App. A.3).

A convolutional autoencoder whose initial weights are meta-trained with model-agnostic meta-learning
(Finn et al. [18]) so that a few plain SGD steps on the K support images of a new category adapt it to
reconstruct that category; anomalies are what the adapted AE reconstructs badly. We use first-order
MAML (FOMAML): the outer gradient is the query-loss gradient at the adapted weights, applied to the
initial weights, without differentiating through the inner loop (no second-order terms, memory flat
in the number of inner steps).

Scoring (the reconstruction error after adaptation) is the method's side: model/methods/maml_ae.py.

The inner loop is functional (`torch.func.functional_call` on a name -> tensor dict), so adapting
never touches the module's own parameters and one AE serves any number of tasks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from model.errors import InputError


@dataclass(frozen=True)
class AESpec:
    # No defaults: the config schema (maml.*) holds them.
    width: int  # channels of the first down block; doubled per block
    latent: int  # bottleneck channels
    depth: int  # number of stride-2 down blocks (and up blocks)


def _group_count(channels: int) -> int:
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


def _norm_act(channels: int) -> list[nn.Module]:
    # GroupNorm, not BatchNorm: support and query batches must not share statistics (as in Ψ).
    return [nn.GroupNorm(_group_count(channels), channels), nn.SiLU()]


class ConvAutoencoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> reconstruction (B, 3, H, W) in (0, 1); H, W divisible by 2**depth.

    encoder: depth × [conv3x3 stride 2 -> GroupNorm -> SiLU] (widths w, 2w, 4w, ...), conv1x1 -> latent
    decoder: conv1x1 latent -> top width, GroupNorm, SiLU, then depth × [ConvTranspose 4x4 stride 2 ->
             GroupNorm -> SiLU] mirroring the widths back to w, then conv3x3 -> 3 and a sigmoid.
    """

    def __init__(self, spec: AESpec):
        super().__init__()
        if spec.width < 1 or spec.latent < 1 or spec.depth < 1:
            raise InputError(f"maml_ae width/latent/depth must be >= 1, got {spec}")
        self.spec = spec
        widths = [spec.width * 2**i for i in range(spec.depth)]
        enc: list[nn.Module] = []
        channels = 3
        for out_channels in widths:
            enc += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), *_norm_act(out_channels)]
            channels = out_channels
        enc.append(nn.Conv2d(channels, spec.latent, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(spec.latent, channels, 1), *_norm_act(channels)]
        for out_channels in [*reversed(widths[:-1]), spec.width]:
            # kernel 4, stride 2, padding 1 doubles the size exactly: (n−1)·2 − 2 + 4 = 2n
            dec += [nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1), *_norm_act(out_channels)]
            channels = out_channels
        dec += [nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.spec.depth, "autoencoder input")
        latent = self.encoder(images * 2.0 - 1.0)  # (B, latent, H/2^depth, W/2^depth), inputs centred
        return self.decoder(latent)  # (B, 3, H, W)


def check_images(images: torch.Tensor, depth: int, what: str) -> None:
    """Raise InputError unless images is (B >= 1, 3, H, W) with H, W divisible by 2**depth."""
    factor = 2**depth
    if images.dim() != 4 or images.shape[0] < 1 or images.shape[1] != 3:
        raise InputError(f"{what} of shape {tuple(images.shape)}: expected (B >= 1, 3, H, W)")
    if images.shape[2] % factor or images.shape[3] % factor or images.shape[2] < factor or images.shape[3] < factor:
        raise InputError(
            f"{what} of size {images.shape[2]}x{images.shape[3]}: expected H, W divisible by 2**depth = {factor}"
        )


def check_inner(steps: int, lr: float) -> None:
    if int(steps) != steps or steps < 0:
        raise InputError(f"maml_ae.inner_steps={steps}: expected an integer >= 0")
    if not math.isfinite(lr) or lr <= 0:
        raise InputError(f"maml_ae.inner_lr={lr}: expected a finite value > 0")


def reconstruction_loss(ae: ConvAutoencoder, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error over all pixels and images, with weights `params`: ()."""
    return F.mse_loss(functional_call(ae, params, (images,)), images)


def _adapt(
    ae: ConvAutoencoder, support: torch.Tensor, steps: int, lr: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Inner loop; returns the adapted (detached) params and the support loss before adaptation."""
    check_inner(steps, lr)
    check_images(support, ae.spec.depth, "support batch")
    params = {name: p.detach().clone() for name, p in ae.named_parameters()}
    first_loss = math.nan
    with torch.enable_grad():  # adaptation needs gradients even when the caller evaluates under no_grad
        for step in range(steps):
            params = {name: p.requires_grad_(True) for name, p in params.items()}
            loss = reconstruction_loss(ae, params, support)
            grads = torch.autograd.grad(loss, list(params.values()))
            # first order: each step starts from detached weights, so no graph through the inner loop
            params = {name: (p - lr * g).detach() for (name, p), g in zip(params.items(), grads)}
            if step == 0:
                first_loss = loss.item()
    if steps == 0:
        with torch.no_grad():
            first_loss = reconstruction_loss(ae, params, support).item()
    return params, first_loss


def adapt(ae: ConvAutoencoder, support: torch.Tensor, steps: int, lr: float) -> dict[str, torch.Tensor]:
    """`steps` plain SGD steps (step size `lr`) on the mean MSE of the support reconstructions.

    support (K, 3, H, W). Returns adapted params {name: tensor} (detached copies; steps = 0 gives a copy
    of ae's own weights). ae itself is not modified and gets no .grad.
    """
    params, _ = _adapt(ae, support, steps, lr)
    return params


def meta_train_step(
    ae: ConvAutoencoder,
    optimizer: torch.optim.Optimizer,
    support: torch.Tensor,
    queries: torch.Tensor,
    inner_steps: int,
    inner_lr: float,
) -> dict[str, float]:
    """One first-order MAML step on one task.

    support (K, 3, H, W) and queries (M, 3, H, W) are normal images of one category (queries are the
    reconstruction target of the outer loss, so they must not contain anomalies). The outer gradient
    ∇_φ' L_query(φ') at the adapted weights φ' is written into ae's .grad and `optimizer` steps.
    Returns {"loss": query loss at φ', "support_loss": support loss at ae's weights before adaptation}.
    """
    check_images(queries, ae.spec.depth, "query batch")
    adapted, support_loss = _adapt(ae, support, inner_steps, inner_lr)
    with torch.enable_grad():
        adapted = {name: p.requires_grad_(True) for name, p in adapted.items()}
        loss = reconstruction_loss(ae, adapted, queries)
        grads = torch.autograd.grad(loss, list(adapted.values()))
    optimizer.zero_grad(set_to_none=True)
    named = dict(ae.named_parameters())
    for name, grad in zip(adapted, grads):
        named[name].grad = grad.detach()  # FOMAML: dL/dφ ≈ dL/dφ' (inner-loop Jacobian taken as I)
    optimizer.step()
    return {"loss": loss.item(), "support_loss": support_loss}
