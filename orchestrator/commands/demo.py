"""fsad demo: the README's first command. Real data, small budget, one held-out category, a table.

Data: ../shared/data/fsad-real beside the repository when it exists (held out: tire); otherwise the ELPV
solar-cell images from the `elpv-dataset` package, written once to ./data/elpv (held out: elpv_poly).
"""
from __future__ import annotations

import time
from pathlib import Path

from orchestrator.commands.common import add_config_arguments, announce, config_from_args, schema_default
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri
from orchestrator.config import parse_overrides

HELP = ("meta-train on real data with a small budget, hold one category out, print ours vs kNN vs MAML-AE "
        "beside the no-learning and no-support baselines")
REPO = Path(__file__).resolve().parents[2]
SHARED_REAL = REPO.parent / "shared" / "data" / "fsad-real"
# The demo budget: the default training budget (train.episodes), a checkpoint every 20 episodes.
DEMO_OVERRIDES = {"train.checkpoint_every": 20}
# A number is evidence only beside the baselines with no learning (untrained Ψ) and no support set.
DEMO_METHODS = ("nosupport", "ours", "untrained", "knn", "maml_ae")
RENAMED = {"--holdout": "--target", "--seeds": "--draws"}  # the old spellings, for one release


def add_arguments(p):
    p.add_argument("--data", default=None, help="data root (default: ../shared/data/fsad-real, else ELPV)")
    p.add_argument("--target", default=None, metavar="CAT",
                   help="held-out category (default: tire, or elpv_poly for ELPV)")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--draws", type=int, default=None,
                   help=f"support draws (default eval.draws = {schema_default('eval.draws')})")
    p.add_argument("--shots", type=int, default=None,
                   help=f"K normal support images (default eval.shots = {schema_default('eval.shots')})")
    add_config_arguments(p)
    add_tracking_arguments(p)


def run(args) -> int:
    from orchestrator.evaluation.loo import results_table, run_loo
    from workers.data.elpv import materialize_elpv

    began = time.perf_counter()
    # The demo's figures are the README's: it runs on the embedded defaults, not on a ./params.yaml that
    # `dvc exp run` or an experiment may have edited; --config FILE still applies.
    path = Path(args.config) if args.config else None
    cfg = config_from_args(args, DEMO_OVERRIDES, path=path)
    shots = cfg.eval.shots if args.shots is None else args.shots
    draws = cfg.eval.draws if args.draws is None else args.draws
    announce(path, "" if path else " (fsad demo does not read ./params.yaml; --config params.yaml to use it)")
    if args.data:
        root, holdout = Path(args.data), args.target
    elif SHARED_REAL.is_dir():
        root, holdout = SHARED_REAL, args.target or "tire"
    else:
        print("../shared/data/fsad-real not found: using the ELPV solar-cell images (pip package elpv-dataset)")
        root, holdout = materialize_elpv(Path("data") / "elpv"), args.target or "elpv_poly"
    if holdout is None:
        from workers.data.mvtec import list_categories

        holdout = list_categories(root)[-1]
    print(f"data: {root}; held-out category: {holdout}; K={shots} shots × {draws} support draws")
    results = run_loo(root, args.out, shots, draws, DEMO_METHODS, [holdout], (),
                      str(path) if path else None, {**DEMO_OVERRIDES, **parse_overrides(args.overrides)}, tracking_uri=tracking_uri(args))
    print()
    print(results_table(results))
    print(f"anomaly-map overlays: {args.out}/eval/{holdout}/<method>/overlays/*.png")
    print(f"metrics: {args.out}/eval/{holdout}/<method>/metrics.json; table: {args.out}/results.md")
    print(f"demo finished in {time.perf_counter() - began:.0f} s")
    return 0
