"""Probe: a self-supervised warm start of Ψ (issue 10, item 8) before any meta-training, judged on the
validation categories with the untrained-Ψ scorers (ours, kNN) at K = 10 (3 draws, 160-image subset).

    python -m benchmarks.probe_warmstart TRAIN_CATS VAL_CATS [section.key=value ...] [--steps N] [--every E]
        [--batch B] [--lr LR] [--data ROOT]

Results: docs/benchmarks.md, "Six more levers" (1). Data: bench_out/data-all unless --data names another root.

Objective: dense VICReg (Bardes et al., 2022) between two photometric views of the same crop. Both views keep
the geometry, so feature position (i, j) of one view is position (i, j) of the other; the invariance term makes Ψ
ignore exposure, contrast, blur and sensor noise (the shifts that separate screw's, tire's and pcb's test normals
from their training normals, docs/benchmarks.md), the variance and covariance terms keep every feature dimension
alive (no collapse, issue item 5). Evaluated at step 0 (the untrained Ψ) and every --every steps.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from orchestrator.config.loading import load_config, parse_overrides
from benchmarks.probe_features import probe
from orchestrator.evaluation.evaluate import make_scorer, untrained_model
from workers.data.sources import as_source

DATA = "bench_out/data-all"


def photometric(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> a photometric view of each image (same geometry)."""
    b = images.shape[0]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    x = images ** uniform(0.7, 1.4, 1, 1, 1)  # gamma
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * uniform(0.7, 1.3, 1, 1, 1) + mean + uniform(-0.15, 0.15, 1, 1, 1)  # contrast, brightness
    x = x * uniform(0.9, 1.1, 3, 1, 1)  # colour cast per channel
    blur = torch.rand(b, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        k2 = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)  # (3, 1, 3, 3) depthwise
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = x + torch.randn(x.shape, generator=generator) * uniform(0.0, 0.03, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def random_crops(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): a random crop (scale 0.5-1 of each side) resized back, and a random flip."""
    b, _, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(b):
        scale = 0.5 + 0.5 * torch.rand(1, generator=generator).item()
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = images[i:i + 1, :, top:top + ch, left:left + cw]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)  # (1, 3, H, W)
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out


def vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Dense VICReg: z (B, d, h, w) at the same positions; standard weights 25 / 25 / 1."""
    d = z1.shape[1]
    a = z1.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, d)
    b = z2.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, d)
    invariance = F.mse_loss(a, b)
    loss = 25.0 * invariance
    for z in (a, b):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + 1e-4)
        cov = (z.T @ z) / (z.shape[0] - 1)  # (d, d)
        off = cov - torch.diag(torch.diag(cov))
        loss = loss + 25.0 * F.relu(1.0 - std).mean() / 2 + (off ** 2).sum() / d / 2
    return loss


def evaluate_backbone(cfg, backbone_state, categories, data) -> list[str]:
    lines = []
    for method in ("ours", "knn"):
        for category in categories:
            model = untrained_model(cfg)
            model.backbone.load_state_dict(backbone_state)
            model.eval()
            res = probe(make_scorer(method, model, cfg), data, category, cfg.data.image_size)
            lines.append(f"{method} {category} {res['image_auroc']['mean']:.3f}/{res['pixel_auroc']['mean']:.3f}")
    return lines


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_warmstart")
    parser.add_argument("train_categories", type=lambda text: text.split(","))
    parser.add_argument("val_categories", type=lambda text: text.split(","))
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args(argv)
    cfg = load_config("params.yaml", parse_overrides(args.overrides))
    torch.set_num_threads(2)
    source = as_source(args.data)
    pool = torch.stack([it.image for c in args.train_categories
                        for it in source.load(c, cfg.data.image_size, split="train")])  # (N, 3, S, S)
    print(f"{pool.shape[0]} training normals from {args.train_categories}", flush=True)
    net = untrained_model(cfg).backbone.train()
    print("step 0:", " | ".join(evaluate_backbone(cfg, net.state_dict(), args.val_categories, args.data)), flush=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, pool.shape[0], (args.batch,), generator=generator)
        base = random_crops(pool[index], generator)
        z1, z2 = net(photometric(base, generator)), net(photometric(base, generator))
        loss = vicreg(z1, z2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if step % args.every == 0:
            net.eval()
            print(f"step {step}:", " | ".join(evaluate_backbone(cfg, net.state_dict(), args.val_categories, args.data)),
                  flush=True)
            net.train()


if __name__ == "__main__":
    main(sys.argv[1:])
