"""fsad predict: adapt to a folder of normal shots, calibrate a threshold on them, score new images:
scores, verdicts, masks and overlays (and with --report a browsable index.html)."""
from __future__ import annotations

from model.methods import LEARNT
from orchestrator.commands.common import add_config_arguments, runtime_settings, schema_default

HELP = "score images against K normal support images (one forward pass adaptation) and give verdicts"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model directory written by fsad train")
    p.add_argument("--support", required=True, nargs="+", help="normal images (files or a folder); K >= 2 for verdicts")
    p.add_argument("--images", required=True, nargs="+", help="images to score (files or folders)")
    p.add_argument("--method", choices=LEARNT, default=None,
                   help="default: the method the model was trained with")
    p.add_argument("--fpr", type=float, default=None,
                   help=f"target false-alarm rate of the threshold, in (0, 0.5] (default eval.fpr = "
                        f"{schema_default('eval.fpr')})")
    p.add_argument("--report", action="store_true",
                   help="also write index.html: every image sorted by score with its verdict, overlay and mask")
    p.add_argument("--out", required=True,
                   help="output directory (scores.jsonl, calibration.json, overlays/, masks/); must be empty")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier prediction in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_arguments(p, runtime_only=True)


def run(args) -> int:
    from orchestrator.evaluation.predict import predict

    settings = runtime_settings(args, "predict")
    result = predict(args.model, args.support, args.images, args.out, method=args.method, overwrite=args.overwrite,
                     fpr=args.fpr, report=args.report, progress=not args.quiet, settings=settings)
    for row in result["rows"]:
        print(f"{row['score']:.6g}  {row['verdict'] or 'no verdict':9s}  {row['path']}")
    s, cal = result["summary"], result["calibration"]
    if cal:
        print(f"threshold {cal['threshold']:.6g} for a target false-alarm rate of {cal['target_fpr']:g}, calibrated "
              f"on K={cal['shots']} normal shots (leave-one-out, {cal['n_samples']} samples)")
    else:
        print(f"no verdicts: K={s['shots']} normal shot; calibrating a threshold scores each shot against the "
              "others, so it needs K >= 2")
    print(f"{s['n_images']} images, {s['n_flagged']} flagged anomalous; slowest image {s['slowest_image']} "
          f"({s['slowest_seconds']:.2f} s); total {s['total_seconds']:.1f} s")
    extra = " and index.html" if args.report else ""
    print(f"wrote {args.out}/scores.jsonl, calibration.json, overlays/{', masks/' if cal else ''}{extra}")
    return 0
