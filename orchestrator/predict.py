"""Score new images with a model adapted to a folder of normal shots (Alg. 2).

Outputs (`scores.jsonl`, `overlays/`) are staged in a hidden folder inside --out and moved into place
only when every image has been scored, so a failed run leaves an earlier prediction as it was. A
non-empty --out is refused unless `overwrite`, which replaces the outputs of an earlier prediction and
nothing else: a folder holding other files is refused even then.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from model.errors import InputError
from orchestrator.artifacts import load_model_dir, resolve_device
from orchestrator.config import atomic_write_text, check_writable_dir, with_values
from orchestrator.evaluate import make_scorer, score_batches
from orchestrator.plots import color_limit, overlay_png
from workers.data import load_images, set_max_pixels

SCORES = "scores.jsonl"
OVERLAYS = "overlays"
OUTPUTS = (SCORES, OVERLAYS)


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """--out must be writable and empty, or (with overwrite) hold only an earlier prediction."""
    out = Path(out)
    check_writable_dir(out)
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            raise InputError(f"--out {out} is not empty ({', '.join(entries[:3])}{', ...' if len(entries) > 3 else ''}); "
                             "expected an empty folder, or --overwrite to replace an earlier prediction")
        foreign = [name for name in entries if name not in OUTPUTS]
        if foreign:
            raise InputError(f"--out {out} holds {foreign[0]!r}, which fsad predict does not write; --overwrite "
                             f"replaces only {SCORES} and {OVERLAYS}/, so choose another folder")
    return out


def predict(model_dir, support, images, out, method: str | None = None, overwrite: bool = False,
            settings: dict | None = None) -> list[dict]:
    """`settings`: run-time keys ({dotted key: value}: eval.*, data.max_pixels, train.device) over the model's config."""
    out = check_out(out, overwrite)
    model, cfg, _ = load_model_dir(model_dir)
    if settings:
        cfg = with_values(cfg, settings)
    set_max_pixels(cfg.data.max_pixels)
    device = resolve_device(cfg.train.device)
    model.to(device)
    scorer = make_scorer(method or cfg.train.method, model, cfg)
    shots, _ = load_images(support, cfg.data.image_size)
    queries, files = load_images(images, cfg.data.image_size)
    state = scorer.adapt(shots.to(device))
    scores, maps = score_batches(scorer, state, queries, cfg.eval.batch_size, device)
    vmax = color_limit(maps)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".predict.tmp-", dir=out))
    try:
        rows = []
        for i, path in enumerate(files):
            name = f"{i:04d}_{path.stem}.png"
            overlay_png(staging / OVERLAYS / name, queries[i], maps[i], None,
                        f"{path.name}  score={float(scores[i]):.4g}", vmax)
            rows.append({"path": str(path), "score": float(scores[i]), "overlay": str(out / OVERLAYS / name)})
        atomic_write_text(staging / SCORES, "".join(json.dumps(r) + "\n" for r in rows))
        _commit(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return rows


def _commit(staging: Path, out: Path) -> None:
    """Move the staged outputs over the old ones; the old overlays go into staging, removed with it."""
    if (out / OVERLAYS).exists():
        os.replace(out / OVERLAYS, staging / "replaced_overlays")
    os.replace(staging / OVERLAYS, out / OVERLAYS)
    os.replace(staging / SCORES, out / SCORES)
