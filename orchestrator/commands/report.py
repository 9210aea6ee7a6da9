"""fsad report: docs/results.md and its figures from the pipelines' outputs under results/."""
from __future__ import annotations

HELP = "write docs/results.md (tables, figures, the paper's claims) from results/ of dvc repro experiments/dvc.yaml"


def add_arguments(p):
    p.add_argument("--params", default="params.yaml", help="the config the results were produced with")
    p.add_argument("--results", default="results", help="the pipelines' output folder (default results)")
    p.add_argument("--out", default="docs/results.md", help="report to write; figures go beside it in figures/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for every verb")


def run(args) -> int:
    from orchestrator.config import load_config
    from orchestrator.report import build_report

    written = build_report(load_config(args.params, args.overrides), args.results, args.out,
                           command="fsad report" + (f" --results {args.results}" if args.results != "results" else ""))
    for claim, status, _ in written["claims"]:
        print(f"{status:>16}: {claim}")
    print(f"wrote {written['report']} and {len(written['figures'])} figures")
    return 0
