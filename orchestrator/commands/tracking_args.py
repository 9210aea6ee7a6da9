"""--tracking-uri / --no-track, shared by every verb that talks to MLflow (see orchestrator/tracking/)."""
from __future__ import annotations

import argparse


def add_tracking_arguments(parser: argparse.ArgumentParser, optional: bool = True) -> None:
    parser.add_argument("--tracking-uri", default=None, metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    if optional:
        parser.add_argument("--no-track", action="store_true",
                            help="do not log to MLflow (also: FSAD_TRACKING=0 in the environment)")


def tracking_uri(args: argparse.Namespace, required: bool = False) -> str | None:
    """The URI to log to, or None when tracking is off (registry verbs always need one)."""
    from orchestrator.tracking.server import resolve_tracking_uri

    if required:
        import os

        from orchestrator.tracking.server import DEFAULT_URI

        return resolve_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI)
    return resolve_tracking_uri(args.tracking_uri, getattr(args, "no_track", False))
