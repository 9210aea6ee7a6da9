"""fsad split: leave-one-category-out folds and the support draws of every target and K -> splits.parquet.

Defaults are the DVC stage `split`'s: K from pipeline.shots, draws and seed from eval.draws / eval.seed,
data/<pipeline.name>/manifest.parquet -> data/<pipeline.name>/splits.parquet (./params.yaml, --config, --set).
"""
from __future__ import annotations

from model.errors import InputError
from orchestrator.commands.common import add_config_arguments, config_from_args

HELP = "write leave-one-out folds and seeded support draws (every K) for a manifest"


def add_arguments(p):
    p.add_argument("--manifest", default=None,
                   help="manifest.parquet written by fsad ingest (default: data/<pipeline.name>/manifest.parquet)")
    p.add_argument("--shots", default=None, help="comma list of K, e.g. 1,2,4,8,10 (default: pipeline.shots)")
    p.add_argument("--draws", type=int, default=None, help="support draws per target and K (default: eval.draws)")
    p.add_argument("--seed", type=int, default=None, help="seed of the draws (default: eval.seed)")
    p.add_argument("--out", default=None, help="splits file to write (default: data/<pipeline.name>/splits.parquet)")
    add_config_arguments(p)


def parse_shots(text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise InputError(f"--shots {text!r}: expected a comma list of integers such as 1,2,4,8,10") from None


def run(args) -> int:
    from pathlib import Path

    from orchestrator.stages.ingest import make_splits

    cfg = config_from_args(args)
    folder = Path("data") / cfg.pipeline.name
    shots = parse_shots(args.shots) if args.shots is not None else list(cfg.pipeline.shots)
    make_splits(args.manifest or folder / "manifest.parquet", shots,
                cfg.eval.draws if args.draws is None else args.draws, cfg.eval.seed if args.seed is None else args.seed,
                args.out or folder / "splits.parquet")
    return 0
