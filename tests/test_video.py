"""The scene-adaptive video protocol (paper Section 4.2) on the real scenes in ../shared/data/fsad-video.

load_scene itself (frame and label counts per clip, masks vs labels at native resolution, every=) is
tested in tests/test_data.py; here: workers/data/video.py (listing, motion cue, files hashed, the combined
training source), orchestrator/evaluation/video.py end to end on a tiny budget, the CLI verb and the DVC entry.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import TINY, expect_error, tiny_sets
from workers.data import video as V
from workers.data.sources import FolderSource, as_source, open_source
from workers.data.video import load_scene

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VIDEO = DATA / "fsad-video"
SCENES = ("avenue", "ucsd_ped2")
S = 32
EVERY = 20  # scored test frames: every 20th

if not VIDEO.is_dir():
    pytest.skip(f"video data {VIDEO} is absent", allow_module_level=True)


def label_lines(scene: str, clip: str) -> list[int]:
    return [int(x) for x in (VIDEO / scene / "test_labels" / f"{clip}.txt").read_text().split()]


# ------------------------------------------------------------------------------------------------
# Reader: listing, labels, masks, motion cue
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scene", SCENES)
def test_listing_matches_labels_and_load_scene(scene):
    clips = V._clips(VIDEO, scene, "test")
    assert [c for c, _ in clips] == sorted(p.stem for p in (VIDEO / scene / "test_labels").iterdir())
    for clip, frames in clips:
        assert len(frames) == len(label_lines(scene, clip)), clip
    # the files hashed are exactly the frames load_scene reads, plus the label files
    items = load_scene(VIDEO, scene, S, "test", every=EVERY)
    files = V.scene_files(VIDEO, scene, "test", every=EVERY)
    frames = [f for f in files if f.suffix != ".txt"]
    assert sorted(it.path for it in items) == [str(f) for f in frames]
    assert {f.name for f in files if f.suffix == ".txt"} == {f"{c}.txt" for c, _ in clips}


@pytest.mark.parametrize("scene", SCENES)
def test_labels_align_with_masks_on_a_sample(scene):
    items = V.load_frames(VIDEO, scene, S, "test", every=EVERY, temporal=True)
    assert {it.label for it in items} == {0, 1}
    for it in items:
        clip, stem = it.defect_type, Path(it.path).stem
        assert it.label == label_lines(scene, clip)[int(stem)]  # test frames are numbered 0..n-1
        mask = np.asarray(Image.open(VIDEO / scene / "test_masks" / clip / f"{stem}.png"))
        assert (mask > 127).any() == bool(it.label), it.path


def test_frame_gap_and_predecessors():
    assert V.frame_gap(VIDEO, "ucsd_ped2") == 3  # training keeps every 3rd frame
    assert V.frame_gap(VIDEO, "avenue") == 1
    kept = V._kept(VIDEO, "ucsd_ped2", "test", every=1)
    by_frame = {(c, int(f.stem)): int(p.stem) for c, f, p in kept}
    assert by_frame[("01", 10)] == 7  # the same time step as the training frames
    assert by_frame[("01", 1)] == 0  # less than the gap into the clip: the nearest earlier frame
    assert by_frame[("01", 0)] == 1  # the first frame: the next one
    train = {(c, int(f.stem)): int(p.stem) for c, f, p in V._kept(VIDEO, "ucsd_ped2", "train", every=1)}
    assert train[("01", 9)] == 6


def test_motion_cue():
    plain = V.load_frames(VIDEO, "avenue", S, "test", every=EVERY)
    moving = V.load_frames(VIDEO, "avenue", S, "test", every=EVERY, temporal=True)
    assert [it.path for it in plain] == [it.path for it in moving]
    x = torch.stack([it.image for it in moving])  # (N, 3, S, S)
    assert x.shape == (len(plain), 3, S, S) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1])  # luma twice
    luma = torch.stack([V._luma(it.image) for it in plain])
    assert torch.allclose(x[:, 0], luma)
    assert x[:, 2].amax() > 0.2  # something moves
    same = V.motion_image(plain[0].image, plain[0].image)
    assert same[2].abs().max() == 0  # no motion against itself
    # the file list grows by the predecessors
    with_prev = V.scene_files(VIDEO, "avenue", "test", EVERY, temporal=True)
    assert len(with_prev) > len(V.scene_files(VIDEO, "avenue", "test", EVERY))


# ------------------------------------------------------------------------------------------------
# Combined training source
# ------------------------------------------------------------------------------------------------


def test_scene_task_source(small_real_root):
    src = V.SceneTaskSource(small_real_root, VIDEO, ["avenue"], every=8)
    images = FolderSource(small_real_root)
    assert src.categories() == images.categories() + ["scene:avenue"]
    assert as_source(src) is src and open_source(src) is src  # train() takes it as its data
    frames = src.load("scene:avenue", S)
    expected = sum(len(f[::8]) for _, f in V._clips(VIDEO, "avenue", "train"))
    assert len(frames) == expected and all(it.category == "scene:avenue" and it.label == 0 for it in frames)
    assert frames[0].image.shape == (3, S, S)
    cat = images.categories()[0]
    assert [it.path for it in src.load(cat, S)] == [it.path for it in images.load(cat, S)]
    h = src.content_sha256
    assert len(h) == 64 and h == V.SceneTaskSource(small_real_root, VIDEO, ["avenue"], every=8).content_sha256
    assert h != V.SceneTaskSource(small_real_root, VIDEO, ["avenue"], every=4).content_sha256
    assert h != V.SceneTaskSource(small_real_root, VIDEO, ["avenue"], every=8, temporal=True).content_sha256
    expect_error(lambda: src.load("scene:ucsd_ped2", S), "scene:ucsd_ped2", "scene:avenue")
    expect_error(lambda: V.SceneTaskSource(small_real_root, VIDEO, ["nope"]), "nope", "avenue, ucsd_ped2")


# ------------------------------------------------------------------------------------------------
# The protocol end to end (tiny budget)
# ------------------------------------------------------------------------------------------------

VIDEO_TINY = {"experiments.video_test_every": EVERY, "experiments.video_draws": 2,
              "experiments.video_shots": "[1,2]", "experiments.video_train_every": 2}


def video_sets(**changes) -> list[str]:
    values = dict(VIDEO_TINY)
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return tiny_sets() + [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def cli(capsys, *args) -> tuple[int, str, str]:
    from orchestrator.cli import main

    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_record(record: dict, scene: str, temporal: bool) -> None:
    assert set(record) == {"scene", "train_tasks", "shots", "baselines", "test_frames", "anomalous_frames", "test_every", "temporal",
                           "data_sha256", "image_data_sha256", "params", "config_sha256", "seconds"}
    other = [s for s in SCENES if s != scene][0]
    assert record["scene"] == scene and record["train_tasks"][-1] == f"scene:{other}"
    assert record["test_every"] == EVERY and record["temporal"] is temporal
    n = sum(len(range(0, len(label_lines(scene, c)), EVERY)) for c, _ in V._clips(VIDEO, scene, "test"))
    assert record["test_frames"] == n and 0 < record["anomalous_frames"] < n
    assert set(record["shots"]) == {"K1", "K2"}
    for values in record["shots"].values():
        assert set(values) == {"frame_auroc", "frame_auroc_std", "per_draw"} and len(values["per_draw"]) == 2
        assert all(0 <= v <= 1 for v in values["per_draw"])
        assert math.isclose(values["frame_auroc"], float(np.mean(values["per_draw"])), abs_tol=1e-5)
        assert math.isclose(values["frame_auroc_std"], float(np.std(values["per_draw"])), abs_tol=1e-5)
    assert record["shots"]["K1"]["frame_auroc_std"] > 0  # two different single frames adapt differently
    # the no-learning and no-support baselines, on the same draws: other numbers than ours
    assert set(record["baselines"]) == {"untrained", "nosupport"}
    for method, by_k in record["baselines"].items():
        assert set(by_k) == {"K1", "K2"} and all(len(v["per_draw"]) == 2 for v in by_k.values())
        assert by_k["K2"]["per_draw"] != record["shots"]["K2"]["per_draw"], method
    nosupport = record["baselines"]["nosupport"]
    assert nosupport["K1"]["per_draw"] == nosupport["K2"]["per_draw"]  # it never reads the support frames
    for key in ("data_sha256", "image_data_sha256", "config_sha256"):
        assert len(record[key]) == 64
    assert record["params"]["experiments.video_temporal"] is temporal and record["params"]["data.image_size"] == S


def check_scores(path: Path, scene: str, n: int) -> None:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["clip", "frame", "label", "score"] and len(rows) == n
    for row in rows:
        assert int(row["frame"]) % EVERY == 0
        assert int(row["label"]) == label_lines(scene, row["clip"])[int(row["frame"])]
        assert math.isfinite(float(row["score"]))


def test_video_cli_end_to_end(small_real_root, tmp_path, capsys):
    from orchestrator.tracking.artifacts import load_model_dir
    from orchestrator.evaluation.video import load_target, score_shots

    out = tmp_path / "ped2"
    args = ["video", "--target", "ucsd_ped2", "--out", str(out), "--video-root", str(VIDEO),
            "--data", str(small_real_root), "--quiet", *video_sets()]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "ucsd_ped2 K1: frame AUROC" in stdout and "ucsd_ped2 K2: frame AUROC" in stdout
    record = json.loads((out / "metrics.json").read_text())
    check_record(record, "ucsd_ped2", temporal=False)
    assert record["image_data_sha256"] == FolderSource(small_real_root).content_sha256
    check_scores(out / "scores.csv", "ucsd_ped2", record["test_frames"])
    meta = json.loads((out / "model" / "meta.json").read_text())
    assert len(meta["history"]) == TINY["train.episodes"]
    assert meta["train_categories"] == record["train_tasks"]
    # scoring again from the saved model gives the same numbers (seeded, deterministic draws)
    _, cfg, _ = load_model_dir(out / "model")
    cfg.experiments.video_root = str(VIDEO)
    test = load_target(cfg, "ucsd_ped2")
    assert test.data_sha256 == record["data_sha256"]
    shots, _ = score_shots(out / "model", test, cfg)
    assert shots == record["shots"]
    # a second run into the same directory is refused
    code, _, err = cli(capsys, *args)
    assert code == 2 and "already holds a video run" in err


def test_video_stage_temporal(small_real_root, tmp_path, monkeypatch, capsys):
    """pipelines/video.py (the DVC entry) with the motion cue, into results/video/<scene>/."""
    from pipelines.video import run
    from pipelines._entry import main

    tree: dict = {}
    for key, value in {**TINY, **VIDEO_TINY, "experiments.video_temporal": True,
                       "experiments.video_targets": ["avenue"], "experiments.video_root": str(VIDEO),
                       "pipeline.source": str(small_real_root)}.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value) if isinstance(value, str) and value.startswith("[") else value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    monkeypatch.chdir(tmp_path)
    stale = tmp_path / "results" / "video" / "avenue" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier run")
    assert main(run, "video", argv=[]) == 0
    stdout = capsys.readouterr().out
    assert "avenue K1: frame AUROC" in stdout and "avenue K2: frame AUROC" in stdout
    out = tmp_path / "results" / "video" / "avenue"
    assert not stale.exists()  # the scene folder is replaced
    record = json.loads((out / "metrics.json").read_text())
    check_record(record, "avenue", temporal=True)
    check_scores(out / "scores.csv", "avenue", record["test_frames"])


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_video_bad_input(small_real_root, tmp_path, capsys, monkeypatch):
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.video import pipeline_image_source, run_video

    def cfg(**changes):
        sets = {**TINY, **VIDEO_TINY, "experiments.video_root": str(VIDEO), **changes}
        return load_config(None, parse_overrides([f"{k.replace('__', '.')}={v}" for k, v in sets.items()]))

    out = tmp_path / "out"
    expect_error(lambda: run_video(cfg(), "nope", out, small_real_root), "unknown scene 'nope'", "avenue, ucsd_ped2")
    missing = tmp_path / "no_video"
    expect_error(lambda: run_video(cfg(experiments__video_root=missing), "avenue", out, small_real_root),
                 str(missing), "does not exist")
    # avenue keeps 3 training frames at every 200th (clips of 145 and 244 frames): K=5 cannot be drawn
    expect_error(lambda: run_video(cfg(experiments__video_train_every=200, experiments__video_shots="[1,5]"),
                                   "avenue", out, small_real_root), "K=5", "3 training frames", "avenue")
    assert not out.exists()  # nothing trained, nothing written
    expect_error(lambda: cfg(experiments__video_baselines="[knn]"), "experiments.video_baselines", "untrained")
    code, _, err = cli(capsys, "video", "--target", "nope", "--out", str(out), "--video-root", str(VIDEO),
                       "--data", str(small_real_root), "--quiet")
    assert code == 2 and err.startswith("fsad: error: unknown scene 'nope'") and err.count("\n") == 1
    # the DVC stage's image source: the folder pipeline.source when there is no manifest (data/<name>/ is
    # relative to the working directory, where a checkout that ran `dvc repro` has one)
    monkeypatch.chdir(tmp_path)
    assert isinstance(pipeline_image_source(cfg(pipeline__source=small_real_root)), FolderSource)
