"""What the pipelines wrote under results/, read for the report, and the numbers taken from its records.

The layout is described in orchestrator/reporting/report.py; a missing file is a one-line InputError
that names the pipeline command to run.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError
from model.methods import MODEL_KINDS, REGISTRY
from orchestrator.config import ABLATIONS, Config, describe

METRIC_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO", "miou": "mIoU"}
METHOD_LABELS = {m.name: m.label for m in REGISTRY}
PIPELINE_COMMAND = "dvc repro experiments/dvc.yaml"  # runs the root pipeline's stages first


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing; expected the pipeline's output (run `{PIPELINE_COMMAND}`)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}); rerun the stage that writes it") from None


def mean_std(summary: dict | None) -> tuple[float, float] | None:
    if not summary or summary.get("mean") is None or not math.isfinite(summary["mean"]):
        return None
    return float(summary["mean"]), float(summary.get("std") or 0.0)


def load_results(cfg: Config, results: Path) -> dict[str, Any]:
    """Everything the report needs, from the pipelines' outputs; a missing part is None (reported as such)."""
    shots = sorted(cfg.pipeline.shots)
    industrial: dict[str, Any] = {}
    for target in cfg.pipeline.targets:
        per_method: dict[str, Any] = {}
        for method in cfg.pipeline.methods:
            per_method[method] = {k: read_json(results / "eval" / target / method / f"K{k}" / "metrics.json")
                                  for k in cfg.pipeline.shots_of(method)}
        industrial[target] = per_method
    histories, models = {}, {}
    for target in cfg.pipeline.targets:
        for variant in MODEL_KINDS:
            meta = results / "models" / target / variant / "meta.json"
            if meta.is_file():
                models[(target, variant)] = read_json(meta)
                histories[(target, variant)] = models[(target, variant)].get("history", [])
    ablations: dict[str, dict[str, Any]] = {}
    for target in cfg.experiments.ablation_targets:
        for name in cfg.experiments.ablations:
            folder = results / "ablations" / target / name
            if (folder / "metrics.json").is_file():
                meta = read_json(folder / "model" / "meta.json")
                ablations.setdefault(target, {})[name] = {
                    "metrics": read_json(folder / "metrics.json"), "history": meta.get("history", []),
                    "kept_episode": kept_episode(meta),
                }
    video = {}
    for scene in cfg.experiments.video_targets:
        folder = results / "video" / scene
        if (folder / "metrics.json").is_file():
            video[scene] = {"metrics": read_json(folder / "metrics.json"), "scores": read_scores(folder / "scores.csv")}
    metrics_files = {t: read_json(results / "metrics" / f"{t}.json") for t in cfg.pipeline.targets}
    return {"shots": shots, "industrial": industrial, "histories": histories, "models": models, "ablations": ablations,
            "video": video, "metrics_files": metrics_files}


def kept_episode(meta: dict[str, Any]) -> int | None:
    """The checkpoint a model kept at selection (0: the initial Ψ); None when it was not selected."""
    return (meta.get("selection") or {}).get("best_episode")


def read_scores(path: Path) -> list[dict[str, Any]]:
    """A video run's scores.csv as [{"clip", "frame", "label", "score"}]; [] when there is none."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{"clip": r["clip"], "frame": int(r["frame"]), "label": int(r["label"]), "score": float(r["score"])}
                for r in csv.DictReader(handle)]


def variant_label(cfg: Config, name: str | None) -> str:
    if name is None:
        return f"{cfg.model.shrink}, l={cfg.model.receptive_field}, J={cfg.langevin.steps}, inpainting"
    return " ".join(describe(ABLATIONS[name]))


def mean_of(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def metric_mean(record: dict, name: str) -> float:
    summary = mean_std(record.get(name))
    return summary[0] if summary else float("nan")


def fifth(history: list[dict], last: bool) -> list[dict]:
    """The first (or last) fifth of a training history's episodes (at least one)."""
    count = max(1, len(history) // 5)
    return history[-count:] if last else history[:count]


def fifth_losses(history: list[dict], last: bool) -> list[float]:
    return [h["loss"] for h in fifth(history, last)]


def late_loss(history: list[dict]) -> float:
    return mean_of(fifth_losses(history, last=True))


def early_loss(history: list[dict]) -> float:
    return mean_of(fifth_losses(history, last=False))


def loss_margin(first: list[dict], second: list[dict], last: bool) -> float:
    """Two standard errors of the mean per-episode loss difference over a fifth. Two trainings of one fold draw
    the same episodes (train.seed: the same category, shots and corruptions at episode i), so the differences
    are paired by episode; a smaller mean difference is the episodes' spread, not evidence."""
    other = {h["episode"]: h["loss"] for h in fifth(second, last)}
    diffs = [h["loss"] - other[h["episode"]] for h in fifth(first, last) if h["episode"] in other]
    if len(diffs) < 2:
        return 0.0
    return 2.0 * float(np.std(diffs, ddof=1) / np.sqrt(len(diffs)))
