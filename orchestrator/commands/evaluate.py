"""fsad evaluate: adapt to a held-out category with K shots, S draws; metrics.json + overlays."""
from __future__ import annotations

import json

from model.methods import METHODS, OURS
from model.methods import METHODS
from orchestrator.commands.common import (
    add_config_arguments,
    add_data_arguments,
    data_root,
    runtime_settings,
    schema_default,
)
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "evaluate a model on a held-out category (Alg. 2, K shots × S support draws)"
RENAMED = {"--category": "--target", "--seeds": "--draws"}  # the old spellings, for one release


def add_arguments(p):
    p.add_argument("--model", required=True, help="model directory written by fsad train")
    add_data_arguments(p, "splits.parquet from fsad split: use its support draws (same images for every method)")
    p.add_argument("--target", required=True, metavar="CAT", help="target category (must be held out of training)")
    p.add_argument("--shots", type=int, default=None,
                   help=f"K normal support images (default eval.shots = {schema_default('eval.shots')})")
    p.add_argument("--draws", type=int, default=None,
                   help=f"number of support draws S (default eval.draws = {schema_default('eval.draws')})")
    p.add_argument("--seed", type=int, default=None, help="base seed of the draws (default eval.seed)")
    p.add_argument("--method", choices=METHODS, default=OURS.name,
                   help="untrained / knn_untrained: ours / kNN with a freshly initialised Ψ (the model's config); "
                        "nosupport: the blurred image-gradient map, no support set")
    p.add_argument("--fpr", type=float, default=None,
                   help="target false-alarm rate of each draw's threshold, calibrated on its K shots alone, in "
                        f"(0, 0.5] (default eval.fpr = {schema_default('eval.fpr')})")
    p.add_argument("--report", action="store_true",
                   help="overlays of every test image of the first draw and index.html, a gallery of them")
    p.add_argument("--out", required=True, help="output directory (metrics.json, overlays/)")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate a model whose training stopped early (metrics.json then says \"partial\": true)")
    p.add_argument("--quiet", action="store_true")
    add_config_arguments(p, runtime_only=True)
    add_tracking_arguments(p)


def run(args) -> int:
    from workers.files import check_writable_dir
    from orchestrator.evaluation.evaluate import METRIC_NAMES, format_metric
    from orchestrator.tracking.tracked import tracked_evaluate

    from model.calibration import check_fpr

    if args.fpr is not None:
        check_fpr(args.fpr)
    check_writable_dir(args.out)
    settings = runtime_settings(args, "evaluate")
    # unset K and S come from the config (--config / ./params.yaml / --set eval.*), else the schema
    if args.shots is None:
        args.shots = settings.get("eval.shots", schema_default("eval.shots"))
    draws = args.draws if args.draws is not None else settings.get("eval.draws", schema_default("eval.draws"))
    record = tracked_evaluate(args.model, data_root(args), args.target, args.shots, draws, args.out,
                              method=args.method, seed=args.seed, progress=not args.quiet, uri=tracking_uri(args),
                              manifest=args.manifest, splits=args.splits, allow_partial=args.allow_partial,
                              settings=settings, fpr=args.fpr, report=args.report)
    print(json.dumps({name: format_metric(record[name]) for name in METRIC_NAMES}))
    if record.get("false_alarm_rate"):
        print(f"at the threshold calibrated on K={args.shots} normal shots for a target false-alarm rate of "
              f"{record['target_fpr']:g}: realised false-alarm rate {format_metric(record['false_alarm_rate'])} "
              f"on {record['n_test'] - record['n_anomalous']} normal test images, recall "
              f"{format_metric(record['recall'])} on {record['n_anomalous']} anomalous ones")
    else:
        print(f"no calibrated threshold: K={args.shots} (calibration scores each shot against the others; K >= 2)")
    if record.get("report"):
        print(f"wrote {record['report']}")
    print(f"wrote {args.out}/metrics.json and {len(record['overlays'])} overlays in {args.out}/overlays")
    if record.get("partial"):
        print(f"partial model: {record['episodes_done']} of {record['episodes_planned']} training episodes done")
    return 0
