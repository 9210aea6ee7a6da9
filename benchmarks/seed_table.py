"""Issue 10's acceptance read over several training seeds of the quick pipeline.

Each argument is LABEL=FOLDER, a results/metrics folder written by `dvc repro dvc.yaml` with another
`train.seed` (the same DVC splits and support draws; the seed also fixes the untrained Ψ). Prints, per seed
and for the mean over seeds, each target's image / pixel AUROC at K = 10 for ours and the rows without
learning, and which of the four per-target criteria hold: ours' image AUROC above untrained, kNN and kNN on
the untrained Ψ, and its pixel AUROC above the support-free map.

    python -m benchmarks.seed_table seed0=results/metrics seed2=../seed2/results/metrics
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.reporting.claims import failed_rivals
from orchestrator.reporting.results import kept_episode, read_json

ROWS = ("ours", "untrained", "knn", "knn_untrained", "nosupport", "maml_ae")


def kept(folder: Path, target: str) -> int | None:
    """The checkpoint the fold's validation selection kept (0: the untrained Ψ), from results/models beside
    results/metrics; None where that model is absent."""
    meta = folder.parent / "models" / target / "ours" / "meta.json"
    return kept_episode(read_json(meta)) if meta.is_file() else None


def read_folder(folder: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """{target: {method: (image AUROC, pixel AUROC) at K = 10}} of one metrics folder."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SystemExit(f"seed_table: {folder} holds no <target>.json (expected a results/metrics folder)")
    table = {}
    for path in files:
        record = read_json(path)
        table[record["category"]] = {m: (record[m]["K10"]["image_auroc"], record[m]["K10"]["pixel_auroc"])
                                     for m in ROWS if m in record}
    return table


def criteria(row: dict[str, tuple[float, float]]) -> list[str]:
    """The criteria that fail for one target (empty: all four hold): the report's rule (`failed_rivals`)."""
    return [f"{metric} ≤ {rival}" for metric, rival in failed_rivals(row)]


def mean_over(tables: list[dict]) -> dict:
    targets = sorted(set.intersection(*(set(t) for t in tables)))
    return {target: {m: tuple(sum(t[target][m][i] for t in tables) / len(tables) for i in (0, 1))
                     for m in ROWS if all(m in t[target] for t in tables)} for target in targets}


def markdown(title: str, table: dict, kept: dict[str, int | None] | None = None) -> str:
    methods = [m for m in ROWS if all(m in row for row in table.values())]
    lines = [f"**{title}**", "", "| target | " + " | ".join(methods) + " | criteria | kept |",
             "|---" * (len(methods) + 3) + "|"]
    for target, row in table.items():
        failed = criteria(row)
        verdict = "4 of 4" if not failed else f"{4 - len(failed)} of 4 ({', '.join(failed)})"
        episode = (kept or {}).get(target)
        lines.append(f"| {target} | " + " | ".join(f"{row[m][0]:.3f} / {row[m][1]:.3f}" for m in methods)
                     + f" | {verdict} | {'' if episode is None else episode} |")
    means = {m: tuple(sum(row[m][i] for row in table.values()) / len(table) for i in (0, 1)) for m in methods}
    passing = sum(not criteria(row) for row in table.values())
    lines.append("| **mean** | " + " | ".join(f"{means[m][0]:.3f} / {means[m][1]:.3f}" for m in methods)
                 + f" | {passing} of {len(table)} targets | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", metavar="LABEL=FOLDER")
    args = parser.parse_args(argv)
    tables = []
    for item in args.folders:
        label, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"seed_table: {item!r} is not LABEL=FOLDER")
        tables.append((label, Path(folder), read_folder(Path(folder))))
    for label, folder, table in tables:
        print(markdown(label, table, {t: kept(folder, t) for t in table}) + "\n")
    if len(tables) > 1:
        print(markdown(f"mean over {', '.join(label for label, _, _ in tables)}", mean_over([t for _, _, t in tables])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
