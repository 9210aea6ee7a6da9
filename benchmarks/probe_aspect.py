"""Probe (docs/benchmarks.md, "Aspect ratio"): what squashing a non-square category into a square costs.

    python -m benchmarks.probe_aspect CAT[,CAT...] [--pixels N] [--methods ours,knn,nosupport] [--data ROOT]

Every category is scored twice with the untrained Ψ (the probes' protocol: K = 10, 3 draws, a 160-image
class-stratified test subset): once at the default square `data.image_size`² (each image squashed), and once
at one H × W per category with about the same number of pixels (`--pixels`, default image_size²) and the
category's median aspect ratio over its train/good images, H and W multiples of 8, so aspect is kept up to
rounding. Images and masks are resized to that H × W exactly as the loader resizes to a square (bilinear,
antialiased; masks nearest). The loader only knows squares, so the probe swaps the target size inside PIL's
resize for the duration of one category's run; nothing in the package changes."""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.probe_features import DATA, probe
from orchestrator.config.loading import load_config
from orchestrator.evaluation.evaluate import make_scorer, untrained_model
from workers.data.images import clear_cache


def aspect_shape(root: str, category: str, pixels: int, multiple: int = 8) -> tuple[int, int]:
    """(H, W) with H·W ≈ pixels, W / H ≈ the median W / H of the category's train/good images."""
    ratios = []
    for path in sorted((Path(root) / category / "train" / "good").iterdir()):
        with Image.open(path) as im:
            ratios.append(im.size[0] / im.size[1])  # PIL's size is (W, H)
    ratio = statistics.median(ratios)
    height = math.sqrt(pixels / ratio)
    return (max(multiple, round(height / multiple) * multiple),
            max(multiple, round(height * ratio / multiple) * multiple))


@contextlib.contextmanager
def square_becomes(side: int, shape: tuple[int, int]):
    """Inside: PIL resizes asked for (side, side) go to (W, H) = shape[::-1] instead."""
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        if tuple(size) == (side, side):
            size = (shape[1], shape[0])
        return original(self, size, *args, **kwargs)

    Image.Image.resize = resize
    clear_cache()  # the cache keys on image_size, which both runs share
    try:
        yield
    finally:
        Image.Image.resize = original
        clear_cache()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_aspect", description=__doc__.split("\n")[0])
    parser.add_argument("categories", type=lambda text: text.split(","))
    parser.add_argument("--pixels", type=int, default=None, help="pixels per image when aspect is kept")
    parser.add_argument("--methods", default="ours,knn,nosupport", type=lambda text: text.split(","))
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args(argv)
    cfg = load_config("params.yaml", {})
    side = cfg.data.image_size
    torch.set_num_threads(2)
    for category in args.categories:
        shape = aspect_shape(args.data, category, args.pixels or side * side)
        for label, context in (("square", contextlib.nullcontext()), ("aspect", square_becomes(side, shape))):
            size = f"{side}x{side}" if label == "square" else f"{shape[0]}x{shape[1]}"
            with context:
                for method in args.methods:
                    t0 = time.perf_counter()
                    res = probe(make_scorer(method, untrained_model(cfg), cfg), args.data, category, side)
                    print(f"{category} {label} {size} (H x W) {method}: image AUROC {res['image_auroc']['mean']:.3f} "
                          f"pixel AUROC {res['pixel_auroc']['mean']:.3f} PRO {res['pro']['mean']:.3f} "
                          f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
