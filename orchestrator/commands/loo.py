"""fsad loo: the whole leave-one-category-out table (train one model per held-out category, evaluate)."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, config_file, config_from_args
from orchestrator.config import ABLATIONS, METHODS, parse_overrides
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "leave-one-category-out table: ours vs kNN vs MAML-AE vs the baselines (and ablations)"


def add_arguments(p):
    p.add_argument("--data", required=True, help="data root in the MVTec layout")
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--seeds", type=int, default=5, help="support draws per category")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {','.join(METHODS)} (the last three are the no-learning/no-support baselines)")
    p.add_argument("--ablations", default="", help=f"comma list of {','.join(ABLATIONS)} (ours retrained with one change)")
    p.add_argument("--categories", default="", help="comma list of target categories (default: all)")
    p.add_argument("--out", required=True, help="output directory (models/, eval/, results.md, results.json)")
    p.add_argument("--quiet", action="store_true")
    add_config_arguments(p)
    add_tracking_arguments(p)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args) -> int:
    from orchestrator.loo import results_table, run_loo

    config_from_args(args)  # checked and named once, before any work
    path = config_file(args)
    results = run_loo(args.data, args.out, args.shots, args.seeds, tuple(_split(args.methods)),
                      _split(args.categories) or None, tuple(_split(args.ablations)),
                      str(path) if path is not None else None, parse_overrides(args.overrides), progress=not args.quiet, tracking_uri=tracking_uri(args))
    print(results_table(results))
    print(f"wrote {args.out}/results.md and {args.out}/results.json")
    return 0
