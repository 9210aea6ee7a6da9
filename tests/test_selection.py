"""Checkpoint selection on validation categories, training-side detector settings and new chain starts."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HELD_OUT, TINY, tiny_sets
from model.errors import InputError
from model.ebm.inpaint import corrupt
from orchestrator.cli import main


def test_selection_keeps_the_best_validation_checkpoint_and_never_trains_on_it(small_real_root, tmp_path, capsys):
    out = tmp_path / "model"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 *tiny_sets(train__episodes=4, train__val_every=2, train__val_images=6, eval__shots=2,
                            train__rank_weight=0.1),
                 "--set", "train.val_categories=[kolektor]", "--set", "inpaint.kinds=[noise,cutpaste,blend]"])
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_categories"] == ["juice_bottle"]  # kolektor is validation only, tire the target
    assert {h["category"] for h in meta["history"]} == {"juice_bottle"}
    selection = meta["selection"]
    episodes = [h["episode"] for h in selection["history"]]
    assert episodes[0] == 0 and 4 in episodes  # the initial Ψ and the last weights are both candidates
    best = max(selection["history"], key=lambda h: h["val_score"])
    assert selection["best_episode"] == best["episode"]
    weights, kept = load_file(str(out / "model.safetensors")), load_file(str(out / "best.safetensors"))
    assert all(torch.equal(weights[k], kept[k]) for k in weights)
    for record in meta["history"]:  # the collapse and inpainting diagnostics are logged every episode
        assert "support_rank" in record and "chain_energy_drop" in record and "inpaint_gain_patch" in record


def test_target_is_never_a_validation_category(small_real_root, tmp_path):
    out = tmp_path / "model"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 *tiny_sets(train__episodes=2), "--set", f"train.val_categories=[{HELD_OUT}]"])
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["val_categories"] == [] and "selection" not in meta


def test_unknown_validation_category_is_a_one_line_error(small_real_root, tmp_path, capsys):
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(tmp_path / "m"),
                 "--quiet", *tiny_sets(), "--set", "train.val_categories=[nosuch]"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nosuch" in err[0]


@pytest.mark.parametrize("kind", ["noise", "cutpaste", "blend"])
def test_corruptions_change_only_the_masked_region(kind):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g)
    donors = torch.rand(5, 3, 32, 32, generator=g)
    corrupted, mask = corrupt(images, (kind,), 0.2, 0.4, torch.Generator().manual_seed(1), donors)
    assert mask.any(dim=(1, 2)).all()
    changed = (corrupted != images).any(1)  # (B, H, W)
    if kind == "blend":  # soft borders: changes reach outside the > 0.5 mask but stay inside its square
        rows, cols = changed.any(2), changed.any(1)
        assert (rows.sum(1) <= 0.4 * 32 + 1).all() and (cols.sum(1) <= 0.4 * 32 + 1).all()
    else:
        assert not (changed & ~mask).any()
        assert changed[mask].float().mean() > 0.9
    again, _ = corrupt(images, (kind,), 0.2, 0.4, torch.Generator().manual_seed(1), donors)
    assert torch.equal(again, corrupted)  # seeded


def test_cutpaste_takes_pixels_from_a_donor():
    images = torch.zeros(2, 3, 16, 16)
    donors = torch.ones(1, 3, 16, 16)
    corrupted, mask = corrupt(images, ("cutpaste",), 0.5, 0.5, torch.Generator().manual_seed(0), donors)
    assert torch.equal(corrupted[:, 0][mask], torch.ones(int(mask.sum())))


def test_donors_of_another_size_are_refused():
    # a larger donor would silently lend only its top-left corner (the train.crop flaw this guards)
    with pytest.raises(ValueError, match=r"donors of \(16, 16\) px for images of \(8, 8\) px"):
        corrupt(torch.zeros(2, 3, 8, 8), ("cutpaste",), 0.2, 0.3, torch.Generator().manual_seed(0),
                torch.zeros(3, 3, 16, 16))


def test_unknown_corruption_is_rejected():
    with pytest.raises(InputError, match="inpaint.kinds"):
        corrupt(torch.zeros(1, 3, 8, 8), ("glitter",), 0.2, 0.3)


def test_a_validation_category_is_not_a_held_out_target(small_real_root, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(model), "--quiet",
                 *tiny_sets(train__episodes=2, train__val_every=1, train__val_images=4, eval__shots=2),
                 "--set", "train.val_categories=[kolektor]"]) == 0
    capsys.readouterr()
    code = main(["evaluate", "--model", str(model), "--data", str(small_real_root), "--target", "kolektor",
                 "--shots", "2", "--draws", "1", "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kolektor" in err[0] and "seen in training" in err[0]


def test_selection_with_ray_workers_is_refused_in_one_line(small_real_root, tmp_path, capsys):
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(tmp_path / "m"),
                 "--quiet", "--workers", "2", *tiny_sets(), "--set", "train.val_categories=[kolektor]"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val_categories" in err[0]


@pytest.mark.parametrize("metric", ["pixel", "image", "mean"])
def test_validation_score_is_the_metric_named_by_train_val_metric(metric):
    from orchestrator.config import load_config
    from orchestrator.evaluation.evaluate import untrained_model
    from orchestrator.training.selection import CheckpointSelector, ValidationTask

    cfg = load_config(None, {**TINY, "data.image_size": 32})
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g)
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[3:, 8:20, 8:20] = True
    images[3:, :, 8:20, 8:20] = 1.0  # a bright square where the masks say anomalous
    task = ValidationTask("x", torch.rand(2, 3, 32, 32, generator=g), images, torch.tensor([0, 0, 0, 1, 1, 1]), masks)
    labels_only = ValidationTask("y", torch.rand(2, 3, 32, 32, generator=g), images.flip(0),
                                 torch.tensor([1, 1, 1, 0, 0, 0]), None)  # image labels only (as ELPV)
    selector = CheckpointSelector([task, labels_only], torch.device("cpu"), metric)
    model = untrained_model(cfg)
    alone = [CheckpointSelector([t], torch.device("cpu"), metric).score(model) for t in (task, labels_only)]
    result = selector.score(model)
    x_pixel, x_image, y_image = alone[0]["val_pixel_auroc"], alone[0]["val_image_auroc"], alone[1]["val_image_auroc"]
    expected = {"pixel": (x_pixel + y_image) / 2, "image": (x_image + y_image) / 2,
                "mean": ((x_pixel + x_image) / 2 + y_image) / 2}[metric]
    assert result["val_score"] == pytest.approx(expected)
    assert result["val_pixel_auroc"] == pytest.approx(x_pixel)  # the mean over the tasks that have masks
    assert len({round(x_pixel, 6), round(x_image, 6), round(y_image, 6)}) == 3  # the metrics are distinguishable


def test_unknown_validation_metric_is_a_one_line_error(small_real_root, tmp_path, capsys):
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(tmp_path / "m"),
                 "--quiet", *tiny_sets(), "--set", "train.val_metric=f1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.val_metric" in err[0] and "pixel" in err[0]


def test_maml_ae_selects_its_checkpoint_with_its_own_scorer(small_real_root, tmp_path):
    """The DVC folds set validation categories for every variant: MAML-AE is scored by its inner loop and
    reconstruction maps (it has no dictionary), and its kept weights are the best-scoring ones."""
    out = tmp_path / "maml"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 *tiny_sets(train__episodes=2, train__val_every=1, train__val_images=6, eval__shots=2,
                            train__method="maml_ae", maml__inner_steps=1),
                 "--set", "train.val_categories=[kolektor]"])
    assert code == 0
    selection = json.loads((out / "meta.json").read_text())["selection"]
    assert [h["episode"] for h in selection["history"]] == [0, 1, 2]
    assert all(0.0 <= h["val_score"] <= 1.0 for h in selection["history"])
    best = max(selection["history"], key=lambda h: h["val_score"])
    assert selection["best_episode"] == best["episode"]
    weights, kept = load_file(str(out / "model.safetensors")), load_file(str(out / "best.safetensors"))
    assert all(torch.equal(weights[k], kept[k]) for k in weights)
