"""DVC stage `split`: the manifest -> data/<pipeline.name>/splits.parquet (folds, support draws of every K)."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params, stage_split

    stage_split(load_params(args.params))


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
