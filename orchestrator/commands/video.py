"""fsad video: the scene-adaptive video protocol (Section 4.2) for one target scene."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, config_from_args
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "meta-train on the other scenes + image categories, adapt to a target scene with K frames, frame AUROC"


def add_arguments(p):
    p.add_argument("--target", required=True, help="target scene under the video root (e.g. ucsd_ped2)")
    p.add_argument("--out", required=True, help="output directory (model/, metrics.json, scores.csv)")
    p.add_argument("--video-root", default=None, help="folder of scenes (default experiments.video_root)")
    p.add_argument("--data", default=None, help="image categories, MVTec layout (default pipeline.source)")
    p.add_argument("--manifest", default=None, help="manifest.parquet of the image categories (fsad ingest)")
    add_config_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_tracking_arguments(p)


def run(args) -> int:
    from orchestrator.tracking.tracked import tracked_video
    from workers.data.sources import open_source

    extra = {"experiments.video_root": args.video_root} if args.video_root else {}
    cfg = config_from_args(args, extra)
    images = open_source(args.data, args.manifest) if (args.data or args.manifest) else None
    record = tracked_video(cfg, args.target, args.out, image_source=images, progress=not args.quiet,
                           uri=tracking_uri(args))
    for k, values in record["shots"].items():
        print(f"{args.target} {k}: frame AUROC {values['frame_auroc']:.3f} ± {values['frame_auroc_std']:.3f} "
              f"over {len(values['per_draw'])} draws, {record['test_frames']} frames")
    print(f"wrote {args.out}/metrics.json, {args.out}/scores.csv and the model in {args.out}/model "
          f"({record['seconds']:.0f} s)")
    return 0
