"""Leave-one-category-out protocol: for every target category train a model that never sees it, adapt
with K shots × S draws, and tabulate ours / kNN / MAML-AE (and ablations) side by side.

Layout under --out (rerunning skips finished work, so an interrupted run continues):
    models/<category>/<variant>/     model directories (ours, maml_ae, ablation variants)
    eval/<category>/<name>/          metrics.json + overlays/ per method or ablation
    results.json, results.md         the table
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from model.errors import InputError
from orchestrator.tracking.artifacts import META, WEIGHTS
from model.methods import BY_NAME, METHODS, MODEL_KINDS, OURS
from orchestrator.training.checkpoint import has_checkpoint, recover
from orchestrator.config import ABLATIONS, Config, describe, load_config
from orchestrator.evaluation.evaluate import METRIC_NAMES, ScoreCache, format_metric
from orchestrator.tracking.tracked import tracked_evaluate
from orchestrator.training.tracked import tracked_train
from orchestrator.training.inputs import write_initial_model
from workers.data.mvtec import list_categories
from workers.files import atomic_write_text

# ABLATIONS (Tables 3-4, Fig. 5, Section 3.3) live beside the config schema: `ours` retrained with one change.


def _trained(model_dir: Path, cfg: Config) -> bool:
    if not (model_dir / WEIGHTS).is_file() or not (model_dir / META).is_file():
        return False
    meta = json.loads((model_dir / META).read_text())
    return meta.get("episodes_done") == cfg.train.episodes


def _train_variant(data_root, model_dir: Path, config_path, overrides: dict[str, Any], progress: bool,
                   uri: str | None = None) -> None:
    cfg = load_config(config_path, overrides)
    if has_checkpoint(model_dir):
        recover(model_dir)  # a fold killed while saving: its newest consistent checkpoint, published
    if _trained(model_dir, cfg):
        return
    resume = has_checkpoint(model_dir)  # a fold killed part-way continues from its last checkpoint
    tracked_train(cfg, data_root, model_dir, resume=resume, progress=progress, uri=uri)


def run_loo(
    data_root: str | Path,
    out: str | Path,
    shots: int = 10,
    draws: int = 5,
    methods: tuple[str, ...] = METHODS,
    categories: list[str] | None = None,
    ablations: tuple[str, ...] = (),
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    log=print,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    data_root, out = Path(data_root), Path(out)
    for method in methods:
        if method not in METHODS:
            raise InputError(f"--methods {method!r}: expected a comma list of {', '.join(METHODS)}")
    for name in ablations:
        if name not in ABLATIONS:
            raise InputError(f"--ablations {name!r}: expected a comma list of {', '.join(ABLATIONS)}")
    available = list_categories(data_root)
    targets = categories or available
    for category in targets:
        if category not in available:
            raise InputError(f"category {category!r} not found under {data_root}; available: {', '.join(available)}")
    overrides = dict(overrides or {})
    # validate once, before any work; the file's and --set's data.exclude stay unseen in every fold
    kept_out = load_config(config_path, overrides).data.exclude
    chosen = [BY_NAME[m] for m in methods]
    rows: list[dict[str, Any]] = []
    for category in targets:
        base = {**overrides, "data.exclude": list(dict.fromkeys([*kept_out, category]))}
        plan: list[tuple[str, str, str]] = []  # (row name, evaluation method, model variant)
        trains_ours = any(m.model == OURS.model and not m.baseline for m in chosen) or bool(ablations)
        if trains_ours:
            log(f"[{category}] meta-training ours (held out: {category})")
            _train_variant(data_root, out / "models" / category / OURS.model, config_path, base, progress,
                           tracking_uri)
        elif any(m.baseline for m in chosen):
            # the baselines alone need no meta-training: the initial Ψ and the config are all they read
            initial = out / "models" / category / "initial"
            if has_checkpoint(initial):
                recover(initial)  # killed while writing: its consistent checkpoint, published
            if not (initial / WEIGHTS).is_file():
                write_initial_model(load_config(config_path, base), data_root, initial)
        plan += [(m.name, m.name, OURS.model if trains_ours else "initial") for m in chosen if m.model == OURS.model]
        for kind in (k for k in MODEL_KINDS if k != OURS.model):  # another model, trained once for its methods
            readers = list(dict.fromkeys(m.name for m in chosen if m.model == kind))
            if readers:
                log(f"[{category}] meta-training {kind}")
                _train_variant(data_root, out / "models" / category / kind, config_path,
                               {**base, "train.method": kind}, progress, tracking_uri)
                plan += [(name, name, kind) for name in readers]
        for name in ablations:
            log(f"[{category}] meta-training ablation {name}: {' '.join(describe(ABLATIONS[name]))}")
            _train_variant(data_root, out / "models" / category / name, config_path, {**base, **ABLATIONS[name]}, progress,
                           tracking_uri)
            plan.append((f"{OURS.name}[{name}]", OURS.name, name))
        # one category's methods share its loaded test set, Ψ passes and ours' nearest atoms (as the DVC stage does)
        reuse = ScoreCache([method for _, method, _ in plan])
        for row, method, variant in plan:
            eval_dir = out / "eval" / category / row.replace("[", "_").replace("]", "")
            metrics_file = eval_dir / "metrics.json"
            record = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
            if not record or record.get("shots") != shots or record.get("draws") != draws:
                log(f"[{category}] evaluating {row}: K={shots}, {draws} draws")
                record = tracked_evaluate(out / "models" / category / variant, data_root, category, shots, draws,
                                          eval_dir, method=method, progress=progress, uri=tracking_uri,
                                          reuse=reuse)
            rows.append({"category": category, "method": row, **{m: record[m] for m in METRIC_NAMES},
                         "score_gap": record.get("score_gap"), "metrics": str(metrics_file)})
    results = {"data_root": str(data_root), "shots": shots, "draws": draws, "rows": rows,
               "mean": method_means(rows), "overrides": describe(overrides)}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def method_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean over categories of each method's per-category mean."""
    out: dict[str, dict[str, float | None]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {}
        for name in METRIC_NAMES:
            values = [r[name]["mean"] for r in mine if r[name]]
            out[method][name] = sum(values) / len(values) if values else None
    return out


def results_table(results: dict[str, Any]) -> str:
    header = "| category | method | image AUROC | pixel AUROC | PRO | mIoU |\n|---|---|---|---|---|---|\n"
    lines = [f"| {r['category']} | {r['method']} | " + " | ".join(format_metric(r[m]) for m in METRIC_NAMES) + " |"
             for r in results["rows"]]
    for method, means in results["mean"].items():
        cells = ["n/a" if means[m] is None else f"{means[m]:.3f}" for m in METRIC_NAMES]
        lines.append(f"| **mean** | {method} | " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def results_markdown(results: dict[str, Any]) -> str:
    return (
        f"# Leave-one-category-out results\n\n"
        f"Data: `{results['data_root']}`; K = {results['shots']} shots, {results['draws']} support draws "
        f"(mean ± std over draws); config overrides: `{' '.join(results['overrides']) or 'none'}`.\n\n"
        + results_table(results)
        + "\nmIoU uses the best threshold over a quantile grid (an oracle upper bound, see model/metrics.py).\n"
    )
