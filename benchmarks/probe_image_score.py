"""Probe (docs/benchmarks.md, "Six more levers" (2)): per-image normalisations of ours' image
score, patched into `model.ebm.energy.image_score` for the run (the code's options do not include them), with the
untrained Ψ on chosen categories (protocol of benchmarks.probe_features: K = 10, 3 draws, 160-image subsets).

    python -m benchmarks.probe_image_score VARIANT CAT[,CAT...] [section.key=value ...] [--data ROOT]

VARIANT (s = the top-1 % mean of the standardised position energies e, as the default scores; over each image):
`default` s; `median` s − median(e); `mean` s − mean(e); `zscore` (s − mean(e)) / std(e); `robust`
(s − median(e)) / MAD(e). The last two ask how far the image's peak stands above the rest of the same image, so an
energy raised over the whole image (a shift of exposure or pose) cancels, and so does a defect that covers it.
"""
from __future__ import annotations

import sys

import torch

import model.ebm.energy as energy
from benchmarks import probe_features

VARIANTS = ("default", "median", "mean", "zscore", "robust")


def peak_score(variant: str):
    default = energy.image_score

    def score(position: torch.Tensor, kind: str, top_frac: float) -> torch.Tensor:
        flat = position.flatten(1)  # (B, h'·w')
        top = energy.top_mean(position, top_frac)  # (B,)
        if variant == "median":
            return top - flat.median(1).values
        if variant == "mean":
            return top - flat.mean(1)
        if variant == "zscore":
            return (top - flat.mean(1)) / flat.std(1).clamp_min(1e-6)
        if variant == "robust":
            median = flat.median(1).values  # (B,)
            spread = (flat - median[:, None]).abs().median(1).values  # (B,) median absolute deviation
            return (top - median) / spread.clamp_min(1e-6)
        return default(position, kind, top_frac)

    return score


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in VARIANTS:
        raise SystemExit(f"usage: python -m benchmarks.probe_image_score {{{','.join(VARIANTS)}}} CAT[,CAT...] "
                         "[section.key=value ...] [--data ROOT]")
    energy.image_score = peak_score(argv[0])  # AdaptiveEBM.image_energy looks the name up at call time
    probe_features.main(["config", argv[1], "--methods", "ours", *argv[2:]])


if __name__ == "__main__":
    main(sys.argv[1:])
