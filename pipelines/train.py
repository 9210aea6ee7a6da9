"""DVC stage `train@<target>`: meta-train on the target's fold -> results/models/<target>/<variant>/."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params, stage_train

    for out in stage_train(load_params(args.params), args.target, progress=args.progress):
        print(f"trained {out}")


if __name__ == "__main__":
    sys.exit(main(run, __doc__, target=True))
