"""DVC stage `report`: per-target metrics -> results/report/summary.json, results.md, bars.csv."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import RESULTS, load_params, stage_report

    stage_report(load_params(args.params))
    print((RESULTS / "report" / "results.md").read_text())


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
