"""Probe (docs/benchmarks.md, "Five levers measured, none adopted", items 2, 4, 5): ours with the features of a
trained Ψ, of the network it started from, and of both side by side (each position's two feature vectors at unit norm,
concatenated and scaled by 1/√2, so a similarity is the mean of the two networks' cosines), on chosen
categories at K = 10 (3 draws, the probes' 160-image class-stratified test subset).

    python -m benchmarks.probe_twin MODEL_DIR CAT[,CAT...] [section.key=value ...] [--data ROOT]
        [--variants trained,untrained,twin]

MODEL_DIR: the output of `fsad train` (its kept weights); the untrained network is `untrained_model` of the same
config (train.seed fixes it: the network training started from). Overrides change how the model scores (e.g.
model.image_norm=none) over the same weights. Nothing in the package changes."""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.config.loading import parse_overrides, with_values
from orchestrator.config.schema import Config
from orchestrator.evaluation.evaluate import make_scorer, untrained_model
from orchestrator.tracking.artifacts import build_model, load_model_dir
from benchmarks.probe_features import DATA, probe, result_line


class TwinFeatures(nn.Module):
    """Two backbones read side by side: images -> (B, 2d, h', w'), each half at unit norm per position, / √2."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second
        self.out_dim, self.stride = 2 * first.out_dim, first.stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        halves = [F.normalize(net(images), dim=1, eps=1e-6) for net in (self.first, self.second)]  # (B, d, h', w') each
        return torch.cat(halves, 1) / math.sqrt(2)  # (B, 2d, h', w')


def variant_model(model_dir: str, variant: str, overrides: dict) -> tuple[nn.Module, Config]:
    """The model one variant scores with (trained, untrained or twin) and its config; overrides build the model
    for another scoring config over the same weights."""
    trained, cfg, _ = load_model_dir(model_dir)
    if overrides:
        cfg = with_values(cfg, overrides)
        weights, trained = trained.state_dict(), build_model(cfg)
        trained.load_state_dict(weights)
    if variant == "untrained":
        return untrained_model(cfg), cfg
    if variant == "twin":
        trained.backbone = TwinFeatures(trained.backbone, untrained_model(cfg).backbone)
    return trained, cfg


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_twin", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("categories", type=lambda text: text.split(","))
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--variants", default="trained,untrained,twin", type=lambda text: text.split(","))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for variant in args.variants:
        model, cfg = variant_model(args.model_dir, variant, parse_overrides(args.overrides))
        for category in args.categories:
            t0 = time.perf_counter()
            res = probe(make_scorer("ours", model, cfg), args.data, category, cfg.data.image_size)
            label = f"{args.model_dir} {variant} {' '.join(args.overrides)} {category}"
            print(result_line(label, res, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
