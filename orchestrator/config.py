"""One config schema (nested dataclasses) for the CLI, params.yaml, tuning and tracking.

`load_config(path, overrides)` reads a YAML file shaped like the schema (missing keys keep their
defaults), applies `a.b=v` overrides (values parsed as YAML), type-checks every leaf and validates
ranges. Any problem is an InputError naming the key or file. `Config.to_dict()` / `flatten()` give the
resolved config to save beside checkpoints and to log as parameters.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from model.backbone import BackboneSpec
from model.energy import MAP_MODES, SparseSpec
from model.errors import InputError
from model.langevin import validate_langevin
from workers.episodes import AUGMENT_MODES

METHODS = ("ours", "knn", "maml_ae")


@dataclass
class DataConfig:
    image_size: int = 64  # images are resized to image_size × image_size
    categories: list[str] = field(default_factory=list)  # empty: every category under the root
    exclude: list[str] = field(default_factory=list)  # held out: never seen in training


@dataclass
class BackboneConfig:
    name: str = "conv"
    width: int = 32
    depth: int = 4
    stride: int = 8
    out_dim: int = 32
    max_width: int = 128
    weights: str = ""  # optional local state dict (.safetensors or torch file, weights_only)

    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, self.width, self.depth, self.stride, self.out_dim, self.max_width)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lam_max: float = 0.9
    lam_star: float = 0.1
    istc_steps: int = 5
    shrink: str = "sigshrink"
    tau: float = 20.0
    receptive_field: int = 3
    normalize: bool = True
    center: bool = True  # subtract the support set's mean volume (see model/energy.py)
    anomaly_map: str = "gradient"  # gradient (|∇ₓE|, the paper) | energy (upsampled position energies)
    map_smooth_sigma: float = 2.0  # Gaussian σ (pixels) applied to |∇ₓE| maps; 0 = off

    def sparse_spec(self) -> SparseSpec:
        return SparseSpec(
            self.lam_max, self.lam_star, self.istc_steps, self.shrink, self.tau, self.receptive_field,
            self.normalize, self.center,
        )


@dataclass
class LangevinConfig:
    steps: int = 5  # J
    step_size: float = 10.0  # β
    noise_scale: float = 0.005  # ω ~ N(0, (noise_scale² β) I); 1.0 is the paper's N(0, βI)


@dataclass
class InpaintConfig:
    min_frac: float = 0.1  # patch side as a fraction of the image side
    max_frac: float = 0.3


@dataclass
class TrainConfig:
    method: str = "ours"  # ours | maml_ae
    episodes: int = 100  # the default budget: `dvc repro` on fsad-real on 2 CPU cores (docs/data.md)
    shots: int = 5  # K during meta-training
    queries: int = 4  # M
    lr: float = 1e-3
    eta_rec: float = 1.0  # η₀
    eta_cd: float = 1.0  # η₁
    reg_weight: float = 1.0  # Du & Mordatch energy-magnitude regulariser (keeps E⁻ from saturating at 1)
    detach_rec: bool = False  # True: L_rec does not backpropagate through the Langevin chain
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    augment: str = "episode"  # none | episode | image
    seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"  # cpu | cuda | cuda:N


@dataclass
class MamlConfig:
    width: int = 32
    latent: int = 64
    inner_steps: int = 5
    inner_lr: float = 0.05
    outer_lr: float = 1e-3


@dataclass
class EvalConfig:
    shots: int = 10
    draws: int = 5
    seed: int = 0
    batch_size: int = 32
    augment_support: bool = False  # add the 8 dihedral copies of every shot to the dictionary
    overlays: int = 8  # overlay PNGs written per evaluation


@dataclass
class PipelineConfig:
    """The DVC pipeline (dvc.yaml, docs/data.md): which dataset, folds, K values and methods `dvc repro` runs.

    The training budget is train.*, the draws and their seed eval.draws / eval.seed.
    """

    name: str = "fsad-real"  # data/<name>/: manifest.parquet, rejects.parquet, splits.parquet
    source: str = "../shared/data/fsad-real"  # a folder, s3://BUCKET/PREFIX or elpv
    targets: list[str] = field(default_factory=lambda: ["juice_bottle", "kolektor", "magnetic_tile", "tire"])
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])  # K values drawn and evaluated
    methods: list[str] = field(default_factory=lambda: ["ours", "knn"])  # ours | knn | maml_ae


@dataclass
class TrackingConfig:
    experiment: str = "fsad"  # MLflow experiment of training and evaluation runs
    champion_metric: str = "image_auroc"  # a new registered version becomes @champion only if it beats it here


@dataclass
class DistributedConfig:
    """Ray meta-training (`fsad train --workers N`); see orchestrator/distributed.py and docs/cluster.md."""

    workers: int = 2  # Langevin workers (Ray actors)
    episode_workers: int = 1  # episode workers, each loading a shard of the categories
    mode: str = "async"  # sync: one episode per update at staleness 0 (reproducible) | async: throughput
    max_staleness: int = 2  # async: results made more than this many versions ago are dropped
    max_in_flight: int = 2  # async: requests queued per Langevin worker
    broadcast_interval: int = 1  # async: ray.put new weights every this many updates
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0  # > 0: workers run on the GPU Ray assigns them
    num_cpus_per_episode_worker: float = 0.0
    max_restarts: int = 5  # Ray restarts a crashed actor this many times (-1: forever)
    max_task_retries: int = 0  # Ray-level retries; 0: the learner re-issues failed episodes itself (counted)
    start_timeout_s: float = 60.0  # workers not placed and ready within this: error (e.g. too many GPUs)
    connect_timeout_s: float = 30.0  # --address not joined within this: error
    object_store_mb: int = 0  # object store of an in-process Ray (no --address); 0: Ray's default


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    langevin: LangevinConfig = field(default_factory=LangevinConfig)
    inpaint: InpaintConfig = field(default_factory=InpaintConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    maml: MamlConfig = field(default_factory=MamlConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flatten(self) -> dict[str, Any]:
        return flatten(self.to_dict())

    def validate(self) -> "Config":
        validate(self)
        return self


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Building from dicts with type checks


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is list:
        (item_type,) = get_args(hint)
        if isinstance(value, str):  # "a,b" from the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise InputError(f"config {key}={value!r}: expected a list")
        return [_coerce(v, item_type, f"{key}[]") for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"config {key}={value!r}: expected true or false")
    if isinstance(value, str) and hint in (int, float):
        # YAML 1.1 reads "1e-3" and "nan" as strings; accept any number Python can parse
        try:
            value = float(value) if hint is float else int(value)
        except ValueError:
            raise InputError(f"config {key}={value!r}: expected {'a number' if hint is float else 'an integer'}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(f"config {key}={value!r}: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config {key}={value!r}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InputError(f"config {key}={value!r}: expected a string")
        return str(value)
    return value


def from_dict(cls: type, tree: dict[str, Any] | None, prefix: str = "") -> Any:
    tree = dict(tree or {})
    hints = get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in fields(cls)}
    for unknown in sorted(set(tree) - names):
        raise InputError(f"unknown config key {prefix + unknown!r}; expected one of {sorted(names)}")
    for f in fields(cls):
        if f.name not in tree:
            continue
        hint, key, value = hints[f.name], f"{prefix}{f.name}", tree[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise InputError(f"config {key}: expected a mapping of {hint.__name__} fields")
            kwargs[f.name] = from_dict(hint, value, key + ".")
        else:
            kwargs[f.name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise InputError(f"override {text!r}: expected KEY=VALUE, e.g. train.episodes=100")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            raise InputError(f"config file {path} is not valid YAML (line {line})") from exc
        if not isinstance(tree, dict):
            raise InputError(f"config file {path}: expected a mapping at the top level")
        tree = {k: v for k, v in tree.items() if k in {f.name for f in fields(Config)}}
    for text in overrides:
        key, value = parse_override(text)
        _set_path(tree, key, value)
    return from_dict(Config, tree).validate()


def config_from_dict(tree: dict[str, Any]) -> Config:
    return from_dict(Config, tree).validate()


# ---------------------------------------------------------------------------------------------
# Range checks: every hyper-parameter a user can get wrong


def _finite(key: str, value: float, low: float | None = None, strict: bool = True) -> None:
    if not math.isfinite(value):
        raise InputError(f"{key}={value}: expected a finite number")
    if low is not None and (value <= low if strict else value < low):
        raise InputError(f"{key}={value}: expected a value {'>' if strict else '>='} {low}")


def validate(cfg: Config) -> None:
    if cfg.data.image_size < 8:
        raise InputError(f"data.image_size={cfg.data.image_size}: expected >= 8")
    if cfg.data.image_size % cfg.model.backbone.stride:
        raise InputError(
            f"data.image_size={cfg.data.image_size}: expected a multiple of model.backbone.stride="
            f"{cfg.model.backbone.stride}"
        )
    m = cfg.model
    m.sparse_spec().validate()
    _finite("model.map_smooth_sigma", m.map_smooth_sigma, 0.0, strict=False)
    if m.anomaly_map not in MAP_MODES:
        raise InputError(f"model.anomaly_map={m.anomaly_map!r}: expected one of {MAP_MODES}")
    validate_langevin(cfg.langevin.steps, cfg.langevin.step_size, cfg.langevin.noise_scale)
    p = cfg.inpaint
    if not (0 < p.min_frac <= p.max_frac <= 1):
        raise InputError(f"inpaint.min_frac={p.min_frac}, max_frac={p.max_frac}: expected 0 < min <= max <= 1")
    t = cfg.train
    if t.method not in ("ours", "maml_ae"):
        raise InputError(f"train.method={t.method!r}: expected ours or maml_ae")
    for key, value in (("train.episodes", t.episodes), ("train.shots", t.shots), ("train.queries", t.queries),
                       ("train.checkpoint_every", t.checkpoint_every), ("eval.shots", cfg.eval.shots),
                       ("eval.draws", cfg.eval.draws), ("eval.batch_size", cfg.eval.batch_size)):
        if value < 1:
            raise InputError(f"{key}={value}: expected an integer >= 1")
    for key, value in (("train.lr", t.lr), ("maml.inner_lr", cfg.maml.inner_lr), ("maml.outer_lr", cfg.maml.outer_lr)):
        _finite(key, value, 0.0)
    for key, value in (("train.eta_rec", t.eta_rec), ("train.eta_cd", t.eta_cd), ("train.reg_weight", t.reg_weight),
                       ("train.grad_clip", t.grad_clip)):
        _finite(key, value, 0.0, strict=False)
    if t.augment not in AUGMENT_MODES:
        raise InputError(f"train.augment={t.augment!r}: expected one of {AUGMENT_MODES}")
    if not (t.device == "cpu" or t.device == "cuda" or t.device.startswith("cuda:")):
        raise InputError(f"train.device={t.device!r}: expected cpu, cuda or cuda:N")
    if cfg.maml.inner_steps < 0:
        raise InputError(f"maml.inner_steps={cfg.maml.inner_steps}: expected >= 0")
    if cfg.eval.overlays < 0:
        raise InputError(f"eval.overlays={cfg.eval.overlays}: expected >= 0")
    validate_distributed(cfg.distributed)
    validate_tracking(cfg.tracking)
    validate_pipeline(cfg.pipeline)


def validate_pipeline(p: PipelineConfig) -> None:
    if not p.name or "/" in p.name or p.name.startswith("."):
        raise InputError(f"pipeline.name={p.name!r}: expected a plain dataset name such as fsad-real")
    if not p.source.strip():
        raise InputError("pipeline.source is empty: expected a folder, s3://BUCKET/PREFIX or elpv")
    if not p.targets or len(set(p.targets)) != len(p.targets):
        raise InputError(f"pipeline.targets={p.targets}: expected a non-empty list of distinct categories")
    if not p.shots or min(p.shots) < 1:
        raise InputError(f"pipeline.shots={p.shots}: expected a non-empty list of integers >= 1")
    bad = [m for m in p.methods if m not in METHODS]
    if not p.methods or bad:
        raise InputError(f"pipeline.methods={p.methods}: expected a non-empty list of {', '.join(METHODS)}")


def validate_tracking(tr: TrackingConfig) -> None:
    if tr.champion_metric not in ("image_auroc", "pixel_auroc", "pro", "miou"):
        raise InputError(f"tracking.champion_metric={tr.champion_metric!r}: expected image_auroc, pixel_auroc, pro or miou")
    if not tr.experiment.strip():
        raise InputError("tracking.experiment is empty: expected an MLflow experiment name")


def validate_distributed(d: DistributedConfig) -> None:
    if d.mode not in ("sync", "async"):
        raise InputError(f"distributed.mode={d.mode!r}: expected sync or async")
    for key, value, low in (("workers", d.workers, 1), ("episode_workers", d.episode_workers, 1),
                            ("max_staleness", d.max_staleness, 0), ("max_in_flight", d.max_in_flight, 1),
                            ("broadcast_interval", d.broadcast_interval, 1), ("max_restarts", d.max_restarts, -1),
                            ("max_task_retries", d.max_task_retries, -1), ("object_store_mb", d.object_store_mb, 0)):
        if value < low:
            raise InputError(f"distributed.{key}={value}: expected an integer >= {low}")
    for key, value in (("num_cpus_per_worker", d.num_cpus_per_worker), ("num_gpus_per_worker", d.num_gpus_per_worker),
                       ("num_cpus_per_episode_worker", d.num_cpus_per_episode_worker)):
        _finite(f"distributed.{key}", value, 0.0, strict=False)
    for key, value in (("start_timeout_s", d.start_timeout_s), ("connect_timeout_s", d.connect_timeout_s)):
        _finite(f"distributed.{key}", value, 0.0)


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
