"""Range checks on a loaded Config: every hyper-parameter a user can get wrong, each a one-line InputError.

`validate(cfg)` runs once, when loading.py builds a Config (load_config, config_from_dict, with_values);
code that then uses the config trusts it.
"""
from __future__ import annotations

from PIL import Image

from model.calibration import ESTIMATORS, check_fpr
from model.ebm.energy import MAP_MODES
from model.errors import InputError
from model.ebm.inpaint import CORRUPTIONS
from model.ebm.langevin import validate_langevin
from model.methods import METHODS, OURS, get_method
from model.objective import validate_objective
from orchestrator.config.checks import check_finite
from orchestrator.config.profiles import ABLATIONS, PROFILES
from orchestrator.config.schema import (
    Config,
    DistributedConfig,
    ExperimentsConfig,
    PipelineConfig,
    TRAINABLE,
    VAL_METRICS,
    TrackingConfig,
)
from orchestrator.config.search_space import validate_tune
from orchestrator.config.specs import sparse_spec
from workers.data.paths import plain_name
from workers.episodes import AUGMENT_MODES, MIN_CROP

# Images are resized to at most this: the largest source images (MVTec) are 1024 px, and every
# training image is held in memory at this size (3 × S² float32), so larger values only exhaust memory.
MAX_IMAGE_SIZE = 1024
MAX_PIXELS_LIMIT = Image.MAX_IMAGE_PIXELS  # PIL warns above this and refuses above twice it


def validate(cfg: Config) -> None:
    """Every section's range checks; the first problem found is raised."""
    validate_data(cfg)
    validate_model(cfg)
    validate_training(cfg)
    validate_eval(cfg)
    validate_distributed(cfg.distributed)
    validate_tracking(cfg.tracking)
    validate_pipeline(cfg.pipeline)
    validate_experiments(cfg.experiments)
    validate_tune(cfg)


def validate_data(cfg: Config) -> None:
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


def validate_model(cfg: Config) -> None:
    """The model, Langevin and inpainting sections: what shapes the energy and its negatives."""
    m = cfg.model
    sparse_spec(m)  # constructing the spec runs its checks
    check_finite("model.map_smooth_sigma", m.map_smooth_sigma, 0.0, strict=False)
    if m.anomaly_map not in MAP_MODES:
        raise InputError(f"model.anomaly_map={m.anomaly_map!r}: expected one of {MAP_MODES}")
    validate_langevin(cfg.langevin.steps, cfg.langevin.step_size, cfg.langevin.noise_scale)
    p = cfg.inpaint
    if not (0 < p.min_frac <= p.max_frac <= 1):
        raise InputError(f"inpaint.min_frac={p.min_frac}, max_frac={p.max_frac}: expected 0 < min <= max <= 1")
    if not p.kinds or any(k not in CORRUPTIONS for k in p.kinds):
        raise InputError(f"inpaint.kinds={p.kinds}: expected a non-empty list of {', '.join(CORRUPTIONS)}")


def validate_training(cfg: Config) -> None:
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
        check_finite(key, value, 0.0)
    for key, value in (("train.eta_rec", t.eta_rec), ("train.eta_cd", t.eta_cd), ("train.reg_weight", t.reg_weight),
                       ("train.grad_clip", t.grad_clip), ("train.rank_weight", t.rank_weight)):
        check_finite(key, value, 0.0, strict=False)
    validate_objective(t.objective)
    for key, value, choices in (("train.trainable", t.trainable, TRAINABLE),
                                ("train.val_metric", t.val_metric, VAL_METRICS)):
        if value not in choices:
            raise InputError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    if t.augment not in AUGMENT_MODES:
        raise InputError(f"train.augment={t.augment!r}: expected one of {AUGMENT_MODES}")
    if t.crop != 0 and t.crop < MIN_CROP:  # a crop >= data.image_size is the whole image
        raise InputError(f"train.crop={t.crop}: expected 0 (whole images) or a side >= {MIN_CROP}")
    if not (t.device == "cpu" or t.device == "cuda" or t.device.startswith("cuda:")):
        raise InputError(f"train.device={t.device!r}: expected cpu, cuda or cuda:N")
    if cfg.maml.inner_steps < 0:
        raise InputError(f"maml.inner_steps={cfg.maml.inner_steps}: expected >= 0")


def validate_eval(cfg: Config) -> None:
    if cfg.eval.overlays < 0:
        raise InputError(f"eval.overlays={cfg.eval.overlays}: expected >= 0")
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
    if isinstance(p.max_test_images, bool) or not isinstance(p.max_test_images, int) or not (
            p.max_test_images == 0 or p.max_test_images >= 2):
        raise InputError(f"pipeline.max_test_images={p.max_test_images!r}: expected 0 (every test image) or an "
                         "integer >= 2 (one normal and one anomalous at least)")
    for key in ("calibrate", "sweep_methods"):
        chosen = getattr(p, key)
        if any(m not in METHODS for m in chosen):
            raise InputError(f"pipeline.{key}={chosen}: expected methods among {', '.join(METHODS)}")


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
    ours_baselines = [m for m in METHODS if get_method(m).baseline and get_method(m).model == OURS.model]
    wrong = [m for m in e.video_baselines if m not in ours_baselines]
    if wrong:
        raise InputError(f"experiments.video_baselines={e.video_baselines}: {wrong} are not baselines of ours; "
                         f"expected names from {', '.join(ours_baselines)}")
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
        check_finite(f"distributed.{key}", value, 0.0, strict=False)
    for key, value in (("start_timeout_s", d.start_timeout_s), ("connect_timeout_s", d.connect_timeout_s)):
        check_finite(f"distributed.{key}", value, 0.0)
