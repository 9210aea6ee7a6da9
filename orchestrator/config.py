"""One config schema (nested dataclasses) for the CLI, params.yaml, tuning and tracking.

`load_config(path, overrides)` reads a YAML file shaped like the schema (missing keys keep their
defaults), applies `a.b=v` overrides (values parsed as YAML), type-checks every leaf and validates
ranges. Any problem is an InputError naming the key or file. `Config.to_dict()` / `flatten()` give the
resolved config to save beside checkpoints and to log as parameters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, get_args, get_origin, get_type_hints

import yaml
from PIL import Image

from model.ebm.backbone import BackboneSpec
from model.ebm.energy import MAP_MODES, SparseSpec
from model.errors import InputError
from model.ebm.inpaint import CORRUPTIONS
from model.ebm.langevin import validate_langevin
from model.methods import METHODS  # the evaluation methods, registered once in model/methods/
from workers.data.images import DEFAULT_MAX_PIXELS
from workers.episodes import AUGMENT_MODES
from workers.files import temp_file_beside
from workers.data.paths import plain_name


# Images are resized to at most this: the largest source images (MVTec) are 1024 px, and every
# training image is held in memory at this size (3 × S² float32), so larger values only exhaust memory.
MAX_IMAGE_SIZE = 1024
MAX_PIXELS_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL warns above this and refuses above twice it


@dataclass
class DataConfig:
    image_size: int = 128  # images are resized to image_size × image_size (non-square ones are squashed)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images (width × height, read from the header) are refused undecoded
    categories: list[str] = field(default_factory=list)  # empty: every category under the root
    exclude: list[str] = field(default_factory=list)  # held out: never seen in training


@dataclass
class BackboneConfig:
    name: str = "conv"
    width: int = 32
    depth: int = 4
    stride: int = 4  # 128 px / 4 = 32×32 positions: a cell is 4×4 px, smaller than tire's smallest defects
    out_dim: int = 128  # chosen on screw and pcb_deeppcb over 32 (docs/benchmarks.md, "Feature width")
    max_width: int = 128
    weights: str = ""  # optional local state dict (.safetensors or torch file, weights_only)

    def spec(self) -> BackboneSpec:
        return BackboneSpec(self.name, self.width, self.depth, self.stride, self.out_dim, self.max_width)


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lam_max: float = 0.9
    lam_star: float = 0.05  # ISTC's last threshold; FISTA's λ (cosine units: an atom enters above 0.05)
    istc_steps: int = 5
    shrink: str = "hard"  # Eq. 7 (the soft threshold): FISTA then solves the Lasso exactly
    tau: float = 20.0
    receptive_field: int = 1  # measured on the validation categories: l = 1 scores as l = 3 at 1/9 of the cost
    normalize: bool = True
    center: bool = False  # subtract the support mean volume; off: measured on the validation categories (README)
    solver: str = "fista"  # istc (the paper's Eq. 6 with continuation) | fista (Eq. 5 at λ = lam_star, to tol)
    max_steps: int = 20  # FISTA's step budget
    tol: float = 1e-4  # FISTA's tolerance on the largest code change
    top_k_atoms: int = 16  # FISTA codes each position over its k most similar atoms; 0 = all
    image_score: str = "topk"  # mean | topk (mean of the top top_frac position energies)
    top_frac: float = 0.01
    anomaly_map: str = "energy"  # gradient (|∇ₓE|, the paper) | energy (upsampled position energies)
    map_smooth_sigma: float = 2.0  # Gaussian σ (pixels) applied to |∇ₓE| maps; 0 = off

    def sparse_spec(self) -> SparseSpec:
        return SparseSpec(
            lam_max=self.lam_max, lam_star=self.lam_star, istc_steps=self.istc_steps, shrink=self.shrink,
            tau=self.tau, receptive_field=self.receptive_field, normalize=self.normalize, center=self.center,
            solver=self.solver, max_steps=self.max_steps, tol=self.tol, top_k_atoms=self.top_k_atoms,
            image_score=self.image_score, top_frac=self.top_frac,
        )


@dataclass
class LangevinConfig:
    steps: int = 3  # J
    step_size: float = 10.0  # β
    noise_scale: float = 0.005  # ω ~ N(0, (noise_scale² β) I); 1.0 is the paper's N(0, βI)


@dataclass
class InpaintConfig:
    min_frac: float = 0.1  # patch side as a fraction of the image side
    max_frac: float = 0.3
    kinds: list[str] = field(default_factory=lambda: ["noise", "cutpaste", "blend"])  # chain starts: noise | cutpaste | blend


@dataclass
class TrainConfig:
    method: str = "ours"  # ours | maml_ae
    episodes: int = 40  # the default budget on 2 CPU cores at 128 px (docs/benchmarks.md)
    shots: int = 5  # K during meta-training
    queries: int = 2  # M
    lr: float = 3e-4
    eta_rec: float = 1.0  # η₀
    eta_cd: float = 1.0  # η₁
    reg_weight: float = 1.0  # Du & Mordatch energy-magnitude regulariser (keeps E⁻ from saturating at 1)
    detach_rec: bool = False  # True: L_rec does not backpropagate through the Langevin chain
    rank_weight: float = 0.1  # −log(participation ratio) of the support features: against feature collapse
    val_categories: list[str] = field(default_factory=list)  # set aside for checkpoint selection (never the target)
    val_every: int = 10  # episodes between validation scores
    val_images: int = 40  # test images per validation category (half normal, half anomalous)
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
    fpr: float = 0.01  # target false-alarm rate of the calibrated threshold (--fpr), in (0, 0.5]
    # threshold estimator on the leave-one-shot-out scores (model/calibration.py), its augmentations and the
    # K - 1 -> K size correction: chosen on the validation categories screw and pcb_deeppcb (docs/benchmarks.md)
    calibration: str = "normal_t"
    calibration_augment: list[str] = field(default_factory=lambda: ["hflip", "vflip", "shift"])
    calibration_size_correction: bool = True


@dataclass
class PipelineConfig:
    """The DVC pipeline (dvc.yaml, docs/data.md): which dataset, folds, K values and methods `dvc repro` runs.

    The training budget is train.*, the draws and their seed eval.draws / eval.seed.
    """

    name: str = "fsad-real"  # data/<name>/: manifest.parquet, rejects.parquet, splits.parquet
    source: str = "../shared/data/fsad-real"  # a folder, s3://BUCKET/PREFIX or elpv
    targets: list[str] = field(default_factory=lambda: ["juice_bottle", "kolektor", "magnetic_tile", "tire"])
    shots: list[int] = field(default_factory=lambda: [1, 5, 10])  # K values drawn and evaluated
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # any of METHODS


@dataclass
class ExperimentsConfig:
    """The paper's experiments beyond the leave-one-out table (experiments/dvc.yaml, docs/results.md):
    ablations on a few held-out targets and scene-adaptive video. `profile` picks a compute budget:
    quick (these defaults: the whole protocol in < 45 min on 2 CPU cores) or full (PROFILES["full"])."""

    profile: str = "quick"  # quick | full; full replaces the keys listed in PROFILES["full"]
    ablation_targets: list[str] = field(default_factory=lambda: ["juice_bottle", "tire"])  # folds the ablations run on
    ablations: list[str] = field(default_factory=lambda: ["l3", "sigshrink", "nosparsity", "j1", "noise_init"])
    video_root: str = "../shared/data/fsad-video"
    video_targets: list[str] = field(default_factory=lambda: ["ucsd_ped2", "avenue"])  # target scenes
    video_shots: list[int] = field(default_factory=lambda: [1, 5, 10])  # K normal frames of the target scene
    video_draws: int = 5
    video_test_every: int = 2  # score every n-th test frame (1: all, as the paper)
    video_train_every: int = 1  # use every n-th training frame of a scene
    video_temporal: bool = False  # App. B.4: add a frame-difference cue (see orchestrator/evaluation/video.py)


# Named budgets for `experiments.profile`: overrides applied on top of the file, under command-line --set.
# quick is the defaults themselves; full is for a GPU or a cluster (docs/results.md gives its cost).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {},
    "full": {
        "train.episodes": 1000,
        "pipeline.shots": [1, 2, 4, 8, 10],
        "eval.draws": 5,
        "experiments.ablation_targets": ["juice_bottle", "kolektor", "magnetic_tile", "tire"],
        "experiments.ablations": ["l3", "sigshrink", "istc", "mean_score", "nosparsity", "j1", "j10", "noise_init",
                                  "noise_only"],
        "experiments.video_test_every": 1,
    },
}


@dataclass
class TrackingConfig:
    experiment: str = "fsad"  # MLflow experiment of training and evaluation runs
    champion_metric: str = "image_auroc"  # a new registered version becomes @champion only if it beats it here


@dataclass
class DistributedConfig:
    """Ray meta-training (`fsad train --workers N`); see orchestrator/training/remote.py and docs/cluster.md."""

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
class FloatRange:
    """A float search dimension: uniform on [low, high], log-uniform with log: true (then low > 0)."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False
    search: bool = True  # false: the trial keeps the config's value


@dataclass
class IntChoices:
    """An integer search dimension: one of `choices`."""

    choices: list[int] = field(default_factory=list)
    search: bool = True


@dataclass
class TuneSpace:
    """What `fsad tune` searches; each knob sets the config key in TUNE_KEYS (docs/tuning.md)."""

    lam_max: FloatRange = field(default_factory=lambda: FloatRange(0.5, 2.0))  # model.lam_max (λ_max)
    lam_star: FloatRange = field(default_factory=lambda: FloatRange(0.01, 0.5, log=True))  # model.lam_star (λ*)
    tau: FloatRange = field(default_factory=lambda: FloatRange(2.0, 100.0, log=True))  # model.tau (SigShrink τ)
    step_size: FloatRange = field(default_factory=lambda: FloatRange(1.0, 100.0, log=True))  # langevin.step_size (β)
    shots: IntChoices = field(default_factory=lambda: IntChoices([1, 2, 5, 10]))  # train.shots (K)
    receptive_field: IntChoices = field(default_factory=lambda: IntChoices([1, 3, 5], False))  # model.receptive_field (l)
    langevin_steps: IntChoices = field(default_factory=lambda: IntChoices([3, 5, 10], False))  # langevin.steps (J)


TUNE_KEYS = {"lam_max": "model.lam_max", "lam_star": "model.lam_star", "tau": "model.tau",
             "step_size": "langevin.step_size", "shots": "train.shots", "receptive_field": "model.receptive_field",
             "langevin_steps": "langevin.steps"}


@dataclass
class TuneConfig:
    """`fsad tune` (orchestrator/tuning/): search space, validation protocol, pruner, resume."""

    space: TuneSpace = field(default_factory=TuneSpace)
    validation: list[str] = field(default_factory=list)  # validation categories; empty: the last non-target one
    eval_every: int = 25  # report the validation AUROC every this many training episodes (pruning points)
    eval_shots: int = 5  # K of the validation support draws (fixed across trials)
    eval_draws: int = 1
    eval_images: int = 16  # per validation category: at most this many test images, half of them normal
    pruner: str = "median"  # median | hyperband | none
    startup_trials: int = 2  # median: no pruning until this many trials have finished
    warmup_steps: int = 0  # median: no pruning before this episode of a trial
    sampler_seed: int = 0  # TPE sampler seed
    heartbeat_interval: int = 10  # seconds; a trial silent for grace_period is failed and retried
    grace_period: int = 30
    max_retry: int = 2  # a trial failed by heartbeat is retried at most this many times


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
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

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


def from_dict(cls: type, tree: dict[str, Any] | None, prefix: str = "", base: Any = None) -> Any:
    """`base` (default: cls()) supplies the keys `tree` leaves out, e.g. a field's own default_factory value."""
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
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            kwargs[f.name] = from_dict(hint, value, key + ".", default)
        else:
            kwargs[f.name] = _coerce(value, hint, key)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A validated copy of cfg with {dotted key: value} set (ablations, tuning trials)."""
    tree = cfg.to_dict()  # dataclasses.asdict: a deep copy
    for key, value in values.items():
        _set_path(tree, key, value)
    return config_from_dict(tree)


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
    parsed = [parse_override(text) for text in overrides]
    profile = dict(parsed).get("experiments.profile", (tree.get("experiments") or {}).get("profile", "quick"))
    if profile not in PROFILES:
        raise InputError(f"experiments.profile={profile!r}: expected one of {', '.join(PROFILES)}")
    for key, value in PROFILES[profile].items():  # the profile beats the file; --set beats both
        _set_path(tree, key, value)
    for key, value in parsed:
        _set_path(tree, key, value)
    return from_dict(Config, tree).validate()


def config_from_dict(tree: dict[str, Any]) -> Config:
    if not isinstance(tree, dict):
        raise InputError(f"config: expected a mapping of sections (data, model, train, ...); got a {type(tree).__name__}")
    return from_dict(Config, tree).validate()


# ---------------------------------------------------------------------------------------------
# Range checks: every hyper-parameter a user can get wrong


def _finite(key: str, value: float, low: float | None = None, strict: bool = True) -> None:
    if not math.isfinite(value):
        raise InputError(f"{key}={value}: expected a finite number")
    if low is not None and (value <= low if strict else value < low):
        raise InputError(f"{key}={value}: expected a value {'>' if strict else '>='} {low}")


def validate(cfg: Config) -> None:
    if not 8 <= cfg.data.image_size <= MAX_IMAGE_SIZE:
        raise InputError(f"data.image_size={cfg.data.image_size}: expected 8 to {MAX_IMAGE_SIZE}")
    if not 1 <= cfg.data.max_pixels <= MAX_PIXELS_LIMIT:
        raise InputError(f"data.max_pixels={cfg.data.max_pixels}: expected 1 to {MAX_PIXELS_LIMIT} "
                         "(above that PIL itself treats an image as a decompression bomb)")
    for key, names in (("data.categories", cfg.data.categories), ("data.exclude", cfg.data.exclude),
                       ("pipeline.targets", cfg.pipeline.targets),
                       ("experiments.ablation_targets", cfg.experiments.ablation_targets),
                       ("experiments.video_targets", cfg.experiments.video_targets),
                       ("tune.validation", cfg.tune.validation), ("train.val_categories", cfg.train.val_categories)):
        for name in names:
            plain_name(name, key)
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
    if not p.kinds or any(k not in CORRUPTIONS for k in p.kinds):
        raise InputError(f"inpaint.kinds={p.kinds}: expected a non-empty list of {', '.join(CORRUPTIONS)}")
    t = cfg.train
    if t.method not in ("ours", "maml_ae"):
        raise InputError(f"train.method={t.method!r}: expected ours or maml_ae")
    for key, value in (("train.episodes", t.episodes), ("train.shots", t.shots), ("train.queries", t.queries),
                       ("train.checkpoint_every", t.checkpoint_every), ("train.val_every", t.val_every),
                       ("train.val_images", t.val_images), ("eval.shots", cfg.eval.shots),
                       ("eval.draws", cfg.eval.draws), ("eval.batch_size", cfg.eval.batch_size)):
        if value < 1:
            raise InputError(f"{key}={value}: expected an integer >= 1")
    for key, value in (("train.lr", t.lr), ("maml.inner_lr", cfg.maml.inner_lr), ("maml.outer_lr", cfg.maml.outer_lr)):
        _finite(key, value, 0.0)
    for key, value in (("train.eta_rec", t.eta_rec), ("train.eta_cd", t.eta_cd), ("train.reg_weight", t.reg_weight),
                       ("train.grad_clip", t.grad_clip), ("train.rank_weight", t.rank_weight)):
        _finite(key, value, 0.0, strict=False)
    if t.augment not in AUGMENT_MODES:
        raise InputError(f"train.augment={t.augment!r}: expected one of {AUGMENT_MODES}")
    if not (t.device == "cpu" or t.device == "cuda" or t.device.startswith("cuda:")):
        raise InputError(f"train.device={t.device!r}: expected cpu, cuda or cuda:N")
    if cfg.maml.inner_steps < 0:
        raise InputError(f"maml.inner_steps={cfg.maml.inner_steps}: expected >= 0")
    if cfg.eval.overlays < 0:
        raise InputError(f"eval.overlays={cfg.eval.overlays}: expected >= 0")
    from model.calibration import ESTIMATORS, check_fpr

    check_fpr(cfg.eval.fpr, "eval.fpr")
    if cfg.eval.calibration not in ESTIMATORS:
        raise InputError(f"eval.calibration={cfg.eval.calibration!r}: expected one of {', '.join(ESTIMATORS)}")
    from orchestrator.evaluation.calibration import AUGMENTS

    for kind in cfg.eval.calibration_augment:
        if kind not in AUGMENTS:
            raise InputError(f"eval.calibration_augment: {kind!r} is not one of {', '.join(AUGMENTS)}")
    if not isinstance(cfg.eval.calibration_size_correction, bool):
        raise InputError(f"eval.calibration_size_correction={cfg.eval.calibration_size_correction!r}: "
                         "expected true or false")
    validate_distributed(cfg.distributed)
    validate_tracking(cfg.tracking)
    validate_pipeline(cfg.pipeline)
    validate_experiments(cfg.experiments)
    validate_tune(cfg)


def validate_tune(cfg: Config) -> None:
    """The search space: non-empty ranges, log bounds > 0, and every bound/choice valid in the config."""
    t = cfg.tune
    for name, key in TUNE_KEYS.items():
        dim, where = getattr(t.space, name), f"tune.space.{name}"
        if isinstance(dim, FloatRange):
            _finite(f"{where}.low", dim.low)
            _finite(f"{where}.high", dim.high)
            if dim.low > dim.high:
                raise InputError(f"{where}: low={dim.low} > high={dim.high} (inverted range)")
            if dim.low == dim.high:
                raise InputError(f"{where}: low = high = {dim.low} (empty range); set search: false to fix {key}")
            if dim.log and dim.low <= 0:
                raise InputError(f"{where}: log range needs low > 0; got low={dim.low}")
            values = [dim.low, dim.high]
        else:
            if not dim.choices or len(set(dim.choices)) != len(dim.choices):
                raise InputError(f"{where}.choices={dim.choices}: expected a non-empty list of distinct integers")
            values = list(dim.choices)
        if dim.search:
            for value in values:  # each bound or choice must make a valid config on its own
                try:
                    _check_setting(cfg, key, value)
                except InputError as exc:
                    raise InputError(f"{where}: {value} is not a valid {key} ({exc})") from None
    s = t.space
    if s.lam_star.search or s.lam_max.search:  # λ* <= λ_max for every sample
        star_high = s.lam_star.high if s.lam_star.search else cfg.model.lam_star
        max_low = s.lam_max.low if s.lam_max.search else cfg.model.lam_max
        if star_high > max_low:
            raise InputError(f"tune.space: lam_star up to {star_high} can exceed lam_max from {max_low}; "
                             "expected lam_star.high <= lam_max.low")
    for key, value, low in (("eval_every", t.eval_every, 1), ("eval_shots", t.eval_shots, 1),
                            ("eval_draws", t.eval_draws, 1), ("eval_images", t.eval_images, 2),
                            ("startup_trials", t.startup_trials, 0), ("warmup_steps", t.warmup_steps, 0),
                            ("heartbeat_interval", t.heartbeat_interval, 1), ("grace_period", t.grace_period, 1),
                            ("max_retry", t.max_retry, 0)):
        if value < low:
            raise InputError(f"tune.{key}={value}: expected an integer >= {low}")
    if t.grace_period <= t.heartbeat_interval:
        raise InputError(f"tune.grace_period={t.grace_period}: expected more than tune.heartbeat_interval="
                         f"{t.heartbeat_interval}")
    if t.pruner not in ("median", "hyperband", "none"):
        raise InputError(f"tune.pruner={t.pruner!r}: expected median, hyperband or none")


def _check_setting(cfg: Config, key: str, value: Any) -> None:
    """Validate the model/langevin/train section that `key` lives in with `value` set."""
    section, _, leaf = key.partition(".")
    changed = dataclasses.replace(getattr(cfg, section), **{leaf: value})
    if leaf == "lam_max":  # the pair λ* <= λ_max is validate_tune's own check
        changed.lam_star = min(changed.lam_star, value)
    elif leaf == "lam_star":
        changed.lam_max = max(changed.lam_max, value)
    if section == "model":
        changed.sparse_spec().validate()
    elif section == "langevin":
        validate_langevin(changed.steps, changed.step_size, changed.noise_scale)
    elif value < 1:
        raise InputError(f"{key}={value}: expected an integer >= 1")


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


# Ablations (Tables 3-4, Fig. 5, Section 3.3): `ours` retrained with one change, evaluated on the same draws.
ABLATIONS: dict[str, list[str]] = {
    # Each row changes one thing from the defaults (solver fista, shrink hard, l = 1, top-k score).
    "l1": ["model.receptive_field=1"],  # Table 3: receptive field 1 (the default now; kept for old runs)
    "l3": ["model.receptive_field=3"],  # Table 3: receptive field 3
    "hard": ["model.shrink=hard"],  # Fig. 5: Eq. 7 (the default now; kept for old runs)
    "sigshrink": ["model.shrink=sigshrink"],  # Fig. 5: Eq. 9 SigShrink instead of Eq. 7
    "istc": ["model.solver=istc", "model.lam_star=0.1"],  # the paper's Eq. 6: 5 ISTC steps with continuation
    "mean_score": ["model.image_score=mean"],  # image energy = mean position energy (the paper's Eq. 8)
    "noise_only": ["inpaint.kinds=[noise]"],  # chains start from uniform-noise patches only
    "nosparsity": ["model.shrink=none"],  # Table 4: plain least squares, no shrinkage
    "j1": ["langevin.steps=1"],  # Langevin steps J
    "j10": ["langevin.steps=10"],
    "noise_init": ["inpaint.min_frac=1.0", "inpaint.max_frac=1.0"],  # negatives start from pure noise
}


def validate_experiments(e: ExperimentsConfig) -> None:
    if e.profile not in PROFILES:
        raise InputError(f"experiments.profile={e.profile!r}: expected one of {', '.join(PROFILES)}")
    bad = [a for a in e.ablations if a not in ABLATIONS]
    if bad:
        raise InputError(f"experiments.ablations={e.ablations}: unknown {bad}; expected names from {', '.join(ABLATIONS)}")
    if len(set(e.ablation_targets)) != len(e.ablation_targets):
        raise InputError(f"experiments.ablation_targets={e.ablation_targets}: expected distinct categories")
    if not e.video_shots or min(e.video_shots) < 1:
        raise InputError(f"experiments.video_shots={e.video_shots}: expected a non-empty list of integers >= 1")
    for key, value in (("experiments.video_draws", e.video_draws), ("experiments.video_test_every", e.video_test_every),
                       ("experiments.video_train_every", e.video_train_every)):
        if value < 1:
            raise InputError(f"{key}={value}: expected an integer >= 1")


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


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it, rename it over `path` and fsync the
    folder, else remove it. Readers never see half a file, and after a power cut the file is the old
    or the new one, never empty."""
    tmp = temp_file_beside(Path(path), suffix)  # mode 0666 & ~umask, as a plain write would have
    path = Path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def temporary_workdir(cwd: str | Path | None = None) -> Path | None:
    """The temporary copy the working directory lies in, or None. Ray unpacks a job's `--working-dir`
    (and py_modules) into <ray temp>/session_*/runtime_resources/<kind>/_ray_pkg_<hash>/ and deletes it
    when no job uses it any more: what a job writes there relative to its working directory is lost."""
    parts = Path(os.path.abspath(cwd if cwd is not None else os.getcwd())).parts
    for i, part in enumerate(parts):
        if part.startswith("_ray_pkg_") or part == "runtime_resources":
            end = next((j for j in range(i, len(parts)) if parts[j].startswith("_ray_pkg_")), i)
            return Path(*parts[: end + 1])
    return None


def check_not_temporary(path: str | Path, flag: str) -> None:
    """A file or folder the user must find afterwards may not lie in a temporary working directory."""
    temp = temporary_workdir()
    if temp is not None and Path(os.path.abspath(path)).is_relative_to(temp):
        raise InputError(f"{flag} {path} would be written into Ray's temporary copy of the working directory ({temp}), "
                         "which is deleted after the job; expected an absolute path on a filesystem you can reach "
                         "(docs/cluster.md)")


def check_writable_dir(path: str | Path, flag: str = "--out") -> None:
    """Fail before any work when the folder `path` (created later if absent) could not be written:
    it, or its nearest existing parent, must be a directory this user may write into (and not one that
    is deleted after the run)."""
    check_not_temporary(path, flag)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} exists and is not a directory; expected a folder to write into")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is not a directory; expected a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable by this user; expected a folder you can write "
                         "(checked before any work starts)")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
