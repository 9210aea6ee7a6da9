"""Named experiment profiles and ablations: typed {dotted config key: value} changes, never "k=v" text.

`describe` renders a change set as the `key=value` words logs, metrics.json and the report show.
"""
from __future__ import annotations

from typing import Any

from model.methods import METHODS

# Named budgets for `experiments.profile`: overrides applied on top of the file, under command-line --set.
# quick is the defaults themselves; full is for a GPU or a cluster (docs/results.md gives its cost).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {},
    "full": {
        # stride 2 lifted every validation category at both levels and costs 12× the scoring on 2 CPU cores
        # (docs/benchmarks.md, "Resolution of the feature grid"): a GPU's budget, not the quick profile's
        "model.backbone.stride": 2,
        "train.episodes": 1000,
        "train.crop": 0,  # whole images, the paper's protocol: the crop buys CPU time a GPU does not need
        "pipeline.shots": [1, 2, 4, 8, 10],
        "pipeline.sweep_methods": list(METHODS),
        "eval.draws": 5,
        "pipeline.max_test_images": 0,
        "experiments.ablation_targets": ["juice_bottle", "kolektor", "magnetic_tile", "tire", "pcb_deeppcb", "screw"],
        "experiments.ablations": ["l3", "sigshrink", "istc", "mean_score", "nosparsity", "j1", "j10", "noise_init",
                                  "noise_only"],
        "experiments.video_test_every": 1,
        "experiments.video_draws": 5,
        "experiments.video_shots": [1, 5, 10],
    },
}

# Ablations (Tables 3-4, Fig. 5, Section 3.3): `ours` retrained with one change, evaluated on the same draws.
ABLATIONS: dict[str, dict[str, Any]] = {
    # Each row changes one thing from the defaults (solver fista, shrink hard, l = 1, top-k score).
    "l1": {"model.receptive_field": 1},  # Table 3: receptive field 1 (the default now; kept for old runs)
    "l3": {"model.receptive_field": 3},  # Table 3: receptive field 3
    "hard": {"model.shrink": "hard"},  # Fig. 5: Eq. 7 (the default now; kept for old runs)
    "sigshrink": {"model.shrink": "sigshrink"},  # Fig. 5: Eq. 9 SigShrink instead of Eq. 7
    "istc": {"model.solver": "istc", "model.lam_star": 0.1},  # the paper's Eq. 6: 5 ISTC steps with continuation
    "mean_score": {"model.image_score": "mean"},  # image energy = mean position energy (the paper's Eq. 8)
    "noise_only": {"inpaint.kinds": ["noise"]},  # chains start from uniform-noise patches only
    "nosparsity": {"model.shrink": "none"},  # Table 4: plain least squares, no shrinkage
    "j1": {"langevin.steps": 1},  # Langevin steps J
    "j10": {"langevin.steps": 10},
    # negatives start from pure noise (Section 3.3's alternative): the whole image, and only the noise kind —
    # a whole-image cutpaste or blend would start the chain from another category's normal image
    "noise_init": {"inpaint.kinds": ["noise"], "inpaint.min_frac": 1.0, "inpaint.max_frac": 1.0},
}


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_word(v) for v in value) + "]"
    return str(value)


def describe(values: dict[str, Any]) -> list[str]:
    """{"model.lam_star": 0.1} -> ["model.lam_star=0.1"]: the form records and tables have always shown."""
    return [f"{key}={_word(value)}" for key, value in values.items()]
