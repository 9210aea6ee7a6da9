"""Score new images with a model adapted to a folder of normal shots (Alg. 2), and decide: every image
gets its score, the calibrated threshold and a verdict (ok / anomalous), a binary mask and an overlay.

The threshold comes from the shots alone (orchestrator/evaluation/calibration.py): each shot scored against the
others, for the target false-alarm rate `fpr`. With a single shot there is nothing to score it against:
the scores are written, the verdict is null and the summary says why.

Outputs (`scores.jsonl`, `calibration.json`, `overlays/`, `masks/`, and with `report` `thumbnails/` and
`index.html`) are staged in a hidden folder inside --out and moved into place only when every image has
been scored, so a failed run leaves an earlier prediction as it was. A non-empty --out is refused unless
`overwrite`, which replaces the outputs of an earlier prediction and nothing else: a folder holding
other files is refused even then.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from model.calibration import check_fpr
from model.errors import InputError
from orchestrator.tracking.artifacts import load_model_dir, resolve_device
from orchestrator.evaluation.calibration import ANOMALOUS, Calibration, CalibrationSpec, calibrate
from orchestrator.config import with_values
from orchestrator.evaluation.evaluate import make_scorer
from orchestrator.reporting.gallery import INDEX, write_gallery
from orchestrator.reporting.plots import color_limit, overlay_png
from workers.data.folders import image_files, load_images
from workers.data.images import set_max_pixels
from workers.files import atomic_path, atomic_write_text, check_writable_dir

SCORES = "scores.jsonl"
CALIBRATION = "calibration.json"
OVERLAYS = "overlays"
MASKS = "masks"
THUMBNAILS = "thumbnails"
OUTPUTS = (SCORES, CALIBRATION, OVERLAYS, MASKS, THUMBNAILS, INDEX)
FOLDERS = (OVERLAYS, MASKS, THUMBNAILS)


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
                             f"replaces only {', '.join(OUTPUTS)}, so choose another folder")
    return out


def mask_png(path: Path, amap: torch.Tensor, pixel_threshold: float, size: tuple[int, int]) -> torch.Tensor:
    """Binary mask (0 / 255) of amap (S, S) > pixel_threshold, written at the image's own size (W, H)
    (nearest neighbour); returns the mask at S × S."""
    mask = amap > pixel_threshold  # (S, S)
    full = F.interpolate(mask[None, None].float(), size=(size[1], size[0]), mode="nearest")[0, 0]  # (H, W)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray((full.numpy() > 0.5).astype(np.uint8) * 255, mode="L").save(tmp)
    return mask


def thumbnail_png(path: Path, image: torch.Tensor) -> None:
    """image (3, S, S) in [0, 1] -> PNG at the model's size."""
    array = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)  # (S, S, 3)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp)


def predict(model_dir, support, images, out, method: str | None = None, overwrite: bool = False,
            fpr: float | None = None, report: bool = False, progress: bool = True,
            settings: dict | None = None) -> dict:
    """`settings`: run-time keys ({dotted key: value}: eval.*, data.max_pixels, train.device) over the model's
    config. -> {"rows": one dict per image, "calibration": dict | None, "summary": {...}}."""
    began = time.perf_counter()
    out = check_out(out, overwrite)
    if fpr is not None:
        check_fpr(fpr)
    model, cfg, _ = load_model_dir(model_dir)
    if settings:
        cfg = with_values(cfg, settings)
    fpr = cfg.eval.fpr if fpr is None else fpr
    set_max_pixels(cfg.data.max_pixels)
    device = resolve_device(cfg.train.device)
    model.to(device)
    method = method or cfg.train.method
    scorer = make_scorer(method, model, cfg)
    shots, _ = load_images(support, cfg.data.image_size)
    files = image_files(images)
    queries, _ = load_images(files, cfg.data.image_size)  # every file decoded before any work: bad ones fail first
    state = scorer.adapt(shots.to(device))
    calibration: Calibration | None = None
    if shots.shape[0] >= 2:
        calibration = calibrate(scorer, shots, CalibrationSpec.from_config(cfg, method, fpr), cfg.eval.batch_size,
                                device, state)
    scores, maps, seconds = [], [], []
    many = len(files) > 1
    for i in tqdm(range(len(files)), desc="predict", unit="image", disable=not (progress and many), leave=False,
                  dynamic_ncols=True):
        t0 = time.perf_counter()
        s, m = scorer.score(queries[i : i + 1].to(device), state)
        scores.append(float(s.detach().cpu()[0]))
        maps.append(m.detach().cpu()[0])
        seconds.append(time.perf_counter() - t0)
    maps_t = torch.stack(maps)  # (N, S, S)
    vmax = color_limit(maps_t)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".predict.tmp-", dir=out))
    try:
        rows = []
        for i, path in enumerate(files):
            name = f"{i:04d}_{path.stem}.png"
            row = {"path": str(path), "score": scores[i],
                   "threshold": calibration.threshold if calibration else None,
                   "verdict": calibration.verdict(scores[i]) if calibration else None,
                   "target_fpr": fpr, "shots": int(shots.shape[0]), "seconds": seconds[i],
                   "overlay": str(out / OVERLAYS / name)}
            contour = None
            if calibration:
                with Image.open(path) as im:
                    size = im.size  # (W, H), from the header: the file decoded above
                contour = mask_png(staging / MASKS / name, maps_t[i], calibration.pixel_threshold, size)
                row["mask"] = str(out / MASKS / name)
            verdict = f"  {row['verdict'].upper()} (threshold {row['threshold']:.4g})" if calibration else ""
            overlay_png(staging / OVERLAYS / name, queries[i], maps_t[i], contour,
                        f"{path.name}  score={scores[i]:.4g}{verdict}", vmax)
            if report:
                thumbnail_png(staging / THUMBNAILS / name, queries[i])
                row["thumbnail"] = str(out / THUMBNAILS / name)
            rows.append(row)
        atomic_write_text(staging / SCORES, "".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_text(staging / CALIBRATION, json.dumps(calibration.to_dict() if calibration else None, indent=2))
        slowest = int(np.argmax(seconds))
        summary = {"n_images": len(rows), "n_flagged": sum(r["verdict"] == ANOMALOUS for r in rows),
                   "slowest_image": str(files[slowest]), "slowest_seconds": seconds[slowest],
                   "total_seconds": time.perf_counter() - began, "shots": int(shots.shape[0]),
                   "calibrated": calibration is not None}
        if report:
            facts = _report_facts(calibration, fpr, int(shots.shape[0]), method)
            cards = [{"name": r["path"], "score": r["score"], "verdict": r["verdict"],
                      "thumbnail": staging / THUMBNAILS / Path(r["overlay"]).name,
                      "overlay": staging / OVERLAYS / Path(r["overlay"]).name,
                      "mask": (staging / MASKS / Path(r["overlay"]).name) if calibration else None} for r in rows]
            write_gallery(staging, f"fsad predict: {len(rows)} images", cards, facts)
        _commit(staging, out, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["total_seconds"] = time.perf_counter() - began
    return {"rows": rows, "calibration": calibration.to_dict() if calibration else None, "summary": summary}


def _report_facts(calibration: Calibration | None, fpr: float, shots: int, method: str) -> list[tuple[str, str]]:
    if calibration is None:
        return [("threshold", f"none: K={shots} normal shot cannot be scored leave-one-out (needs K >= 2)"),
                ("method", method)]
    return [("threshold", f"{calibration.threshold:.6g} (image score above it: anomalous)"),
            ("target false-alarm rate", f"{fpr:g}"),
            ("calibrated on", f"K={shots} normal shots, leave-one-out, {calibration.n_samples} samples "
                              f"({', '.join(['original', *calibration.augment])}), {calibration.estimator}"),
            ("pixel threshold (masks)", f"{calibration.pixel_threshold:.6g}"), ("method", method)]


def _commit(staging: Path, out: Path, report: bool) -> None:
    """Move the staged outputs over the old ones; old folders go into staging, removed with it. Outputs an
    earlier run wrote and this one does not (an old gallery) are removed so nothing stale is left."""
    for folder in FOLDERS:
        if (out / folder).exists():
            os.replace(out / folder, staging / f"replaced_{folder}")
        if (staging / folder).exists():
            os.replace(staging / folder, out / folder)
    for name in (SCORES, CALIBRATION, INDEX):
        if (staging / name).exists():
            os.replace(staging / name, out / name)
        elif (out / name).exists():
            os.replace(out / name, staging / f"replaced_{name}")
