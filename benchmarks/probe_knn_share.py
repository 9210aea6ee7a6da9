"""Probe (docs/benchmarks.md, "kNN from ours' top-k"): can kNN take its nearest atom from the top-k atoms that ours
already finds for every test position, instead of searching the whole memory bank again?

    python -m benchmarks.probe_knn_share TARGET [--model results/models/TARGET/ours] [--draws 2] [--top-k 16]

Both methods code the same unit-norm volumes (receptive field 1, no centring, no whitening: `feature_volumes`
then `F.normalize`), and ours' atoms are kNN's memory-bank rows, so kNN's nearest row by distance is the row of
largest inner product (‖q − b‖² = 2 − 2 q·b for unit vectors) — one of ours' top-k. The probe takes the DVC
pipeline's trained model of TARGET and its test subset (`pipeline.max_test_images`, the DVC splits' K = 10 draws),
and for each draw compares kNN's distances as scored today (`nearest_distances` over the whole bank) with the
exact distance to the nearest of ours' top-k atoms (`top_similar` over the same similarity product), and times
both; then the path the evaluation takes since it was built: `nearest_among` over the SHARED_CANDIDATES first of
them (what ours keeps per draw). It changes nothing in the package."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from model.ebm.sparse import feature_volumes, top_similar
from model.methods.base import SHARED_CANDIDATES
from model.methods.knn import nearest_among, nearest_distances
from orchestrator.evaluation.evaluate import prepare_evaluation
from orchestrator.stages.pipeline import data_dir, image_root, load_params


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target")
    p.add_argument("--model", help="model directory (default: results/models/TARGET/ours)")
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--top-k", type=int, default=16)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_params()
    model_dir = Path(args.model or f"results/models/{args.target}/ours")
    prep = prepare_evaluation(model_dir, image_root(cfg), args.target, 10, args.draws, "knn",
                              manifest=data_dir(cfg) / "manifest.parquet", splits=data_dir(cfg) / "splits.parquet",
                              max_test_images=cfg.pipeline.max_test_images)
    backbone = prep.network.backbone.eval()
    test = prep.test
    with torch.no_grad():
        feats = torch.cat([backbone(test.images[i:i + 32]) for i in range(0, len(test.images), 32)])  # (N, d, h', w')
        queries = F.normalize(feature_volumes(feats, 1), dim=-1, eps=1e-6).reshape(-1, feats.shape[1])  # (N·h'w', d)
        print(f"{args.target}: {test.images.shape[0]} test images, {queries.shape[0]} positions, d = {queries.shape[1]}")
        for draw, index in enumerate(prep.draw_index[:args.draws]):
            support = backbone(test.support_pool[index])  # (K, d, h', w')
            bank = F.normalize(feature_volumes(support, 1), dim=-1, eps=1e-6).reshape(-1, support.shape[1])  # (K·h'w', d)
            t0 = time.perf_counter()
            full = nearest_distances(queries, bank)  # (n,): today's kNN
            t_full = time.perf_counter() - t0
            t0 = time.perf_counter()
            candidates = []
            for start in range(0, queries.shape[0], 4096):  # the product ours computes anyway, chunked as ours does
                chunk = queries[start:start + 4096]
                candidates.append(top_similar(chunk @ bank.T, args.top_k)[1])  # (r, k)
            candidates = torch.cat(candidates)  # (n, k)
            t_topk = time.perf_counter() - t0
            t0 = time.perf_counter()
            shared = torch.cat([(queries[s:s + 4096, None, :] - bank[candidates[s:s + 4096]]).norm(dim=2).amin(1)
                                for s in range(0, queries.shape[0], 4096)])  # (n,): exact distance, nearest of the k
            t_share = time.perf_counter() - t0
            t0 = time.perf_counter()
            built = nearest_among(queries, bank, candidates[:, :SHARED_CANDIDATES])  # (n,): the evaluation's path
            t_built = time.perf_counter() - t0
            differ = (shared - full).abs()
            print(f"draw {draw}: bank {bank.shape[0]} rows; today's kNN {t_full:.2f} s; ours' top-{args.top_k} "
                  f"{t_topk:.2f} s (already paid by ours); distances from it {t_share:.2f} s; "
                  f"max |difference| {differ.max():.2e}, positions that differ by > 1e-6: {(differ > 1e-6).sum().item()}, "
                  f"shared < today's (a nearer atom found): {(shared < full - 1e-6).sum().item()}; "
                  f"nearest_among over the first {SHARED_CANDIDATES} {t_built:.2f} s, max |difference| from the "
                  f"top-{args.top_k} distances {(built - shared).abs().max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
