"""Model-side specs built by keyword from the config schema: the one bridge from Config to model/.

model/ cannot import orchestrator/, so the builders live here. Constructing a spec runs its invariant
checks once (the spec's __post_init__); nothing re-checks them per forward pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from model.ebm.backbone import BackboneSpec
from model.ebm.energy import SparseSpec
from model.maml_ae import AESpec

if TYPE_CHECKING:  # the schema imports the search space, which builds specs: hints only, no import cycle
    from orchestrator.config.schema import BackboneConfig, Config, ModelConfig


def backbone_spec(backbone: "BackboneConfig") -> BackboneSpec:
    return BackboneSpec(name=backbone.name, width=backbone.width, depth=backbone.depth, stride=backbone.stride,
                        out_dim=backbone.out_dim, max_width=backbone.max_width,
                        input_norm=backbone.input_norm, hypercolumn=backbone.hypercolumn)


def sparse_spec(model: "ModelConfig") -> SparseSpec:
    return SparseSpec(
        lam_max=model.lam_max, lam_star=model.lam_star, istc_steps=model.istc_steps, shrink=model.shrink,
        tau=model.tau, receptive_field=model.receptive_field, normalize=model.normalize, center=model.center,
        solver=model.solver, max_steps=model.max_steps, tol=model.tol, top_k_atoms=model.top_k_atoms,
        image_score=model.image_score, top_frac=model.top_frac, image_norm=model.image_norm,
        exposure=model.exposure, whiten=model.whiten, whiten_shrink=model.whiten_shrink,
    )


def autoencoder_spec(cfg: "Config") -> AESpec:
    """MAML-AE's autoencoder: as many stride-2 blocks as the backbone's stride has (1 to 3)."""
    depth = min(3, cfg.model.backbone.stride.bit_length() - 1) or 1
    return AESpec(width=cfg.maml.width, latent=cfg.maml.latent, depth=depth)
