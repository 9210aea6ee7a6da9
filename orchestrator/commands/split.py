"""fsad split: leave-one-category-out folds and the support draws of every target and K -> splits.parquet."""
from __future__ import annotations

from model.errors import InputError

HELP = "write leave-one-out folds and seeded support draws (every K) for a manifest"


def add_arguments(p):
    p.add_argument("--manifest", required=True, help="manifest.parquet written by fsad ingest")
    p.add_argument("--shots", default="1,2,4,8,10", help="comma list of K (default 1,2,4,8,10)")
    p.add_argument("--draws", type=int, default=5, help="support draws per target and K (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="splits file to write, e.g. data/NAME/splits.parquet")


def parse_shots(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise InputError(f"--shots {text!r}: expected a comma list of integers such as 1,2,4,8,10") from None


def run(args) -> int:
    from orchestrator.ingest import make_splits

    make_splits(args.manifest, parse_shots(args.shots), args.draws, args.seed, args.out)
    return 0
