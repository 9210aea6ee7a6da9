"""The DVC pipeline's stages (dvc.yaml; entry points in pipelines/): ingest -> split -> train (one per
held-out target) -> evaluate (one per target) -> report. Every stage reads params.yaml (the one config
schema) and writes only its declared outputs:

    data/<name>/manifest.parquet, rejects.parquet, ingest.json, files/   ingest
    data/<name>/splits.parquet                                             split
    results/models/<target>/<variant>/                                     train (ours; maml_ae if asked)
    results/eval/<target>/<method>/K<k>/   metrics.json, overlays/         evaluate (cached)
    results/metrics/<target>.json                                          evaluate (DVC metrics)
    results/plots/{roc,pro}/<target>/<method>.csv                          evaluate (DVC plots)
    results/report/summary.json, results.md, bars.csv                      report

Every metrics file records the manifest's and the splits' content hashes and the config it ran with.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from model import metrics
from model.errors import InputError
from model.methods import MODEL_KINDS, get_method
from orchestrator.config import Config, load_config, with_values
from orchestrator.evaluation.evaluate import METRIC_NAMES, ScoreCache, evaluate
from orchestrator.stages.ingest import FILES, MANIFEST, ingest, is_local_source, make_splits
from orchestrator.training.loop import train
from workers.files import atomic_write_text

PARAMS = "params.yaml"
SPLITS = "splits.parquet"
RESULTS = Path("results")
TRAINED_CONFIG = ("data.image_size", "model.", "langevin.", "inpaint.", "train.", "maml.")  # what a fold's model depends on
# Recorded in every metrics file beside config_sha256 (the whole config is in results/eval/<target>/config.json).
RECORDED_PARAMS = ("data.image_size", "model.lam_max", "model.lam_star", "model.shrink", "model.receptive_field",
                   "langevin.steps", "langevin.step_size", "train.episodes", "train.lr", "eval.draws")


def load_params(path: str | Path = PARAMS, overrides: dict[str, Any] | None = None) -> Config:
    return load_config(path, overrides)


def data_dir(cfg: Config) -> Path:
    return Path("data") / cfg.pipeline.name


def repo_path(path: str | Path) -> Path:
    """A relative path of params.yaml (pipeline.source, experiments.video_root) as seen from the stage.
    `dvc exp run --temp` and queued experiments run in a copy of the repository under .dvc/tmp/exps/ and
    name the repository in $DVC_ROOT: there, `../shared/...` means the repository's neighbour, not the
    copy's. In the workspace (DVC_ROOT is the working directory, or unset) the path stays as written."""
    root = os.environ.get("DVC_ROOT")
    path = Path(path)
    if path.is_absolute() or not root or os.path.realpath(root) == os.path.realpath("."):
        return path
    return Path(os.path.normpath(os.path.join(root, path)))


def image_root(cfg: Config) -> Path | None:
    """Where the stages read a local source's images when they are not where the manifest's relative
    root points (an experiment's temporary copy); None: the manifest's own record."""
    source = cfg.pipeline.source
    if not is_local_source(source) or repo_path(source) == Path(source):
        return None
    return repo_path(source)


def _check_target(cfg: Config, target: str) -> None:
    if target not in cfg.pipeline.targets:
        raise InputError(f"--target {target!r} is not in pipeline.targets {cfg.pipeline.targets}")


def _variants(cfg: Config) -> list[str]:
    """Model variants to train: ours (kNN's backbone and the baselines' config too) and maml_ae when it is
    a method."""
    return [v for v in MODEL_KINDS if v in {get_method(m).model for m in cfg.pipeline.methods}]


def stage_ingest(cfg: Config) -> dict[str, Any]:
    out = data_dir(cfg)
    summary = ingest(cfg.pipeline.source, cfg.pipeline.name, out, read_from=image_root(cfg))
    (out / FILES).mkdir(exist_ok=True)  # always an output; empty when the images are read in place
    return summary


def stage_split(cfg: Config) -> dict[str, Any]:
    return make_splits(data_dir(cfg) / MANIFEST, cfg.pipeline.shots, cfg.eval.draws, cfg.eval.seed,
                       data_dir(cfg) / SPLITS)


def fold_config(cfg: Config, target: str, variant: str, changes: dict[str, Any] | None = None) -> Config:
    """The config one fold trains with: `target` held out, pipeline.val_categories (with any of
    train.val_categories) set aside for checkpoint selection, `variant` trained, `changes` on top."""
    val_categories = list(dict.fromkeys(cfg.train.val_categories + cfg.pipeline.val_categories))
    return with_values(cfg, {**(changes or {}), "data.exclude": [target], "train.method": variant,
                             "train.val_categories": val_categories})


def stage_train(cfg: Config, target: str, progress: bool = False) -> list[str]:
    _check_target(cfg, target)
    written = []
    for variant in _variants(cfg):
        fold_cfg = fold_config(cfg, target, variant)
        out = RESULTS / "models" / target / variant
        if out.exists():
            shutil.rmtree(out)  # dvc removes outputs before a stage runs; a manual run starts afresh too
        train(fold_cfg, image_root(cfg), out, progress=progress, manifest=data_dir(cfg) / MANIFEST,
              splits=data_dir(cfg) / SPLITS)
        written.append(str(out))
    return written


def stage_evaluate(cfg: Config, target: str, progress: bool = False) -> dict[str, Any]:
    """Every method at its K values (pipeline.shots_of: all of pipeline.shots for pipeline.sweep_methods, else
    the largest) with the splits' draws; metrics file and curves."""
    _check_target(cfg, target)
    manifest, splits = data_dir(cfg) / MANIFEST, data_dir(cfg) / SPLITS
    top = max(cfg.pipeline.shots)
    record: dict[str, Any] = {"category": target}
    # a fold whose selection kept the initial Ψ scores untrained / knn_untrained as ours / knn did: reused
    reuse = ScoreCache(cfg.pipeline.methods)
    for method in cfg.pipeline.methods:
        variant = get_method(method).model
        model_dir = RESULTS / "models" / target / variant
        record[method] = {}
        for k in cfg.pipeline.shots_of(method):
            first: dict[str, Any] = {}

            def keep_first(draw, scores, maps, test, first=first):
                if draw["draw"] == 0:
                    first.update(scores=scores, maps=maps, test=test)

            res = evaluate(model_dir, image_root(cfg), target, k, cfg.eval.draws, RESULTS / "eval" / target / method / f"K{k}",
                           method=method, seed=cfg.eval.seed, progress=progress,
                           overlays=cfg.eval.overlays if k == top else 0, on_draw=keep_first,
                           manifest=manifest, splits=splits, calibrate=method in cfg.pipeline.calibrate,
                           max_test_images=cfg.pipeline.max_test_images, reuse=reuse)
            record[method][f"K{k}"] = _numbers(res)
            record.update(n_test=res["n_test"], n_test_all=res["n_test_all"])
            record.update(manifest_sha256=res["manifest_sha256"], splits_sha256=res["splits_sha256"])
            if k == top:
                _write_curves(target, method, first)
    flat = cfg.flatten()
    used = {k: v for k, v in flat.items() if k.startswith(TRAINED_CONFIG + ("eval.", "pipeline."))}
    record["config_sha256"] = hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()
    record["params"] = {k: flat[k] for k in RECORDED_PARAMS}
    atomic_write_text(RESULTS / "eval" / target / "config.json", json.dumps(used, indent=2))
    path = RESULTS / "metrics" / f"{target}.json"
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def _numbers(res: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name in METRIC_NAMES:
        summary = res.get(name)
        if summary and summary.get("mean") is not None:
            out[name] = round(float(summary["mean"]), 6)
            out[f"{name}_std"] = round(float(summary["std"]), 6)
    return out


def _write_curves(target: str, method: str, first: dict[str, Any]) -> None:
    """ROC (fpr, tpr) and PRO (fpr, pro) of the first support draw at the largest K, as CSV for dvc plots."""
    test = first["test"]
    fpr, tpr = metrics.roc_curve_points(first["scores"], test.labels)
    write_csv(RESULTS / "plots" / "roc" / target / f"{method}.csv", ("fpr", "tpr"), zip(fpr, tpr))
    curve = metrics.pro_curve(first["maps"], test.masks) if test.masks is not None and test.masks.any() else None
    pro_path = RESULTS / "plots" / "pro" / target / f"{method}.csv"
    write_csv(pro_path, ("fpr", "pro"), zip(*curve) if curve is not None else [])


def write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([v if isinstance(v, str) else f"{float(v):.6g}" for v in row])
    atomic_write_text(path, buffer.getvalue())


def stage_report(cfg: Config) -> dict[str, Any]:
    """Aggregate the per-target metrics: mean over targets per method and K, a table and bar data."""
    per_target = {}
    for target in cfg.pipeline.targets:
        path = RESULTS / "metrics" / f"{target}.json"
        if not path.is_file():
            raise InputError(f"{path} is missing; expected the evaluate stage's output for {target!r}")
        per_target[target] = json.loads(path.read_text())
    shots = [f"K{k}" for k in sorted(cfg.pipeline.shots)]
    summary: dict[str, Any] = {}
    for method in cfg.pipeline.methods:
        summary[method] = {}
        for k in shot_keys(cfg, method):
            means = {}
            for name in METRIC_NAMES:
                values = [r[method][k][name] for r in per_target.values() if name in r[method].get(k, {})]
                if values:
                    means[name] = round(sum(values) / len(values), 6)
            summary[method][k] = means
    hashes = {r["manifest_sha256"] for r in per_target.values()}
    summary["manifest_sha256"] = hashes.pop() if len(hashes) == 1 else sorted(hashes)
    report = RESULTS / "report"
    atomic_write_text(report / "summary.json", json.dumps(summary, indent=2))
    top = shots[-1]
    write_csv(report / "bars.csv", ("target", "image_auroc"),
              [(f"{t}/{m}", r[m][top].get("image_auroc", float("nan"))) for t, r in per_target.items()
               for m in cfg.pipeline.methods])
    atomic_write_text(report / "results.md", _markdown(cfg, per_target, summary))
    return summary


def shot_keys(cfg: Config, method: str) -> list[str]:
    """The metrics keys ("K1", "K10", ...) of the shot counts `method` was evaluated at."""
    return [f"K{k}" for k in cfg.pipeline.shots_of(method)]


def _markdown(cfg: Config, per_target: dict, summary: dict) -> str:
    lines = [f"# Leave-one-category-out results ({cfg.pipeline.name})", "",
             f"Manifest sha256 `{summary['manifest_sha256']}`; {cfg.eval.draws} support draws per K "
             f"(splits.parquet); {cfg.train.episodes} training episodes per fold."
             + "".join(f" {t}: {r['n_test']} of its {r['n_test_all']} test images (pipeline.max_test_images, stratified)."
                       for t, r in per_target.items() if r.get("n_test", 0) < r.get("n_test_all", 0)), "",
             "| target | method | K | image AUROC | pixel AUROC | PRO | mIoU |", "|---|---|---|---|---|---|---|"]

    def cell(values: dict, name: str) -> str:
        if name not in values:
            return "n/a"
        std = values.get(f"{name}_std")
        return f"{values[name]:.3f}" + (f" ± {std:.3f}" if std is not None else "")

    for target, r in per_target.items():
        for method in cfg.pipeline.methods:
            for k in shot_keys(cfg, method):
                lines.append(f"| {target} | {method} | {k[1:]} | " + " | ".join(cell(r[method][k], n) for n in METRIC_NAMES) + " |")
    for method in cfg.pipeline.methods:
        for k in shot_keys(cfg, method):
            lines.append(f"| **mean** | {method} | {k[1:]} | " + " | ".join(cell(summary[method][k], n) for n in METRIC_NAMES) + " |")
    return "\n".join(lines) + "\n"
