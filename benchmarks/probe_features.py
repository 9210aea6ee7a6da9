"""Probe (docs/benchmarks.md, "Hypercolumn"): feature variants of the untrained Ψ under ours and kNN, on
chosen categories at K = 10 (3 draws, a 160-image class-stratified test subset), no training.

    python -m benchmarks.probe_features VARIANT CAT[,CAT...] [section.key=value ...] [--data ROOT] [--methods ours,knn]

VARIANT: `config` (Ψ as the config builds it; set model.backbone.hypercolumn / input_norm with the overrides),
`pool3` (the last block's features 3×3 average-pooled, PatchCore's local aggregation; run it with
model.backbone.hypercolumn=false) or `column448` (Ψ's hypercolumn without the head's projection: d = 448
instead of 128). Data: bench_out/data-all (links to the
categories of ../shared/data/fsad-real and fsad-extra) unless --data names another root (e.g. the files/ folder
of `fsad ingest --source elpv`); --methods: which scorers (default ours,knn)."""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ebm.backbone import normalize_input
from orchestrator.config.loading import load_config, parse_overrides
from orchestrator.evaluation.evaluate import (evaluate_scorer, load_test_set, make_scorer, stratified_subset,
                                              subset_test_set, untrained_model)

DATA = "bench_out/data-all"


class PatchedFeatures(nn.Module):
    """Ψ with its output replaced by one of the probe's variants."""

    def __init__(self, net: nn.Module, variant: str):
        super().__init__()
        self.net, self.variant = net, variant
        self.out_dim, self.stride = net.out_dim, net.stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> (B, 3, H, W)
        x = normalize_input(images, self.net.spec.input_norm)
        if self.variant == "column448":
            return self.net.hypercolumn(x)  # (B, 448, h', w')
        return F.avg_pool2d(self.net.features(x), 3, 1, 1)  # pool3: (B, d, h', w')


def score_subset(scorer, test) -> dict:
    """The probes' protocol on a loaded test set: K = 10, 3 draws (seed 0), a 160-image class-stratified subset, CPU."""
    test = subset_test_set(test, stratified_subset(test.labels, 160, 0, test.category))
    return evaluate_scorer(scorer, test, 10, 3, 0, 32, torch.device("cpu"), progress=False)


def probe(scorer, data, category: str, image_size: int) -> dict:
    """`score_subset` on the category's test set as the loader gives it."""
    return score_subset(scorer, load_test_set(data, category, image_size))


def result_line(label: str, res: dict, seconds: float) -> str:
    """One probe result as the probes print it: image AUROC (mean ± std over draws), pixel AUROC ('-' for a
    category with image labels only, such as ELPV) and the time taken."""
    pixel = res["pixel_auroc"]
    return (f"{label}: image AUROC {res['image_auroc']['mean']:.3f} ± {res['image_auroc']['std']:.3f} "
            f"pixel AUROC {'-' if not pixel else format(pixel['mean'], '.3f')} ({seconds:.0f} s)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_features", description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=("config", "pool3", "column448"))
    parser.add_argument("categories", type=lambda text: text.split(","))
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--methods", default="ours,knn", type=lambda text: text.split(","))
    args = parser.parse_args(argv)
    variant, categories = args.variant, args.categories
    cfg = load_config("params.yaml", parse_overrides(args.overrides))
    torch.set_num_threads(2)
    for method in args.methods:
        for category in categories:
            model = untrained_model(cfg)
            if variant != "config":
                model.backbone = PatchedFeatures(model.backbone, variant)
            t0 = time.perf_counter()
            res = probe(make_scorer(method, model, cfg), args.data, category, cfg.data.image_size)
            print(result_line(f"{variant} {method} {category}", res, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
