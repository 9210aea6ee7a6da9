"""DVC stage `ingest`: pipeline.source -> data/<pipeline.name>/manifest.parquet, rejects.parquet, ingest.json."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params, stage_ingest

    stage_ingest(load_params(args.params))


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
