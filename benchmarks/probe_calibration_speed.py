"""Probe (docs/benchmarks.md, "Calibration from one similarity product per image"): the time of one K-shot
calibration of `ours` (untrained Ψ of the config, which costs what a trained one does) by adapting to every
leave-one-out subset of the shots anew (held_out_scores, the path before ShotSubsets) and through ShotSubsets
(the default path), and how far their samples and thresholds differ.

    python -m benchmarks.probe_calibration_speed [CAT ...] [--data ROOT] [--draws N] [section.key=value ...]

Data: bench_out/data-all (links to the categories of ../shared/data/fsad-real and fsad-extra) unless --data names
another root. Each draw: K = eval.shots shots drawn from the category's normal training images (seed 0)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from model.calibration import size_corrected, size_step, threshold
from orchestrator.config.loading import load_config, parse_overrides
from orchestrator.evaluation.calibration import CalibrationSpec, FeatureMemo, calibrate, held_out_scores
from orchestrator.evaluation.evaluate import load_test_set, make_scorer, support_draws, untrained_model

DATA = "bench_out/data-all"


def anew(scorer, support: torch.Tensor, spec: CalibrationSpec) -> tuple[float, float]:
    """The calibration's threshold and pixel threshold by adapting to every subset (the path before ShotSubsets)."""
    memo = FeatureMemo(scorer, support, 32, torch.device("cpu"))
    kinds = list(spec.augment)
    plain, plain_peaks = held_out_scores(scorer, support, kinds, 32, "cpu", memo=memo)
    two, two_peaks = held_out_scores(scorer, support, kinds, 32, "cpu", without_next=True, memo=memo)
    scores = plain * np.exp(size_step(plain, two))
    K = support.shape[0]
    return (threshold(scores, spec.fpr, spec.estimator, n_independent=K),
            threshold(size_corrected(plain_peaks, two_peaks), spec.fpr, spec.estimator, n_independent=K))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_calibration_speed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("categories", nargs="*", default=["tire", "screw"])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="section.key=value")
    args = parser.parse_args(argv)
    cfg = load_config("params.yaml", parse_overrides(args.overrides))
    torch.set_num_threads(2)
    spec = CalibrationSpec.from_config(cfg, "ours")
    scorer = make_scorer("ours", untrained_model(cfg), cfg)
    for category in args.categories:
        pool = load_test_set(args.data, category, cfg.data.image_size).support_pool
        for draw, index in enumerate(support_draws(pool.shape[0], cfg.eval.shots, args.draws, 0, category)):
            support = pool[index]
            began = time.perf_counter()
            slow = anew(scorer, support, spec)
            slow_s = time.perf_counter() - began
            began = time.perf_counter()
            fast = calibrate(scorer, support, spec)
            fast_s = time.perf_counter() - began
            print(f"{category} draw {draw} K={cfg.eval.shots}: adapting anew {slow_s:.1f} s, "
                  f"ShotSubsets {fast_s:.1f} s "
                  f"({slow_s / fast_s:.1f}x); threshold {slow[0]:.6g} vs {fast.threshold:.6g} "
                  f"(rel. {abs(fast.threshold - slow[0]) / abs(slow[0]):.1e}), pixel threshold {slow[1]:.6g} vs "
                  f"{fast.pixel_threshold:.6g} (rel. {abs(fast.pixel_threshold - slow[1]) / abs(slow[1]):.1e})",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
