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


def distributed_overrides(args: argparse.Namespace) -> dict[str, int]:
    """Config overrides from --workers; refuses an in-process --resume of a distributed checkpoint."""
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected N >= 1 Langevin workers")
    if args.resume and not wants_distributed(args):
        from orchestrator.distributed import checkpoint_is_distributed

        if checkpoint_is_distributed(args.out):
            raise InputError(f"--resume: {args.out} holds a distributed checkpoint; resume it with --workers N")
    return {"distributed.workers": args.workers} if args.workers is not None else {}


def _flat(record: dict) -> dict:
    """Nested per-worker dicts (episodes_per_s, staleness_hist) as dotted scalar metrics."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def run_distributed(args: argparse.Namespace, cfg, uri: str | None = None, data_root=None) -> int:
    """Per-update metrics as JSON lines on stdout (unless --quiet) and, with a tracking URI, to MLflow."""
    from pathlib import Path

    from orchestrator.distributed import train_distributed

    data_root = args.data if data_root is None else data_root
    tracker = None
    if uri is not None and Path(data_root).exists():  # bad input fails in training before any run exists
        from orchestrator.tracking.tracked import TrainingTracker

        tracker = TrainingTracker(uri, cfg, data_root, args.out, args.resume)

    def log(record):
        if not args.quiet:
            print(json.dumps(record), flush=True)
        if tracker is not None:
            tracker.on_log(_flat(record))

    try:
        summary = train_distributed(cfg, data_root, args.out, address=args.address, resume=args.resume,
                                    progress=not args.quiet and sys.stderr.isatty(), on_log=log)
    except KeyboardInterrupt:
        if tracker is not None:
            tracker.finish(None, "KILLED")
        raise
    except BaseException:
        if tracker is not None:
            tracker.finish(None, "FAILED")
        raise
    if tracker is not None:
        tracker.finish(summary)
        summary["run_id"] = tracker.run.run_id
    keys = ("out", "episodes", "seconds", "categories", "mode", "counters", "learner_idle_frac", "episodes_per_s",
            "run_id")
    print(json.dumps({k: summary[k] for k in keys if k in summary}))
    return 0
