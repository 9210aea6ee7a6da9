"""Probe (docs/benchmarks.md, "Does the chain inpaint"): do J Langevin steps from a corrupted query move its
corrupted pixels towards the query's, and what does the chain's noise do to the whole-image gain?

    python -m benchmarks.probe_chain [--data ROOT] [--episodes N] [--settings BETA:NOISE,...] [--threads T]

Untrained Ψ (the config's initial network), the config's corruptions (inpaint.kinds) and K / M of train.*, on
episodes of juice_bottle, kolektor, magnetic_tile and tire (60 normal training images each). Per setting of
the step size β and noise scale s it prints the share of episodes with a positive whole-image gain
(MSE(q̂, q) − MSE(LD(q̂), q)), the mean gains over the image and over the corrupted pixels, and the mean
energy drop E(q̂) − E(LD(q̂)). Every setting sees the same episodes and the same noise seed."""
from __future__ import annotations

import argparse
import sys

import torch

from model.ebm.langevin import langevin
from orchestrator.config.loading import load_config, parse_overrides
from orchestrator.evaluation.evaluate import load_test_set, untrained_model
from workers.episodes import EpisodeSampler

DATA = "bench_out/data-all"
CATEGORIES = ("juice_bottle", "kolektor", "magnetic_tile", "tire")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_chain", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--settings", default="10:0.005,10:0,100:0,1000:0,1000:0.005",
                        type=lambda text: [tuple(float(v) for v in pair.split(":")) for pair in text.split(",")])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config("params.yaml", parse_overrides([]))
    model = untrained_model(cfg)
    normals = {c: load_test_set(args.data, c, cfg.data.image_size).support_pool[:60] for c in CATEGORIES}
    for step, noise in args.settings:
        sampler = EpisodeSampler(normals, cfg.train.shots, cfg.train.queries, (cfg.inpaint.min_frac, cfg.inpaint.max_frac),
                                 cfg.train.augment, seed=0, corruptions=tuple(cfg.inpaint.kinds))
        generator = torch.Generator().manual_seed(1)
        gains, patch_gains, drops = [], [], []
        for _ in range(args.episodes):
            episode = sampler.sample()
            with torch.no_grad():
                dictionary = model.build_dictionary(episode.support)
            negatives = langevin(lambda x: model.energy(x, dictionary), episode.corrupted, cfg.langevin.steps, step,
                                 noise, generator=generator)  # (M, C, S, S)
            inside = episode.patch_mask[:, None].expand_as(episode.queries)  # (M, C, S, S)
            before = (episode.corrupted - episode.queries).pow(2)
            after = (negatives - episode.queries).pow(2)
            gains.append(float(before.mean() - after.mean()))
            patch_gains.append(float(before[inside].mean() - after[inside].mean()))
            with torch.no_grad():
                drops.append(float((model.energy(episode.corrupted, dictionary) - model.energy(negatives, dictionary)).mean()))
        n = len(gains)
        print(f"beta {step:g} noise {noise:g}: whole-image gain > 0 in {sum(g > 0 for g in gains)}/{n}, "
              f"mean gain {sum(gains) / n:.2e}, inside the corruption {sum(patch_gains) / n:.2e} "
              f"(> 0 in {sum(g > 0 for g in patch_gains)}/{n}), energy drop {sum(drops) / n:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
