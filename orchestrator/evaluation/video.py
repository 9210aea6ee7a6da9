"""Scene-adaptive video anomaly detection (paper Section 4.2): scenes are tasks.

For a target scene T:

1. **Meta-train** `ours` with the ordinary episodic training (orchestrator.training.loop.train) on every other
   scene's training frames (one task each, ``scene:<name>``) plus every image category of the image
   source (workers.data.video.SceneTaskSource). cfg.data.categories / exclude do not apply here; the model is
   always `ours` (cfg.train.method is ignored). Training frames: every experiments.video_train_every-th.
2. **Adapt and score**, for each K in experiments.video_shots and each of experiments.video_draws support
   draws: the dictionary is built from K normal training frames of T (orchestrator.evaluation.evaluate.support_draws
   with eval.seed: seeded, nested across K), and every experiments.video_test_every-th test frame of every
   clip is scored independently. Frame score = the image energy (Alg. 2), the same number with either
   anomaly-map mode; the scorer is make_scorer's `ours` with model.anomaly_map=energy and no smoothing,
   because only frame scores are needed and |∇ₓE| would double the cost.
3. **Frame-level AUROC**, pooled over all scored test frames of the scene (as the paper and the data's
   README), per draw; mean ± std (population) over draws per K.

With experiments.video_temporal every scene frame (training task, support, test) carries the motion cue
of workers.data.video (luma, luma, frame difference); image categories stay RGB.

Outputs under out_dir:

    model/          the trained model directory (meta.json holds the loss history)
    metrics.json    {"scene", "train_tasks", "shots": {"K<k>": {"frame_auroc", "frame_auroc_std",
                     "per_draw"}}, "baselines": {method: the same, for experiments.video_baselines},
                     "test_frames", "anomalous_frames", "test_every", "temporal",
                     "data_sha256", "image_data_sha256", "params", "config_sha256", "seconds"}
    scores.csv      clip,frame,label,score of draw 0 at the largest K (score-over-time plots)

data_sha256 hashes the target scene's files used (support pool frames, scored test frames, their
motion predecessors, the label files: relative path + file sha256); image_data_sha256 is the image
source's content hash; model/meta.json's manifest_sha256 covers images and training scenes together.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import metrics
from model.errors import InputError
from orchestrator.tracking.artifacts import load_model_dir, resolve_device, WEIGHTS
from model.methods import OURS
from orchestrator.config import Config, with_values
from orchestrator.evaluation.evaluate import draw_free_features, make_scorer, score_batches, support_draws
from orchestrator.stages.ingest import MANIFEST
from orchestrator.stages.pipeline import RESULTS, TRAINED_CONFIG, data_dir, image_root, repo_path
from orchestrator.training.loop import train
from workers.data.sources import as_source, open_source
from workers.data.video import (
    SceneTaskSource,
    check_scene,
    files_sha256,
    list_scenes,
    load_frames,
    scene_files,
)
from workers.files import atomic_write_text

METRICS, SCORES, MODEL = "metrics.json", "scores.csv", "model"
VIDEO_RESULTS = RESULTS / "video"
# What a scene's numbers depend on (hashed into config_sha256); paths and the list of targets do not.
USED_CONFIG = TRAINED_CONFIG + ("eval.seed", "eval.augment_support", "experiments.video_shots",
                                "experiments.video_draws", "experiments.video_test_every",
                                "experiments.video_train_every", "experiments.video_temporal")
RECORDED_PARAMS = ("data.image_size", "model.backbone.name", "model.backbone.width", "model.lam_max",
                   "model.lam_star", "model.shrink", "model.receptive_field", "langevin.steps",
                   "langevin.step_size", "train.episodes", "train.shots", "train.lr", "train.seed", "eval.seed",
                   "experiments.profile", "experiments.video_shots", "experiments.video_draws",
                   "experiments.video_test_every", "experiments.video_train_every", "experiments.video_temporal")


@dataclass
class SceneTest:
    """A target scene ready for adaptation: the support pool and the scored test frames."""

    scene: str
    pool: torch.Tensor  # (N_pool, 3, S, S) normal training frames (every video_train_every-th)
    images: torch.Tensor  # (N_test, 3, S, S) scored test frames (every video_test_every-th)
    labels: torch.Tensor  # (N_test,) 0/1
    clips: list[str]  # (N_test,) clip of each test frame
    frames: list[str]  # (N_test,) file stem of each test frame
    data_sha256: str


def load_target(cfg: Config, scene: str) -> SceneTest:
    """Load and check the target scene: known scene, K <= pool size, both labels among the scored frames."""
    e = cfg.experiments
    root = check_scene(e.video_root, scene)
    size = cfg.data.image_size
    train_items = load_frames(root, scene, size, "train", e.video_train_every, e.video_temporal)
    top = max(e.video_shots)
    if top > len(train_items):
        raise InputError(f"experiments.video_shots K={top} is larger than the {len(train_items)} training frames "
                         f"of scene {scene!r} (experiments.video_train_every={e.video_train_every})")
    test_items = load_frames(root, scene, size, "test", e.video_test_every, e.video_temporal)
    labels = torch.tensor([it.label for it in test_items], dtype=torch.int64)
    if labels.min() == labels.max():
        raise InputError(f"the {len(test_items)} scored test frames of scene {scene!r} (experiments.video_test_every="
                         f"{e.video_test_every}) "
                         "are all of one label; expected normal and anomalous frames (lower video_test_every)")
    used = (scene_files(root, scene, "train", e.video_train_every, e.video_temporal)
            + scene_files(root, scene, "test", e.video_test_every, e.video_temporal))
    return SceneTest(scene, torch.stack([it.image for it in train_items]), torch.stack([it.image for it in test_items]),
                     labels, [it.defect_type for it in test_items], [Path(it.path).stem for it in test_items],
                     files_sha256(root, used))


def training_source(cfg: Config, target: str, image_source) -> SceneTaskSource:
    """Image categories plus every scene of experiments.video_root except the target."""
    e = cfg.experiments
    others = [s for s in list_scenes(e.video_root) if s != target]
    if not others:
        raise InputError(f"video root {e.video_root} has no scene besides {target!r}; the protocol meta-trains "
                         "on the other scenes")
    images = as_source(cfg.pipeline.source if image_source is None else image_source)
    return SceneTaskSource(images, Path(e.video_root), others, e.video_train_every, e.video_temporal)


def training_config(cfg: Config) -> Config:
    """cfg for meta-training: `ours` on every task of the source (no category selection, nothing held out)."""
    return with_values(cfg, {"data.categories": [], "data.exclude": [], "train.method": OURS.model})


def score_shots(model_dir: Path, test: SceneTest, cfg: Config, progress: bool = False, method: str = OURS.name
                ) -> tuple[dict[str, Any], torch.Tensor]:
    """Every K × draw: adapt, score, pooled frame AUROC -> ({"K<k>": ...}, scores (N_test,) of draw 0 at max K).
    `method`: ours, or one of its baselines (untrained, nosupport) on the same draws."""
    model, saved, _ = load_model_dir(model_dir)
    device = resolve_device(saved.train.device)
    model.to(device).eval()
    scoring = copy.deepcopy(saved)
    scoring.model = dataclasses.replace(scoring.model, anomaly_map="energy", map_smooth_sigma=0.0)
    scorer = make_scorer(method, model, scoring, augment_support=cfg.eval.augment_support)
    e = cfg.experiments
    shots, first = {}, None
    # Ψ of the test frames, computed once for every K and draw (None where the scorer's needs the shots)
    features = draw_free_features(scorer, test.images, cfg.eval.batch_size, device, progress,
                                  desc=f"{test.scene} {method} features")
    jobs = [(k, d) for k in sorted(e.video_shots) for d in range(e.video_draws)]
    bar = tqdm(total=len(jobs), desc=f"{test.scene} {method} K × draws", disable=not progress, dynamic_ncols=True)
    for k in sorted(e.video_shots):
        draws = support_draws(test.pool.shape[0], k, e.video_draws, cfg.eval.seed, test.scene)
        per_draw = []
        for d, index in enumerate(draws):
            state = scorer.adapt(test.pool[index].to(device))
            scores, _ = score_batches(scorer, state, test.images, cfg.eval.batch_size, device, progress,
                                      desc=f"{test.scene} {method} K={k} draw {d + 1}/{e.video_draws}",
                                      features=features)
            if not torch.isfinite(scores).all():
                raise RuntimeError(f"non-finite frame scores on {test.scene} K={k} draw {d}")
            per_draw.append(metrics.image_auroc(scores, test.labels))
            if k == max(e.video_shots) and d == 0:
                first = scores
            bar.update()
        summary = metrics.summarize(per_draw)
        shots[f"K{k}"] = {"frame_auroc": round(summary["mean"], 6), "frame_auroc_std": round(summary["std"], 6),
                          "per_draw": [round(v, 6) for v in per_draw]}
    bar.close()
    return shots, first


def scores_csv(test: SceneTest, scores: torch.Tensor) -> str:
    buffer = io.StringIO()
    buffer.write("clip,frame,label,score\n")
    for clip, frame, label, score in zip(test.clips, test.frames, test.labels.tolist(), scores.tolist()):
        buffer.write(f"{clip},{int(frame) if frame.isdigit() else frame},{label},{score:.8g}\n")
    return buffer.getvalue()


def config_record(cfg: Config) -> tuple[dict[str, Any], str]:
    """(params: the recorded keys, config_sha256 over every key the numbers depend on)."""
    flat = cfg.flatten()
    used = {k: v for k, v in flat.items() if k.startswith(USED_CONFIG)}
    return {k: flat[k] for k in RECORDED_PARAMS}, hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


def run_video(cfg: Config, target_scene: str, out_dir: str | Path, image_source=None,
              progress: bool = False) -> dict[str, Any]:
    """The Section 4.2 protocol for one target scene; writes out_dir/{model/, metrics.json, scores.csv}.

    image_source: a folder, a workers.data.sources source, or None for cfg.pipeline.source.
    Returns the metrics.json record.
    """
    began = time.perf_counter()
    out = Path(out_dir)
    if (out / MODEL / WEIGHTS).exists():
        raise InputError(f"{out} already holds a video run ({out / MODEL}); choose another output directory "
                         "or remove it")
    test = load_target(cfg, target_scene)  # bad scene / K / labels fail before any training
    source = training_source(cfg, target_scene, image_source)
    summary = train(training_config(cfg), source, out / MODEL, progress=progress)
    shots, first = score_shots(out / MODEL, test, cfg, progress)
    baselines = {m: score_shots(out / MODEL, test, cfg, progress, method=m)[0] for m in cfg.experiments.video_baselines}
    params, config_sha256 = config_record(cfg)
    record = {
        "scene": target_scene,
        "train_tasks": summary["categories"],
        "shots": shots,
        "baselines": baselines,
        "test_frames": int(test.labels.numel()),
        "anomalous_frames": int(test.labels.sum()),
        "test_every": cfg.experiments.video_test_every,
        "temporal": cfg.experiments.video_temporal,
        "data_sha256": test.data_sha256,
        "image_data_sha256": source.images.content_sha256,
        "params": params,
        "config_sha256": config_sha256,
        "seconds": round(time.perf_counter() - began, 3),
    }
    atomic_write_text(out / SCORES, scores_csv(test, first))
    atomic_write_text(out / METRICS, json.dumps(record, indent=2))
    return record


def pipeline_image_source(cfg: Config):
    """The DVC manifest data/<pipeline.name>/manifest.parquet when it exists, else the folder pipeline.source."""
    manifest = data_dir(cfg) / MANIFEST
    return open_source(image_root(cfg), manifest) if manifest.is_file() else as_source(repo_path(cfg.pipeline.source))


def stage_video(cfg: Config, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Every scene of experiments.video_targets into results/video/<scene>/ (each folder replaced)."""
    if repo_path(cfg.experiments.video_root) != Path(cfg.experiments.video_root):  # an experiment's temporary copy
        cfg = copy.deepcopy(cfg)
        cfg.experiments.video_root = str(repo_path(cfg.experiments.video_root))
    for scene in cfg.experiments.video_targets:  # every name checked before the first training
        check_scene(cfg.experiments.video_root, scene)
    images = pipeline_image_source(cfg)
    records = {}
    for scene in cfg.experiments.video_targets:
        out = VIDEO_RESULTS / scene
        if out.exists():
            shutil.rmtree(out)  # dvc removes outputs before a stage runs; a manual run starts afresh too
        records[scene] = run_video(cfg, scene, out, image_source=images, progress=progress)
    return records
