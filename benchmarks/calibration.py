"""Do calibrated thresholds keep their promise? For each target category, K = 10 shots × 5 draws: the
threshold is calibrated on the shots alone (leave-one-out + augmentations, eval.calibration), then the
realised false-alarm rate on the category's normal test images and the recall on its anomalous ones
are measured at targets 0.01 and 0.05, for ours and kNN. Writes docs/benchmarks_calibration.md (a
section of docs/benchmarks.md) and docs/images/calibration_fpr.png.

    python -m benchmarks.calibration [--data ../shared/data/fsad-real] [--out bench_out/calibration]
        [--max-normal 60] [--max-anomalous 40] [--compare] [--doc docs/benchmarks_calibration.md]

Weights: the initial Ψ of the default config (seed train.seed), i.e. `--method untrained`. At the
default training profile checkpoint selection keeps the initial weights, so this *is* ours; kNN runs on
the same Ψ. --compare (on validation categories only, e.g. fsad-extra's screw,pcb_deeppcb) also tables
every estimator × augmentation set, which is how the defaults were chosen; no target's test image is used
for that. Finished draws under --out are reused.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.calibration import ESTIMATORS, rates, size_corrected, threshold
from orchestrator.evaluation.calibration import held_out_scores
from orchestrator.config import load_config
from orchestrator.evaluation.evaluate import load_test_set, make_scorer, score_batches, support_draws, untrained_model
from workers.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TARGETS = (0.01, 0.05)
METHODS = {"ours": "untrained", "knn": "knn_untrained"}  # the label shown -> the scorer (same initial Ψ)
ALL_KINDS = ["hflip", "vflip", "shift"]  # sample layout per shot: original, hflip, vflip, shift +, shift -
LAYOUT = {"hflip": [1], "vflip": [2], "shift": [3, 4]}
AUG_SETS = {"none": [], "hflip": ["hflip"], "shift": ["shift"], "hflip+shift": ["hflip", "shift"],
            "hflip+vflip+shift": ["hflip", "vflip", "shift"]}


def columns(kinds) -> list[int]:
    return [0] + [i for kind in kinds for i in LAYOUT[kind]]


def subsample(labels: torch.Tensor, max_normal: int, max_anomalous: int, seed: int = 0) -> np.ndarray:
    """Indices of at most max_normal normal and max_anomalous anomalous test images (fixed seed)."""
    rng = np.random.default_rng(seed)
    y = labels.numpy().astype(bool)
    keep = []
    for mask, cap in ((~y, max_normal), (y, max_anomalous)):
        idx = np.flatnonzero(mask)
        keep += sorted(rng.choice(idx, size=min(cap, idx.size), replace=False).tolist())
    return np.array(sorted(keep))


def run_draw(scorer, support, images, batch_size) -> dict:
    """Leave-one-out samples of every augmentation kind (K, 5); the same against the K − 2 dictionary
    without shot i and shot i + 1 (K, 5): how a score moves with the dictionary's size, for the size
    correction (eval.calibration_size_correction); and the test scores."""
    device = torch.device("cpu")
    state = scorer.adapt(support)
    K = support.shape[0]
    loo, _ = held_out_scores(scorer, support, ALL_KINDS, batch_size, device, state)  # (K·5,), shot-major
    loo2, _ = held_out_scores(scorer, support, ALL_KINDS, batch_size, device, state, without_next=True)  # (K·5,)
    scores, _ = score_batches(scorer, state, images, batch_size, device)
    return {"loo": loo.reshape(K, -1).tolist(), "loo2": loo2.reshape(K, -1).tolist(), "test": scores.double().tolist()}


def measure(data: Path, out: Path, categories: list[str], shots: int, draws: int, max_normal: int,
            max_anomalous: int, cached_only: bool = False) -> dict:
    cfg = load_config()
    model = untrained_model(cfg)
    results = {}
    for category in categories:
        test = load_test_set(data, category, cfg.data.image_size)
        keep = subsample(test.labels, max_normal, max_anomalous)
        images, labels = test.images[keep], test.labels[keep]
        index = support_draws(test.support_pool.shape[0], shots, draws, cfg.eval.seed, category)
        for label, method in METHODS.items():
            scorer = make_scorer(method, model, cfg)
            for draw, idx in enumerate(index):
                file = out / category / label / f"draw{draw}.json"
                if not file.is_file() and cached_only:
                    continue
                if not file.is_file():
                    t0 = time.perf_counter()
                    rec = run_draw(scorer, test.support_pool[idx], images, cfg.eval.batch_size)
                    rec.update(labels=labels.tolist(), support=idx, seconds=time.perf_counter() - t0,
                               n_test_normal_all=int((test.labels == 0).sum()))
                    file.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(file, json.dumps(rec))
                    print(f"{category} {label} draw {draw}: {rec['seconds']:.0f} s", flush=True)
                results[(category, label, draw)] = json.loads(file.read_text())
    return results


def samples(rec: dict, kinds, size_correction: bool) -> np.ndarray:
    """A draw's calibration samples (K, 1 + A) for these augmentations, size-corrected when asked."""
    loo = np.asarray(rec["loo"])[:, columns(kinds)]  # (K, 1 + A)
    if not size_correction:
        return loo
    if "loo2" not in rec:
        raise SystemExit("bench: a cached draw has no K - 2 scores (made before the size correction): "
                         "delete it under --out and run again")
    loo2 = np.asarray(rec["loo2"])[:, columns(kinds)]  # (K, 1 + A)
    return size_corrected(loo.ravel(), loo2.ravel()).reshape(loo.shape)


def evaluate_rates(results: dict, estimator: str, kinds, fpr: float, size_correction: bool = False) -> dict:
    """(category, method) -> per-draw realised false-alarm rates and recalls."""
    table: dict = {}
    for (category, label, _), rec in results.items():
        loo = samples(rec, kinds, size_correction)  # (K, 1 + A)
        thr = threshold(loo.ravel(), fpr, estimator, n_independent=loo.shape[0])
        found = rates(rec["test"], rec["labels"], thr)
        row = table.setdefault((category, label), {"fpr": [], "recall": [], "n_normal": found["n_normal"],
                                                   "n_anomalous": found["n_anomalous"]})
        row["fpr"].append(found["realised_fpr"])
        row["recall"].append(found["recall"])
    return table


def within_two(fpr: float, target: float) -> bool:
    return target / 2 <= fpr <= target * 2


def figure(tables: dict, path: Path, title: str) -> None:
    from orchestrator.reporting.plots import plt, save_png

    keys = sorted({key for table in tables.values() for key in table})
    categories = sorted({c for c, _ in keys})
    methods = [m for m in METHODS if any(k[1] == m for k in keys)]
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.4), squeeze=False)
    for ax, (target, table) in zip(axes[0], sorted(tables.items())):
        width = 0.8 / len(methods)
        for j, method in enumerate(methods):
            x = np.arange(len(categories)) + (j - (len(methods) - 1) / 2) * width
            means = [np.mean(table[(c, method)]["fpr"]) if (c, method) in table else np.nan for c in categories]
            lo = [means[i] - np.min(table[(c, method)]["fpr"]) if (c, method) in table else 0.0
                  for i, c in enumerate(categories)]
            hi = [np.max(table[(c, method)]["fpr"]) - means[i] if (c, method) in table else 0.0
                  for i, c in enumerate(categories)]
            ax.bar(x, means, width, yerr=[lo, hi], capsize=3, label=method)
        ax.axhline(target, color="black", linewidth=1.0, label=f"target {target:g}")
        ax.axhspan(target / 2, target * 2, color="grey", alpha=0.2, label="within ×2")
        ax.set_xticks(np.arange(len(categories)))
        ax.set_xticklabels(categories, fontsize=7)
        ax.set_ylabel("realised false-alarm rate")
        n = max(len(row["fpr"]) for row in table.values())
        ax.set_title(f"{title}: target {target:g} (bars: mean of {n} draws, whiskers: min-max)", fontsize=7)
        ax.legend(fontsize=6)
    save_png(fig, path)


def markdown(results: dict, tables: dict, estimator: str, kinds, command: str, minutes: float, figure_rel: str,
             args) -> str:
    lines = [
        f"## Calibrated thresholds: realised false-alarm rate and recall (K = {args.shots}, {args.draws} draws)\n",
        *([f"**Partial run: only the draws finished so far are tabled (column `draws`); "
           f"`{command.replace(' --cached-only', '')}` finishes it, reusing them.**\n"] if args.cached_only else []),
        f"Command: `{command}` ({minutes:.0f} min of compute summed over the draws, on 2 CPU cores; "
        "finished draws are reused).  ",
        f"Threshold: `eval.calibration={estimator}` on the leave-one-out scores of the K shots and their "
        f"augmentations ({', '.join(kinds) or 'none'}), n = K independent shots, size correction "
        f"{'on' if args.size_correction else 'off'} (`eval.calibration_size_correction`: the samples extrapolated "
        "from K − 2 and K − 1 shots to K); the same calibration samples "
        "give both targets. Weights: the initial Ψ of the default config (`--method untrained`). **At the "
        "default training profile, checkpoint selection keeps the initial weights, so ours equals untrained "
        "here**; kNN uses the same Ψ. Test images: every normal test image up to "
        f"{args.max_normal} and up to {args.max_anomalous} anomalous ones per category (a fixed random subset "
        "where there are more, to keep the run short on 2 cores).\n",
        f"![realised false-alarm rate against the target]({figure_rel})\n",
        "| category | method | normal / anomalous test images | draws | target | realised false-alarm rate: mean (min–max over draws) | within ×2 of target | recall: mean (min–max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for target, table in sorted(tables.items()):
        for (category, method), row in sorted(table.items()):
            f, r = np.asarray(row["fpr"]), np.asarray(row["recall"])
            ok = within_two(float(f.mean()), target)
            verdicts.setdefault((target, method), []).append((category, ok))
            lines.append(f"| {category} | {method} | {row['n_normal']} / {row['n_anomalous']} | {len(f)} | {target:g} | "
                         f"{f.mean():.3f} ({f.min():.3f}–{f.max():.3f}) | {'yes' if ok else '**no**'} | "
                         f"{r.mean():.3f} ({r.min():.3f}–{r.max():.3f}) |")
    lines.append("")
    for (target, method), rows in sorted(verdicts.items()):
        hits = [c for c, ok in rows if ok]
        lines.append(f"- target {target:g}, {method}: within a factor of 2 on {len(hits)} of {len(rows)} categories"
                     + (f" ({', '.join(hits)})" if hits else "") + ".")
    return "\n".join(lines) + "\n"


def compare_markdown(results: dict, command: str) -> str:
    lines = ["## Choosing the calibration estimator on the validation categories\n",
             f"Command: `{command}`. Mean realised false-alarm rate over draws and methods (ours, kNN); "
             "score: mean |log(realised / target)| over category × method (lower is better).\n",
             "| estimator | augmentations | size correction | target 0.01: realised | target 0.05: realised | score |",
             "|---|---|---|---|---|---|"]
    best = None
    for estimator in ESTIMATORS:
        for name, kinds in AUG_SETS.items():
            for correction in (False, True):
                if correction and estimator == "empirical":
                    continue
                cells, errs = [], []
                for target in TARGETS:
                    table = evaluate_rates(results, estimator, kinds, target, correction)
                    means = {k: float(np.mean(v["fpr"])) for k, v in table.items()}
                    cells.append(", ".join(f"{c} {m} {v:.3f}" for (c, m), v in sorted(means.items())))
                    errs += [abs(np.log(max(v, 1e-3) / target)) for v in means.values()]
                score = float(np.mean(errs))
                best = min(best or (score, ""), (score, f"{estimator}, {name}, size correction {'on' if correction else 'off'}"))
                lines.append(f"| {estimator} | {name} | {'on' if correction else 'off'} | {cells[0]} | {cells[1]} | {score:.2f} |")
    lines.append(f"\nLowest score: {best[1]} ({best[0]:.2f}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "fsad-real"))
    parser.add_argument("--out", default=str(REPO / "bench_out" / "calibration"))
    parser.add_argument("--categories", default="", help="comma list (default: every category under --data)")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--max-normal", type=int, default=60)
    parser.add_argument("--max-anomalous", type=int, default=40)
    parser.add_argument("--compare", action="store_true", help="also table every estimator × augmentation set")
    parser.add_argument("--cached-only", action="store_true",
                        help="table only the draws already finished under --out (a partial run), computing nothing")
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks_calibration.md"))
    parser.add_argument("--figure", default=str(REPO / "docs" / "images" / "calibration_fpr.png"))
    args = parser.parse_args(argv)
    command = "python -m benchmarks.calibration " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    data = Path(args.data)
    if not data.is_dir():
        print(f"bench: data root {data} does not exist", file=sys.stderr)
        return 2
    categories = [c for c in args.categories.split(",") if c] or sorted(p.name for p in data.iterdir() if p.is_dir())
    results = measure(data, Path(args.out), categories, args.shots, args.draws, args.max_normal, args.max_anomalous,
                      args.cached_only)
    minutes = sum(rec.get("seconds", 0.0) for rec in results.values()) / 60
    cfg = load_config()
    estimator, kinds = cfg.eval.calibration, cfg.eval.calibration_augment
    correction = args.size_correction = cfg.eval.calibration_size_correction
    tables = {t: evaluate_rates(results, estimator, kinds, t, correction) for t in TARGETS}
    doc, fig = Path(args.doc), Path(args.figure)
    figure(tables, fig, data.name)
    text = markdown(results, tables, estimator, kinds, command, minutes,
                    Path(shlex.quote(str(fig.relative_to(doc.parent) if fig.is_relative_to(doc.parent) else fig))).as_posix(),
                    args)
    if args.compare:
        text = compare_markdown(results, command) + "\n" + text
    atomic_write_text(doc, text)
    print(text)
    print(f"wrote {doc} and {fig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
