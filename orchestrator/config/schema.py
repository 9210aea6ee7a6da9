"""The config schema: nested dataclasses whose field defaults are the one place defaults live.

params.yaml spells the same defaults out (tests/test_config.py checks they agree). Loading and overrides
are in loading.py, range checks in validation.py, the search space in search_space.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.methods import METHODS  # the evaluation methods, registered once in model/methods/
from orchestrator.config.search_space import TuneSpace
from workers.data.images import DEFAULT_MAX_PIXELS

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
    input_norm: str = "none"  # none | mean | standardize: per-image photometric normalisation inside Ψ
    hypercolumn: bool = True  # the head reads every block, not the last only (docs/benchmarks.md, "Hypercolumn")
    weights: str = ""  # optional local state dict (.safetensors or torch file, weights_only)


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
    # support: the image score ranks position energies standardised by what the shots score against each
    # other (leave-one-out; K >= 4); none: raw energies. Chosen on the validation categories (README)
    image_norm: str = "support"
    # support: every image's per-channel mean intensity is replaced by the shots' before Ψ (exposure drift between
    # a product line's shots and its later images cancels, and so does a defect that only darkens the whole image)
    exposure: str = "none"
    # support: signals and atoms are whitened by the shots' second-moment matrix (ridge whiten_shrink × its
    # mean eigenvalue) before normalising. Both off: mixed on the validation categories (docs/benchmarks.md)
    whiten: str = "none"
    whiten_shrink: float = 1.0
    anomaly_map: str = "energy"  # gradient (|∇ₓE|, the paper) | energy (upsampled position energies)
    # Gaussian σ (pixels) on the anomaly maps; 0 = off, the default: the bilinear upsampling from the cell grid
    # smooths enough, and σ = 0 / 1 / 2 / 4 gave validation pixel AUROC 0.713 / 0.710 / 0.699 / 0.663 (pcb_deeppcb)
    # and 0.934 / 0.933 / 0.932 / 0.925 (screw), untrained Ψ, K = 10 (docs/benchmarks.md, "Map smoothing")
    map_smooth_sigma: float = 0.0


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


TRAINABLE = ("all", "head")  # train.trainable: which of Ψ's parameters meta-training updates
VAL_METRICS = ("pixel", "image", "mean")  # train.val_metric: what checkpoint selection maximises


@dataclass
class TrainConfig:
    method: str = "ours"  # ours | maml_ae
    # the default budget on 2 CPU cores: 120 episodes on 64-px crops (train.crop) cost about what 40 on whole
    # 128-px images did (docs/benchmarks.md, "Training on crops"); 6 of 10 measured 200-episode runs kept a
    # checkpoint at or before 120
    episodes: int = 120
    shots: int = 5  # K during meta-training
    queries: int = 2  # M
    lr: float = 3e-4
    eta_rec: float = 1.0  # η₀
    eta_cd: float = 1.0  # η₁
    reg_weight: float = 1.0  # Du & Mordatch energy-magnitude regulariser (keeps E⁻ from saturating at 1)
    detach_rec: bool = False  # True: L_rec does not backpropagate through the Langevin chain
    rank_weight: float = 0.1  # −log(participation ratio) of the support features: against feature collapse
    # cd: Alg. 1 (Langevin negatives from corrupted queries); defects: normal cells down, cells of the training
    # categories' real labelled defects up (their test images; a target's or validation category's never)
    objective: str = "cd"
    trainable: str = "all"  # all | head (only Ψ's last 1×1 layer learns: a metric on fixed random features)
    val_categories: list[str] = field(default_factory=list)  # set aside for checkpoint selection (never the target)
    val_every: int = 40  # episodes between validation scores
    val_images: int = 40  # test images per validation category (half normal, half anomalous)
    # What selection maximises: pixel (the energy map's AUROC; the default: the validation categories' image
    # AUROC is at chance for every model, docs/benchmarks.md), image, or mean (of the two).
    val_metric: str = "pixel"
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    augment: str = "episode"  # none | episode | image
    # Side of the square window every episode is cut from (one window per task: support and queries alike);
    # 0, or a side >= data.image_size, = whole images. A crop keeps evaluation's pixel scale (a resize would not)
    # at a fraction of the cost.
    crop: int = 64
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

    name: str = "fsad-all"  # data/<name>/: manifest.parquet, rejects.parquet, splits.parquet
    # a folder, s3://BUCKET/PREFIX or elpv; the default is a folder of links to the six categories of
    # ../shared/data/fsad-real and fsad-extra (ingest follows linked folders)
    source: str = "experiments/sources/fsad-all"
    targets: list[str] = field(default_factory=lambda: ["juice_bottle", "kolektor", "magnetic_tile", "tire",
                                                        "pcb_deeppcb", "screw"])
    # set aside in every fold for checkpoint selection (added to train.val_categories; never the fold's
    # target, so a fold whose target is one of them selects on the other)
    val_categories: list[str] = field(default_factory=lambda: ["pcb_deeppcb", "screw"])
    shots: list[int] = field(default_factory=lambda: [1, 10])  # K values drawn and evaluated (full: 1, 2, 4, 8, 10)
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # any of METHODS
    # methods whose evaluations also calibrate a threshold from the shots (half of a draw's cost; the
    # report reads no baseline's threshold, so by default only the deployable method pays it)
    calibrate: list[str] = field(default_factory=lambda: ["ours"])
    # methods evaluated at every K of `shots`; the others at the largest K only. The K = 1 -> 10 claim reads
    # ours alone, and the baselines' K = 1 rows cost ~3 of the quick profile's 45 min (the full profile sweeps all)
    sweep_methods: list[str] = field(default_factory=lambda: ["ours"])
    # score at most this many test images per target (0: all), a class-stratified subset fixed by eval.seed
    # and the category, the same for every method and K. Only magnetic_tile (678) exceeds the quick
    # profile's 300; the full profile scores all.
    max_test_images: int = 300

    def shots_of(self, method: str) -> list[int]:
        """The K values `method` is evaluated at: all of `shots` for a method of sweep_methods, else the largest."""
        return sorted(self.shots) if method in self.sweep_methods else [max(self.shots)]


@dataclass
class ExperimentsConfig:
    """The paper's experiments beyond the leave-one-out table (experiments/dvc.yaml, docs/results.md):
    ablations on a few held-out targets and scene-adaptive video. `profile` picks a compute budget:
    quick (these defaults; meant for <= 45 min on 2 CPU cores; the README gives the measured time) or
    full (PROFILES["full"])."""

    profile: str = "quick"  # quick | full; full replaces the keys listed in PROFILES["full"]
    # folds the ablations run on: screw, the one category here that the paper's Table 1 also reports
    ablation_targets: list[str] = field(default_factory=lambda: ["screw"])
    # l3 is the full profile's: l = 3 makes every code 9x as wide (7.1 min for its training and evaluation on
    # a 2-core EPYC, which would take the quick profile past its 45 min on a slower 2-core machine)
    ablations: list[str] = field(default_factory=lambda: ["sigshrink", "nosparsity", "noise_init"])
    video_root: str = "../shared/data/fsad-video"
    video_targets: list[str] = field(default_factory=lambda: ["ucsd_ped2", "avenue"])  # target scenes
    video_shots: list[int] = field(default_factory=lambda: [1, 10])  # K normal frames of the target scene
    video_draws: int = 3
    # scored beside ours on the same support draws: no learning (untrained Ψ) and no support set (image gradient)
    video_baselines: list[str] = field(default_factory=lambda: ["untrained", "nosupport"])
    video_test_every: int = 4  # score every n-th test frame (1: all, as the paper)
    video_train_every: int = 1  # use every n-th training frame of a scene
    video_temporal: bool = False  # App. B.4: add a frame-difference cue (see orchestrator/evaluation/video.py)


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
        from orchestrator.config.validation import validate  # validation imports this module

        validate(self)
        return self


# What a verb that loads a trained model (evaluate, predict, register, adapt) takes from the config file
# and --set, and what a resumed training may change besides its budget: how it evaluates, where it logs, what
# it may decode, where it runs. Not how the model was made.
RUNTIME_KEYS = ("eval.", "tracking.", "data.max_pixels", "train.device")


def key_in(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether dotted `key` is one of `patterns`: a pattern ending in "." names every key of that section."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

