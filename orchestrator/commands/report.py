"""fsad report: docs/results.md and its figures from the pipelines' outputs under results/."""
from __future__ import annotations

from orchestrator.commands.common import add_config_arguments, config_from_args

HELP = "write docs/results.md (tables, figures, the paper's claims) from results/ of dvc repro experiments/dvc.yaml"
RENAMED = {"--params": "--config"}  # the old spelling, for one release


def add_arguments(p):
    p.add_argument("--results", default="results", help="the pipelines' output folder (default results)")
    p.add_argument("--out", default="docs/results.md", help="report to write; figures go beside it in figures/")
    add_config_arguments(p)


def run(args) -> int:
    from orchestrator.reporting.report import build_report

    written = build_report(config_from_args(args), args.results, args.out,
                           command="fsad report" + (f" --results {args.results}" if args.results != "results" else ""))
    for claim, status, _ in written["claims"]:
        print(f"{status:>16}: {claim}")
    print(f"wrote {written['report']} and {len(written['figures'])} figures")
    return 0
