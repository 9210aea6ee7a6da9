"""fsad predict: adapt to a folder of normal shots, score new images, write scores and overlays."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, runtime_settings

HELP = "score images against K normal support images (one forward pass adaptation)"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model directory written by fsad train")
    p.add_argument("--support", required=True, nargs="+", help="normal images (files or a folder)")
    p.add_argument("--images", required=True, nargs="+", help="images to score (files or folders)")
    p.add_argument("--method", choices=["ours", "knn", "maml_ae"], default=None,
                   help="default: the method the model was trained with")
    p.add_argument("--out", required=True, help="output directory (scores.jsonl, overlays/); must be empty")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the scores.jsonl and overlays/ of an earlier prediction in --out")
    add_config_arguments(p, runtime_only=True)


def run(args) -> int:
    from orchestrator.predict import predict

    settings = runtime_settings(args, "predict")
    rows = predict(args.model, args.support, args.images, args.out, method=args.method, overwrite=args.overwrite,
                   settings=settings)
    for row in rows:
        print(f"{row['score']:.6g}  {row['path']}")
    print(f"wrote {args.out}/scores.jsonl and {len(rows)} overlays in {args.out}/overlays")
    return 0
