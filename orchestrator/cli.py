"""`fsad` command line: a registry of verbs, one thin module each under orchestrator/commands/.

Exit codes: 0 ok; 2 bad input (one line on stderr: `fsad: error: ...`); 3 training diverged; 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from model.errors import InputError

VERBS = {
    "train": "orchestrator.commands.train",
    "evaluate": "orchestrator.commands.evaluate",
    "predict": "orchestrator.commands.predict",
    "loo": "orchestrator.commands.loo",
    "demo": "orchestrator.commands.demo",
    "ingest": "orchestrator.commands.ingest",
    "split": "orchestrator.commands.split",
    "register": "orchestrator.commands.register",
    "adapt": "orchestrator.commands.adapt",
    "sync-runs": "orchestrator.commands.sync_runs",
    "tune": "orchestrator.commands.tune",
    "video": "orchestrator.commands.video",
    "report": "orchestrator.commands.report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsad", description="Few-shot fast-adaptive anomaly detection")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orchestrator.train import TrainingDiverged
    from workers.data.images import max_pixels, set_max_pixels

    limit = max_pixels()  # a verb sets data.max_pixels for itself; callers in this process keep theirs
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        print(f"fsad: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"fsad: training diverged: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fsad: interrupted", file=sys.stderr)
        return 130
    finally:
        set_max_pixels(limit)


if __name__ == "__main__":
    sys.exit(main())
