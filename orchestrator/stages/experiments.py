"""The paper's ablations as a DVC stage (experiments/dvc.yaml `ablations`; report in docs/results.md).

For every target of experiments.ablation_targets and every name of experiments.ablations (ABLATIONS in
orchestrator/config/profiles.py), `ours` is meta-trained on the target's fold with that one change and evaluated
at the largest K of pipeline.shots on the splits' support draws: the same images the default model of
the `evaluate@<target>` stage was scored with, so each row compares with the default on equal terms.

    results/ablations/<target>/<name>/model/          the variant's model directory (meta.json: loss history)
    results/ablations/<target>/<name>/metrics.json    evaluate()'s record (+ ablation name and overrides)
    results/ablations/summary.json                    one row per (target, name)
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.methods import OURS
from orchestrator.config import ABLATIONS, Config, describe
from orchestrator.evaluation.evaluate import METRIC_NAMES, evaluate
from orchestrator.stages.ingest import MANIFEST
from orchestrator.stages.pipeline import RESULTS, SPLITS, data_dir, fold_config, image_root
from orchestrator.training.loop import train
from workers.files import atomic_write_text

ABLATION_DIR = RESULTS / "ablations"


def variant_config(cfg: Config, name: str, target: str) -> Config:
    """The fold's config (the target held out, the same validation categories) with the ablation's
    overrides, training `ours`."""
    if name not in ABLATIONS:
        raise InputError(f"ablation {name!r}: expected one of {', '.join(ABLATIONS)}")
    return fold_config(cfg, target, OURS.model, ABLATIONS[name])


def stage_ablations(cfg: Config, progress: bool = False, log=print) -> list[dict[str, Any]]:
    e = cfg.experiments
    for target in e.ablation_targets:
        if target not in cfg.pipeline.targets:
            raise InputError(f"experiments.ablation_targets: {target!r} is not in pipeline.targets {cfg.pipeline.targets}")
    manifest, splits = data_dir(cfg) / MANIFEST, data_dir(cfg) / SPLITS
    for path, stage in ((manifest, "ingest"), (splits, "split")):
        if not path.is_file():
            raise InputError(f"{path} is missing; expected the {stage} stage's output (dvc repro)")
    shots = max(cfg.pipeline.shots)
    rows = []
    for target in e.ablation_targets:
        for name in e.ablations:
            variant = variant_config(cfg, name, target)
            folder = ABLATION_DIR / target / name
            if folder.exists():
                shutil.rmtree(folder)  # dvc removes outputs before a stage runs; a manual run starts afresh too
            log(f"[{target}] ablation {name} ({' '.join(describe(ABLATIONS[name]))}): meta-training")
            summary = train(variant, image_root(cfg), folder / "model", progress=progress, manifest=manifest, splits=splits)
            log(f"[{target}] ablation {name}: evaluating K={shots}, {cfg.eval.draws} draws")
            record = evaluate(folder / "model", image_root(cfg), target, shots, cfg.eval.draws, folder,
                              method=OURS.name, progress=progress, overlays=0, manifest=manifest, splits=splits,
                              calibrate=False, max_test_images=cfg.pipeline.max_test_images)
            record.update(ablation=name, overrides=describe(ABLATIONS[name]), train_seconds=summary["seconds"])
            atomic_write_text(folder / "metrics.json", json.dumps(record, indent=2))
            rows.append({"target": target, "ablation": name, "overrides": describe(ABLATIONS[name]),
                         **{m: record[m] for m in METRIC_NAMES + ("score_gap",)},
                         "manifest_sha256": record["manifest_sha256"], "splits_sha256": record["splits_sha256"]})
    atomic_write_text(ABLATION_DIR / "summary.json", json.dumps({"shots": shots, "draws": cfg.eval.draws,
                                                                  "rows": rows}, indent=2))
    return rows
