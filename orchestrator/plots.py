"""Pictures a person would rather see: anomaly-map overlays with ground-truth contours."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: Path) -> None:
    """Atomic PNG write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)


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
    _save(fig, path)


def write_overlays(folder: Path, test, maps: torch.Tensor, scores: torch.Tensor, count: int) -> list[str]:
    """Overlays for up to `count` test images: anomalous first, then normal, one colour scale for all."""
    if count <= 0:
        return []
    labels = test.labels.numpy()
    order = list(np.flatnonzero(labels == 1)[: (count + 1) // 2]) + list(np.flatnonzero(labels == 0)[: count // 2])
    vmax = float(torch.quantile(maps.flatten()[:: max(1, maps.numel() // 1_000_000)], 0.999))
    written = []
    for i in order[:count]:
        name = Path(test.paths[i])
        path = folder / f"{name.parent.name}_{name.stem}.png"
        mask = test.masks[i] if test.masks is not None else None
        overlay_png(path, test.images[i], maps[i], mask,
                    f"{name.parent.name}/{name.name}  score={float(scores[i]):.4g}", vmax)
        written.append(str(path))
    return written
