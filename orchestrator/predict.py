"""Score new images with a model adapted to a folder of normal shots (Alg. 2)."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.artifacts import load_model_dir, resolve_device
from orchestrator.config import atomic_write_text
from orchestrator.evaluate import make_scorer, score_batches
from orchestrator.plots import color_limit, overlay_png
from workers.data import load_images


def predict(model_dir, support, images, out, method: str | None = None) -> list[dict]:
    model, cfg, _ = load_model_dir(model_dir)
    device = resolve_device(cfg.train.device)
    model.to(device)
    scorer = make_scorer(method or cfg.train.method, model, cfg)
    shots, _ = load_images(support, cfg.data.image_size)
    queries, files = load_images(images, cfg.data.image_size)
    state = scorer.adapt(shots.to(device))
    scores, maps = score_batches(scorer, state, queries, cfg.eval.batch_size, device)
    out = Path(out)
    vmax = color_limit(maps)
    rows = []
    for i, path in enumerate(files):
        overlay = out / "overlays" / f"{i:04d}_{path.stem}.png"
        overlay_png(overlay, queries[i], maps[i], None, f"{path.name}  score={float(scores[i]):.4g}", vmax)
        rows.append({"path": str(path), "score": float(scores[i]), "overlay": str(overlay)})
    atomic_write_text(out / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return rows
