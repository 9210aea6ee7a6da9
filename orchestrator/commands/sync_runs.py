"""fsad sync-runs: upload runs spooled while the tracking server was away."""
from __future__ import annotations

from orchestrator.commands.tracking_args import add_tracking_arguments, tracking_uri

HELP = "upload spooled MLflow runs (logged while the tracking server was unreachable)"


def add_arguments(p):
    p.add_argument("--spool", default=None, help="spool folder (default: $FSAD_SPOOL_DIR, else ./mlflow-spool)")
    add_tracking_arguments(p, optional=False)


def run(args) -> int:
    from orchestrator.tracking.spool import spool_root, sync_runs

    counts = sync_runs(tracking_uri(args, required=True), args.spool)
    print(f"{counts['synced']} runs uploaded, {counts['pending']} still waiting, "
          f"{counts['other_server']} spooled for another tracking server ({spool_root(args.spool)})")
    return 0 if counts["pending"] == 0 else 1
