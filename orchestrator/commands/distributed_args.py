"""`fsad train --workers N --address ...`: the options and the hand-off to orchestrator/distributed.py."""
from __future__ import annotations

import argparse
import json
import sys

from model.errors import InputError


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="train on Ray with N Langevin workers (default: the in-process trainer)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 "
                             "(default with --workers: start Ray in-process)")


def wants_distributed(args: argparse.Namespace) -> bool:
    return args.workers is not None or args.address is not None


def distributed_overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides from --workers; refuses an in-process --resume of a distributed checkpoint."""
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected N >= 1 Langevin workers")
    if args.resume and not wants_distributed(args):
        from orchestrator.distributed import checkpoint_is_distributed

        if checkpoint_is_distributed(args.out):
            raise InputError(f"--resume: {args.out} holds a distributed checkpoint; resume it with --workers N")
    return [f"distributed.workers={args.workers}"] if args.workers is not None else []


def run_distributed(args: argparse.Namespace, cfg) -> int:
    """Per-update metrics as JSON lines on stdout (unless --quiet), then the summary line."""
    from orchestrator.distributed import train_distributed

    def log(record):
        print(json.dumps(record), flush=True)

    summary = train_distributed(cfg, args.data, args.out, address=args.address, resume=args.resume,
                                progress=not args.quiet and sys.stderr.isatty(), on_log=None if args.quiet else log)
    keys = ("out", "episodes", "seconds", "categories", "mode", "counters", "learner_idle_frac", "episodes_per_s")
    print(json.dumps({k: summary[k] for k in keys}))
    return 0
