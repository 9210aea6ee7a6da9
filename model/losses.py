"""Training losses (Eqs. 10-12) as pure functions of energies and images."""
from __future__ import annotations

import torch


def contrastive_divergence(pos_energy: torch.Tensor, neg_energy: torch.Tensor) -> torch.Tensor:
    """Eq. 10: (1/M) Σ_m [E(q_m) − E(LD(q̂_m))]; pos_energy, neg_energy (M,) -> ()."""
    return (pos_energy - neg_energy).mean()


def reconstruction_loss(negatives: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Eq. 11: (1/M) Σ_m MSE(LD(q̂_m), q_m); images (M, C, H, W) -> ()."""
    return (negatives - queries).pow(2).flatten(1).mean(1).mean()


def energy_regularizer(pos_energy: torch.Tensor, neg_energy: torch.Tensor) -> torch.Tensor:
    """Du & Mordatch (2019) energy-magnitude penalty: mean(E⁺²) + mean(E⁻²) -> ()."""
    return pos_energy.pow(2).mean() + neg_energy.pow(2).mean()


def total_loss(
    rec: torch.Tensor,
    cd: torch.Tensor,
    eta_rec: float,
    eta_cd: float,
    reg: torch.Tensor | None = None,
    reg_weight: float = 0.0,
) -> torch.Tensor:
    """Eq. 12: η₀·L_rec + η₁·L_cd (+ reg_weight·regulariser, 0 by default)."""
    loss = eta_rec * rec + eta_cd * cd
    if reg is not None and reg_weight:
        loss = loss + reg_weight * reg
    return loss
