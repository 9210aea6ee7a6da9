"""The report's figures (docs/figures/*.png): shot sweep, per-category bars, loss curves, overlays, video."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from model.methods import OURS  # noqa: E402
from orchestrator.config import Config  # noqa: E402
from orchestrator.reporting.plots import save_png  # noqa: E402
from orchestrator.reporting.results import METHOD_LABELS, METRIC_LABELS, mean_std, variant_label  # noqa: E402


def fig_shot_sweep(data: dict, cfg: Config, path: Path) -> None:
    """Metric vs K per target (columns) and metric (rows), one line per method, error bars = std over draws."""
    targets, shots = list(data["industrial"]), data["shots"]
    names = ("image_auroc", "pixel_auroc", "pro")
    fig, axes = plt.subplots(len(names), len(targets), figsize=(3.2 * len(targets), 2.6 * len(names)), squeeze=False)
    for col, target in enumerate(targets):
        for row, name in enumerate(names):
            ax = axes[row][col]
            for method in cfg.pipeline.methods:
                by_k = data["industrial"][target][method]  # only the K values the method was evaluated at
                points = [mean_std((by_k.get(k) or {}).get(name)) for k in shots]
                ks = [k for k, p in zip(shots, points) if p]
                if ks:
                    ax.errorbar(ks, [p[0] for p in points if p], yerr=[p[1] for p in points if p], marker="o",
                                capsize=3, label=METHOD_LABELS.get(method, method))
            ax.set_xscale("log", base=2)
            ax.set_xticks(shots, [str(k) for k in shots])
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(target)
            if col == 0:
                ax.set_ylabel(METRIC_LABELS[name])
            if row == len(names) - 1:
                ax.set_xlabel("K (shots)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Shot sweep: leave-one-category-out, mean ± std over support draws", fontsize=10)
    save_png(fig, path, dpi=110)


def fig_bars(data: dict, cfg: Config, path: Path) -> None:
    """Per-category bars for each method at the largest K (image AUROC, pixel AUROC, PRO)."""
    targets, top = list(data["industrial"]), data["shots"][-1]
    names = ("image_auroc", "pixel_auroc", "pro")
    methods = cfg.pipeline.methods
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, method in enumerate(methods):
            points = [mean_std(data["industrial"][t][method][top].get(name)) or (np.nan, 0.0) for t in targets]
            ax.bar(np.arange(len(targets)) + i * width, [p[0] for p in points], width, yerr=[p[1] for p in points],
                   capsize=2, label=METHOD_LABELS.get(method, method))
        ax.set_xticks(np.arange(len(targets)) + width * (len(methods) - 1) / 2, targets, rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{METRIC_LABELS[name]}, K={top}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    save_png(fig, path, dpi=110)


def _smooth(values: list[float], window: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.size < window or window < 2:
        return a
    kernel = np.ones(window) / window
    return np.convolve(a, kernel, mode="valid")  # (N - window + 1,)


def fig_loss_curves(data: dict, cfg: Config, path: Path) -> list[str]:
    """Training-loss curves: default vs each loss-relevant ablation, on each ablation target (Fig. 5)."""
    pairs = (("sigshrink", "SigShrink vs hard shrink (Fig. 5)"), ("j1", "Langevin steps J"), ("j10", "Langevin steps J"),
             ("noise_init", "inpainting vs noise-initialised negatives"))
    panels = []
    for target, variants in data["ablations"].items():
        default = data["histories"].get((target, OURS.model))
        for name, title in pairs:
            if name in variants and default:
                panels.append((target, name, title, default, variants[name]["history"]))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (target, name, title, default, other) in zip(axes[0], panels):
        window = max(1, len(default) // 20)
        for label, history in ((f"default ({variant_label(cfg, None)})", default),
                               (f"{name} ({variant_label(cfg, name)})", other)):
            losses = [h["loss"] for h in history]
            ax.plot(np.arange(len(_smooth(losses, window))) + window - 1, _smooth(losses, window), label=label)
        ax.set_title(f"{target}: {title}", fontsize=8)
        ax.set_xlabel("episode")
        ax.set_ylabel(f"training loss (moving mean of {window})", fontsize=8)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: curves stay visible
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    return [f"{t}/{n}" for t, n, *_ in panels]


def fig_overlay_grid(results: Path, cfg: Config, top: int, path: Path, per_target: int = 3) -> int:
    """The evaluate stage's overlay PNGs (image | heat map, ground-truth contours) of `ours`, a few per target."""
    rows = []
    for target in cfg.pipeline.targets:
        files = sorted((results / "eval" / target / OURS.name / f"K{top}" / "overlays").glob("*.png"))
        normal = [f for f in files if f.name.startswith("good_")]  # overlays are named <defect type>_<stem>.png
        anomalous = [f for f in files if f not in normal]
        chosen = anomalous[: per_target - 1] + normal[:1] if normal else anomalous[:per_target]
        if chosen:
            rows.append((target, chosen))
    if not rows:
        return 0
    cols = max(len(f) for _, f in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(4.0 * cols, 2.2 * len(rows)), squeeze=False)
    for r, (target, files) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(files):
                ax.imshow(plt.imread(files[c]))
        axes[r][0].set_title(target, fontsize=9, loc="left")
    fig.suptitle(f"ours, K={top}, first support draw: image | |∇ₓE| map (white: ground truth)", fontsize=9)
    save_png(fig, path, dpi=110)
    return sum(len(f) for _, f in rows)


def fig_video(scene: str, record: dict, path: Path) -> bool:
    """Frame score over time, clip after clip, with the labelled anomalous frames shaded."""
    scores = record["scores"]
    if not scores:
        return False
    x = np.arange(len(scores))
    y = np.asarray([s["score"] for s in scores])
    labels = np.asarray([s["label"] for s in scores])
    fig, ax = plt.subplots(figsize=(12, 2.8))
    ax.plot(x, y, lw=0.8, color="tab:blue", label="anomaly score (energy)")
    ax.fill_between(x, y.min(), y.max(), where=labels == 1, color="tab:red", alpha=0.15, step="mid",
                    label="labelled anomalous")
    clips = [s["clip"] for s in scores]
    starts = [i for i in range(len(clips)) if i == 0 or clips[i] != clips[i - 1]]
    for i in starts[1:]:
        ax.axvline(i - 0.5, color="grey", lw=0.6)
    ax.set_xticks(starts, [clips[i] for i in starts], fontsize=7, rotation=30)
    metrics = record["metrics"]
    top = max(metrics["shots"], key=lambda k: int(k[1:]))
    ax.set_title(f"{scene}: frame scores of the first draw at K={top[1:]} (every {metrics.get('test_every', 1)}. "
                 f"test frame), frame AUROC {metrics['shots'][top]['frame_auroc']:.3f}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    save_png(fig, path, dpi=110)
    return True
