"""Probe (docs/benchmarks.md, "FISTA stops each position on its own"): the time the video stage spends scoring
one scene — every K of experiments.video_shots × video_draws support draws, as `orchestrator.evaluation.video`
scores them — and the frame AUROC of each draw, for one model directory. Run it from the root of any checkout
(with PYTHONPATH=.) to compare two commits' scoring on the same model and machine; --save keeps the scores of
draw 0 at the largest K for an exact comparison. Nothing in the package changes.

    python -m benchmarks.probe_video_scoring MODEL_DIR [--scene ucsd_ped2] [--methods ours,untrained] [--save PREFIX]
    python -m benchmarks.probe_video_scoring --train-episodes 2 --model-out bench_out/video-model  # a model first

Reads params.yaml (experiments.video_root and the rest of the protocol) and the pipeline's image manifest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="a model directory (fsad train's --out)")
    parser.add_argument("--scene", default="ucsd_ped2")
    parser.add_argument("--methods", default="ours,untrained", help="comma-separated: ours, untrained, nosupport")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--save", help="write <SAVE>_<method>.pt: the frame scores of draw 0 at the largest K")
    parser.add_argument("--train-episodes", type=int, default=0,
                        help="> 0: first meta-train a model for the scene (the video stage's training, this many "
                             "episodes) into --model-out")
    parser.add_argument("--model-out", type=Path, help="where --train-episodes writes its model")
    args = parser.parse_args(argv)
    from model.errors import InputError
    from orchestrator.config import with_values
    from orchestrator.evaluation import video
    from orchestrator.stages.pipeline import load_params

    try:
        cfg = load_params(args.params)
        test = video.load_target(cfg, args.scene)
        if args.train_episodes > 0:
            if args.model_out is None:
                raise InputError("--train-episodes needs --model-out, the model directory to write")
            source = video.training_source(cfg, args.scene, video.pipeline_image_source(cfg))
            video.train(video.training_config(with_values(cfg, {"train.episodes": args.train_episodes})), source,
                        args.model_out)
            args.model = args.model_out
        if args.model is None:
            raise InputError("give a model directory, or --train-episodes N --model-out DIR")
        print(f"{args.scene}: {test.images.shape[0]} test frames, pool {test.pool.shape[0]}, "
              f"K in {cfg.experiments.video_shots} x {cfg.experiments.video_draws} draws, "
              f"{torch.get_num_threads()} threads", flush=True)
        for method in args.methods.split(","):
            began = time.perf_counter()
            shots, first = video.score_shots(args.model, test, cfg, method=method)
            seconds = time.perf_counter() - began
            per_draw = "; ".join(f"{k}: {', '.join(f'{v:.6f}' for v in s['per_draw'])}" for k, s in shots.items())
            print(f"{method}: {seconds:.1f} s; frame AUROC per draw {per_draw}", flush=True)
            if args.save:
                torch.save(first, f"{args.save}_{method}.pt")
    except InputError as error:
        print(f"probe_video_scoring: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
