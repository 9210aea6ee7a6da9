"""fsad tune: an Optuna study over the search space in params.yaml (tune.*), trials as Ray tasks."""
from __future__ import annotations

import json
import sys

from orchestrator.commands.common import add_config_arguments, config_from_args
from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "search hyperparameters with Optuna (pruned, parallel on Ray, resumable); see docs/tuning.md"


def add_arguments(p):
    p.add_argument("--study", required=True, help="study name (an existing one is resumed)")
    p.add_argument("--storage", required=True,
                   help="journal file path (one machine, parallel-safe), sqlite:///FILE (one process) or "
                        "postgresql+psycopg2://USER@HOST/DB (a cluster)")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study should reach")
    p.add_argument("--parallel", type=int, default=1, metavar="P", help="trials at once, as Ray tasks (default 1: in-process)")
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001")
    p.add_argument("--data", required=True, help="data root in the MVTec layout")
    p.add_argument("--target", required=True, metavar="CAT",
                   help="the final target category: never loaded while tuning")
    p.add_argument("--out", required=True, help="folder for best_params.yaml, best.json, plots/ and trials/")
    add_config_arguments(p)
    add_tracking_arguments(p)


def run(args) -> int:
    from orchestrator.tuning.runner import tune

    cfg = config_from_args(args)
    summary = tune(cfg, args.data, args.target, args.storage, args.study, args.trials, args.out,
                   parallel=args.parallel, address=args.address, uri=tracking_uri(args),
                   log=lambda line: print(line, file=sys.stderr))
    print(json.dumps(summary))
    return 0
