"""Pictures a person would rather see: anomaly-map overlays with ground-truth contours."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from workers.files import atomic_path  # noqa: E402


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Atomic PNG write; closes the figure."""
    try:
        with atomic_path(path, suffix=".png") as tmp:  # savefig picks the format from the suffix
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def overlay_png(path: Path, image: torch.Tensor, amap: torch.Tensor, mask: torch.Tensor | None,
                title: str, vmax: float | None = None) -> None:
    """image (3, H, W) in [0, 1], amap (H, W), mask (H, W) or None -> PNG: image | image + heat map."""
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    picture = image.permute(1, 2, 0).cpu().numpy()
    for ax in axes:
        ax.imshow(picture)
        ax.axis("off")
    axes[1].imshow(amap.cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
    if mask is not None and mask.any():
        for ax in axes:
            ax.contour(mask.cpu().numpy(), levels=[0.5], colors="white", linewidths=1.0)
    fig.suptitle(title, fontsize=8)
    save_png(fig, path)


def color_limit(maps: torch.Tensor) -> float:
    """One colour scale for a set of maps: their 99.9th percentile (on at most ~1M sampled values)."""
    return float(torch.quantile(maps.flatten()[:: max(1, maps.numel() // 1_000_000)], 0.999))


def overlay_name(path: str | Path) -> str:
    """The overlay file of a test image: <defect type>_<stem>.png."""
    name = Path(path)
    return f"{name.parent.name}_{name.stem}.png"


def write_overlays(folder: Path, test, maps: torch.Tensor, scores: torch.Tensor, count: int,
                   threshold: float | None = None) -> list[str]:
    """Overlays for up to `count` test images: anomalous first, then normal, one colour scale for all;
    with a threshold, the title gives the verdict."""
    if count <= 0:
        return []
    labels = test.labels.numpy()
    order = list(np.flatnonzero(labels == 1)[: (count + 1) // 2]) + list(np.flatnonzero(labels == 0)[: count // 2])
    if count >= len(labels):
        order = list(range(len(labels)))
    vmax = color_limit(maps)
    written = []
    for i in order[:count]:
        name = Path(test.paths[i])
        path = folder / overlay_name(name)
        mask = test.masks[i] if test.masks is not None else None
        verdict = ""
        if threshold is not None:
            verdict = f"  {'ANOMALOUS' if float(scores[i]) > threshold else 'OK'} (thr {threshold:.4g})"
        overlay_png(path, test.images[i], maps[i], mask,
                    f"{name.parent.name}/{name.name}  score={float(scores[i]):.4g}{verdict}", vmax)
        written.append(str(path))
    return written


def histogram_png(path: Path, scores: np.ndarray, labels: np.ndarray, threshold: float | None, title: str,
                  calibration: np.ndarray | None = None, target_fpr: float | None = None) -> None:
    """Score histograms of the normal and anomalous test images, the calibration (leave-one-out) scores
    as ticks, and the threshold as a vertical line."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = np.concatenate([scores, calibration if calibration is not None else []])
    bins = np.linspace(values.min(), values.max(), 31) if values.max() > values.min() else 10
    ax.hist(scores[~labels], bins=bins, alpha=0.6, color="tab:green", label=f"normal test ({(~labels).sum()})")
    ax.hist(scores[labels], bins=bins, alpha=0.6, color="tab:red", label=f"anomalous test ({labels.sum()})")
    if calibration is not None and len(calibration):
        ax.plot(calibration, np.zeros_like(calibration), "|", color="black", markersize=12,
                label=f"calibration, leave-one-out ({len(calibration)})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
                   label=f"threshold {threshold:.4g}" + (f" (target FPR {target_fpr:g})" if target_fpr else ""))
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    save_png(fig, path)


def curves_png(path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
               title: str, xlim: float = 1.0, diagonal: bool = False) -> None:
    """One line per (label, x, y) curve, e.g. the ROC or PRO curve of every support draw."""
    fig, ax = plt.subplots(figsize=(4, 4))
    for label, x, y in curves:
        ax.plot(np.asarray(x), np.asarray(y), linewidth=1.2, label=label)
    if diagonal:
        ax.plot([0, xlim], [0, xlim], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, xlim)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    if 1 < len(curves) <= 10:
        ax.legend(fontsize=6, loc="lower right")
    save_png(fig, path)


def roc_png(path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> None:
    """Image-level ROC curves: (label, fpr, tpr) each."""
    curves_png(path, curves, "false positive rate", "true positive rate", title, diagonal=True)


def pro_png(path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]], title: str, fpr_limit: float = 0.3) -> None:
    """Per-region-overlap curves up to fpr_limit: (label, fpr, pro) each."""
    curves_png(path, curves, "pixel false positive rate", "per-region overlap", title, xlim=fpr_limit)
