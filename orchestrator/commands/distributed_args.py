"""`fsad train --workers N --address ...`: the options and the hand-off to the training loop with Ray workers."""
from __future__ import annotations

import argparse
import json
import sys

from model.errors import InputError


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="train on Ray with N Langevin workers (default: one in-process worker)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001 "
                             "(default with --workers: start Ray in-process)")


def wants_distributed(args: argparse.Namespace) -> bool:
    return args.workers is not None or args.address is not None


def distributed_overrides(args: argparse.Namespace) -> dict[str, int]:
    """Config overrides from --workers; refuses an in-process --resume of a distributed checkpoint."""
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected N >= 1 Langevin workers")
    if args.resume:
        from orchestrator.training.inputs import refuse_resume_across

        refuse_resume_across(args.out, wants_distributed(args))
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


def run_distributed(args: argparse.Namespace, cfg, uri: str | None = None, data_root=None, manifest=None,
                    splits=None) -> int:
    """Per-update metrics as JSON lines on stdout (unless --quiet) and, with a tracking URI, to MLflow.

    manifest/splits: the images the run trains on, as for the in-process run."""
    from pathlib import Path

    from orchestrator.training.loop import train_distributed

    data_root = args.data if data_root is None else data_root
    tracker = None
    exists = Path(data_root).exists() if data_root is not None else manifest is not None and Path(manifest).exists()
    if uri is not None and exists:  # bad input fails in training before any run exists
        from orchestrator.tracking.tracked import TrainingTracker

        tracker = TrainingTracker(uri, cfg, data_root, args.out, args.resume, manifest)

    def log(record):
        if not args.quiet:
            print(json.dumps(record), flush=True)
        if tracker is not None:
            tracker.on_log(_flat(record))

    try:
        summary = train_distributed(cfg, data_root, args.out, address=args.address, resume=args.resume,
                                    progress=not args.quiet and sys.stderr.isatty(), on_log=log,
                                    manifest=manifest, splits=splits)
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
