"""Per-category model registry: `fsad-<category>` holds one version per adaptation of meta-trained
weights to that category with K support images (the task dictionary is stored with the weights).

Every version is tagged with the data hash, K, the support draw (or files), the metrics measured on the
category's test set when it is available, and the run that made it. Aliases: `champion` moves to a new
version only when it beats the current champion on the configured metric (tracking.champion_metric,
strictly greater); otherwise the new version gets `challenger`. A version without metrics becomes
champion only when there is none yet.

Registration needs the tracking server (no spool): a failure is an InputError naming the cause.
"""
from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.errors import InputError
from model.methods import OURS
from orchestrator.config import Config, with_values
from orchestrator.evaluation.evaluate import METRIC_NAMES, draw_metrics, load_test_set, make_scorer, score_batches, support_draws
from orchestrator.tracking.artifacts import load_model_dir, resolve_device
from orchestrator.tracking.data_version import data_version, sha256_file
from orchestrator.tracking.fetch import fetch_run_weights, fetch_weights, mlflow_call
from orchestrator.tracking.server import client_for, ensure_experiment, error_line, fast_fail, redact
from workers.data.folders import load_images
from workers.data.mvtec import list_categories

PREFIX = "fsad-"
CHAMPION, CHALLENGER = "champion", "challenger"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    run_id: str
    metric: str
    value: float | None
    previous_champion: str | None
    adapt_seconds: float
    calibration: dict[str, Any] | None = None

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4f}"
        cal = self.calibration
        verdicts = (f"; threshold {cal['threshold']:.6g} for a target false-alarm rate of {cal['target_fpr']:g}, "
                    f"calibrated on K={cal['shots']} normal shots" if cal else "; no threshold (K < 2)")
        return (f"registered {self.name} version {self.version} as @{self.alias} ({self.metric}={shown}; "
                f"adaptation {self.adapt_seconds * 1000:.0f} ms{verdicts}; run {self.run_id})")


def model_name(category: str) -> str:
    if not NAME_RE.match(category):
        raise InputError(f"category name {category!r}: expected letters, digits, '_', '.' or '-'")
    return PREFIX + category


# ---------------------------------------------------------------------------------------------
# Adapting and registering


def support_digest(images: torch.Tensor) -> str:
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def calibrate_support(model, cfg: Config, support: torch.Tensor, fpr: float | None = None, dictionary=None):
    """The version's calibration (orchestrator/evaluation/calibration.py) from its K shots; None when K < 2.
    dictionary: the one adapted to all K shots, if already built."""
    from orchestrator.evaluation.calibration import CalibrationSpec, calibrate

    if support.shape[0] < 2:
        return None
    scorer = make_scorer(OURS.name, model, cfg)
    device = next(model.parameters()).device  # where the model was put: calibrate beside it
    return calibrate(scorer, support, CalibrationSpec.from_config(cfg, OURS.name, fpr), cfg.eval.batch_size, device,
                     dictionary)


def version_description(category: str, support: torch.Tensor, info: dict[str, Any], calibration) -> str:
    """What a person reads on the registered version's page: K, the support images' hashes, the
    threshold and its target false-alarm rate."""
    lines = [f"fsad detector for {category}, adapted with K={int(support.shape[0])} normal images."]
    if calibration is not None:
        lines.append(f"Threshold {calibration.threshold:.6g} (image score above it: anomalous) for a target "
                     f"false-alarm rate of {calibration.target_fpr:g}, calibrated on the K shots alone "
                     f"(leave-one-out, {calibration.n_samples} samples, {calibration.estimator}); pixel threshold "
                     f"{calibration.pixel_threshold:.6g} for the masks.")
    else:
        lines.append("No threshold: calibration scores each shot against the others and needs K >= 2.")
    hashes = info.get("image_sha256") or []
    kind = "file sha256" if info.get("files") else "sha256 of the decoded image tensor"
    names = info.get("files") or [f"image {i}" for i in info.get("indices", range(len(hashes)))]
    lines.append(f"Support images ({kind}):")
    lines += [f"- {name}: {digest}" for name, digest in zip(names, hashes)]
    return "\n".join(lines)


def adapt(model, cfg: Config, support: torch.Tensor):
    """The category's task dictionary from K support images (K, 3, S, S); returns (dictionary, seconds)."""
    scorer = make_scorer(OURS.name, model, cfg)
    began = time.perf_counter()
    dictionary = scorer.adapt(support)
    return dictionary, time.perf_counter() - began


def category_metrics(model, cfg: Config, dictionary, data_root: Path, category: str) -> dict[str, float]:
    """Metrics of one adapted dictionary on the category's test set."""
    test = load_test_set(data_root, category, cfg.data.image_size)
    scorer = make_scorer(OURS.name, model, cfg)
    scores, maps = score_batches(scorer, dictionary, test.images, cfg.eval.batch_size, resolve_device("cpu"))
    found = draw_metrics(scores, maps, test)
    return {k: float(v) for k, v in found.items() if v is not None}


def register(uri: str, weights_dir: Path, category: str, support: torch.Tensor, support_info: dict[str, Any],
             data_root: Path | None = None, parent_run_id: str | None = None,
             extra_tags: dict[str, str] | None = None, fpr: float | None = None,
             settings: dict[str, Any] | None = None) -> Registration:
    """Adapt `weights_dir` to `category` with `support` (K, 3, S, S), package it as a pyfunc, log it in a
    registration run, create a version of fsad-<category> and move the aliases. `settings`: run-time keys
    (eval.*, tracking.*, data.max_pixels, train.device) over the model's config for this registration."""
    from orchestrator.tracking.pyfunc import save_dictionary, save_package

    name = model_name(category)
    model, cfg, meta = load_model_dir(weights_dir, device="cpu")
    cfg = _with_settings(cfg, settings)
    if cfg.train.method != OURS.model:
        raise InputError(f"only `ours` models can be registered; this one is {cfg.train.method}")
    dictionary, seconds = adapt(model, cfg, support)
    calibration = calibrate_support(model, cfg, support, fpr, dictionary)
    found: dict[str, float] = {}
    if data_root is not None and category in list_categories(data_root):
        found = category_metrics(model, cfg, dictionary, data_root, category)
    metric = cfg.tracking.champion_metric
    value = found.get(metric)
    version_info = data_version(data_root) if data_root is not None else {"hash": support_digest(support), "kind": "support"}
    tags = {
        "fsad.category": category, "fsad.shots": str(int(support.shape[0])), "data.hash": version_info["hash"],
        "data.hash_kind": version_info["kind"], "fsad.support_sha256": support_digest(support),
        "fsad.champion_metric": metric, "fsad.seen_in_training": str(category in meta.get("train_categories", [])).lower(),
        **{f"fsad.support_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in support_info.items()},
        **({"fsad.threshold": f"{calibration.threshold:.6g}", "fsad.target_fpr": f"{calibration.target_fpr:g}",
            "fsad.pixel_threshold": f"{calibration.pixel_threshold:.6g}",
            "fsad.calibration": calibration.estimator} if calibration is not None else {}),
        **{f"metric.{k}": f"{v:.6g}" for k, v in found.items()},
        **(extra_tags or {}),
    }
    if parent_run_id:
        tags["fsad.train_run_id"] = parent_run_id
    tags = {k: redact(v)[:5000] for k, v in tags.items()}

    client = mlflow_call("connecting to the tracking store", client_for, uri)
    with tempfile.TemporaryDirectory(prefix="fsad-register-") as tmp:
        tmp = Path(tmp)
        save_dictionary(dictionary, tmp / "dictionary.safetensors", category)
        save_package(tmp / "model", Path(weights_dir), tmp / "dictionary.safetensors",
                     {"fsad_category": category, "fsad_shots": int(support.shape[0])},
                     calibration.to_dict() if calibration is not None else None)
        experiment_id = _experiment(client, cfg.tracking.experiment)
        run_tags = {k: v for k, v in tags.items() if not k.startswith("metric.")}
        run_tags["fsad.kind"] = "register"
        if parent_run_id and _run_exists(client, parent_run_id):
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow_call("creating the registration run", client.create_run, experiment_id,
                           tags=run_tags, run_name=f"register {name}")
        run_id = run.info.run_id
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics_out = [Metric(k, v, stamp, 0) for k, v in found.items()] + [Metric("adapt_seconds", seconds, stamp, 0)]
        if calibration is not None:  # calibration is K more adaptations: timed apart from adapt_seconds
            metrics_out += [Metric("threshold", calibration.threshold, stamp, 0),
                            Metric("target_fpr", calibration.target_fpr, stamp, 0),
                            Metric("calibration_seconds", calibration.seconds, stamp, 0)]
        mlflow_call("logging metrics", client.log_batch, run_id, metrics=metrics_out)
        mlflow_call("uploading the model", client.log_artifacts, run_id, str(tmp / "model"), "model")
        mlflow_call("closing the registration run", client.set_terminated, run_id, "FINISHED")
    _ensure_registered_model(client, name, category)
    description = redact(version_description(category, support, support_info, calibration))[:5000]
    version = mlflow_call(f"creating a version of {name}", client.create_model_version, name,
                           f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags, description=description)
    alias, previous = _move_aliases(client, name, version.version, metric, value)
    return Registration(name, version.version, alias, run_id, metric, value, previous, seconds,
                        calibration.to_dict() if calibration is not None else None)


def _experiment(client, name: str) -> str:
    return mlflow_call("looking up the experiment", ensure_experiment, client, name)


def _run_exists(client, run_id: str) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001
        return False


def _ensure_registered_model(client, name: str, category: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"fsad.category": category},
                                       description=f"fsad anomaly detector for category {category}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise InputError(f"creating registered model {name} failed: {error_line(exc)}") from None


def current_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise InputError(f"looking up {name}@{alias} failed: {error_line(exc)}") from None


def beats(value: float | None, champion_value: float | None, has_champion: bool) -> bool:
    """Does a new version take @champion? Only on strict improvement of the configured metric."""
    if not has_champion:
        return True
    if value is None:
        return False
    return champion_value is None or value > champion_value


def _move_aliases(client, name: str, version: str, metric: str, value: float | None) -> tuple[str, str | None]:
    champion = current_alias(client, name, CHAMPION)
    champion_value = None
    if champion is not None and f"metric.{metric}" in champion.tags:
        champion_value = float(champion.tags[f"metric.{metric}"])
    alias = CHAMPION if beats(value, champion_value, champion is not None) else CHALLENGER
    mlflow_call(f"setting {name}@{alias}", client.set_registered_model_alias, name, alias, version)
    return alias, champion.version if champion is not None else None


# ---------------------------------------------------------------------------------------------
# The two commands' library calls


def _with_settings(cfg: Config, settings: dict[str, Any] | None) -> Config:
    from workers.data.images import set_max_pixels

    cfg = with_values(cfg, settings) if settings else cfg
    set_max_pixels(cfg.data.max_pixels)
    return cfg


def register_from_run(uri: str, run_id: str, category: str, support_dir: str | None, draw: int | None,
                      shots: int | None, data_root: str | None, fpr: float | None = None,
                      settings: dict[str, Any] | None = None) -> Registration:
    with fast_fail(retries=2), tempfile.TemporaryDirectory(prefix="fsad-run-") as tmp:
        weights = fetch_run_weights(uri, run_id, Path(tmp))
        _, cfg, meta = load_model_dir(weights)
        cfg = _with_settings(cfg, settings)
        root = Path(data_root or meta.get("data_root", ""))
        support, info = _support(cfg, category, support_dir, draw, shots, root)
        has_data = root.is_dir() and category in list_categories(root)
        return register(uri, weights, category, support, info, root if has_data else None, parent_run_id=run_id,
                        fpr=fpr, settings=settings)


def adapt_and_register(uri: str, model: str, support_dir: str, category: str, data_root: str | None,
                       fpr: float | None = None,
                       settings: dict[str, Any] | None = None) -> Registration:
    with fast_fail(retries=2), tempfile.TemporaryDirectory(prefix="fsad-adapt-") as tmp:
        weights, source = fetch_weights(uri, model, Path(tmp))
        _, cfg, _ = load_model_dir(weights)
        cfg = _with_settings(cfg, settings)
        support, info = _support(cfg, category, support_dir, None, None, None)
        root = Path(data_root) if data_root else None
        if root is not None and category not in list_categories(root):
            raise InputError(f"--data {data_root} has no category {category!r} to measure the new model on")
        parent = source.pop("fsad.train_run_id", None)
        return register(uri, weights, category, support, info, root, parent_run_id=parent, extra_tags=source,
                        fpr=fpr, settings=settings)


def _support(cfg: Config, category: str, support_dir: str | None, draw: int | None, shots: int | None,
             root: Path | None) -> tuple[torch.Tensor, dict[str, Any]]:
    if (support_dir is None) == (draw is None):
        raise InputError("give exactly one of --support DIR or --draw N")
    if support_dir is not None:
        images, files = load_images([support_dir], cfg.data.image_size)
        if shots is not None and shots != images.shape[0]:
            raise InputError(f"--shots {shots} but {support_dir} holds {images.shape[0]} images")
        return images, {"files": [f.name for f in files], "image_sha256": [sha256_file(f) for f in files]}
    if draw < 0:
        raise InputError(f"--draw {draw}: expected a draw index >= 0")
    if root is None or not root.is_dir():
        raise InputError(f"--draw needs the data root (--data); {root} does not exist")
    if category not in list_categories(root):
        raise InputError(f"category {category!r} not found under {root}; available: {', '.join(list_categories(root))}")
    k = shots or cfg.eval.shots
    test = load_test_set(root, category, cfg.data.image_size)
    index = support_draws(test.support_pool.shape[0], k, draw + 1, cfg.eval.seed, category)[draw]
    support = test.support_pool[index]
    return support, {"draw": draw, "indices": index, "seed": cfg.eval.seed,
                     "image_sha256": [support_digest(image) for image in support]}


__all__ = ["Registration", "register", "register_from_run", "adapt_and_register", "beats", "model_name",
           "METRIC_NAMES"]
