"""DVC stage `report` (experiments/dvc.yaml): docs/results.md and docs/figures/ from everything under results/."""
from __future__ import annotations

import sys

from pipelines._entry import main


def run(args) -> None:
    from orchestrator.stages.pipeline import load_params
    from orchestrator.reporting.report import build_report

    written = build_report(load_params(args.params), command="dvc repro experiments/dvc.yaml (stage report)")
    for claim, status, _ in written["claims"]:
        print(f"{status:>16}: {claim}")
    print(f"wrote {written['report']} and {len(written['figures'])} figures")


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
