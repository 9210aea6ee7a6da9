"""fsad loo: the whole leave-one-category-out table (train one model per held-out category, evaluate)."""
from __future__ import annotations

from model.methods import BASELINES, METHODS
from orchestrator.commands.common import add_config_arguments, config_file, config_from_args, schema_default
from orchestrator.config import ABLATIONS, parse_overrides
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "leave-one-category-out table: ours vs kNN vs MAML-AE vs the baselines (and ablations)"
RENAMED = {"--seeds": "--draws", "--categories": "--target"}  # the old spellings, for one release


def add_arguments(p):
    p.add_argument("--data", required=True, help="data root in the MVTec layout")
    p.add_argument("--shots", type=int, default=None,
                   help=f"K normal support images (default eval.shots = {schema_default('eval.shots')})")
    p.add_argument("--draws", type=int, default=None,
                   help=f"support draws per category (default eval.draws = {schema_default('eval.draws')})")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {','.join(METHODS)} (the no-learning/no-support baselines: {','.join(BASELINES)})")
    p.add_argument("--ablations", default="", help=f"comma list of {','.join(ABLATIONS)} (ours retrained with one change)")
    p.add_argument("--target", dest="targets", action="append", default=[], metavar="CAT[,CAT...]",
                   help="target categories, a comma list or repeated (default: every category)")
    p.add_argument("--out", required=True, help="output directory (models/, eval/, results.md, results.json)")
    p.add_argument("--quiet", action="store_true")
    add_config_arguments(p)
    add_tracking_arguments(p)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args) -> int:
    from orchestrator.evaluation.loo import results_table, run_loo

    cfg = config_from_args(args)  # checked and named once, before any work
    path = config_file(args)
    shots = cfg.eval.shots if args.shots is None else args.shots
    draws = cfg.eval.draws if args.draws is None else args.draws
    targets = [t for text in args.targets for t in _split(text)]
    results = run_loo(args.data, args.out, shots, draws, tuple(_split(args.methods)),
                      targets or None, tuple(_split(args.ablations)),
                      str(path) if path is not None else None, parse_overrides(args.overrides), progress=not args.quiet, tracking_uri=tracking_uri(args))
    print(results_table(results))
    print(f"wrote {args.out}/results.md and {args.out}/results.json")
    return 0
