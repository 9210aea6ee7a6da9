"""train.objective=defects (real labelled defects of the training categories) and train.trainable=head."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.ebm.energy import participation_ratio
from model.objective import DEFECT_COVERAGE, StepSpec, cell_coverage, defect_losses
from orchestrator.cli import main
from tests.conftest import HELD_OUT, TINY, tiny_sets
from workers.episodes import EpisodeSampler


def test_cell_coverage_is_the_masked_fraction_of_each_cell():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0:3, 0:2] = True  # 6 of the 16 pixels of cell (0, 0) of a 2×2 grid of 4×4 cells
    masks[0, 4:8, 4:8] = True  # all of cell (1, 1)
    got = cell_coverage(masks, (2, 2))
    np.testing.assert_allclose(got.numpy(), np.array([[[6 / 16, 0.0], [0.0, 1.0]]]), atol=1e-7)


class FixedEnergies:
    """A stand-in model whose position energies are given per input batch (the loss arithmetic is tested, not Ψ)."""

    def __init__(self, energies: dict[int, torch.Tensor]):
        self.energies = energies  # id(images batch) -> (B, h', w')

    def position_energy(self, images, dictionary):
        return self.energies[id(images)]


def test_defect_loss_is_normal_cell_energy_minus_defect_cell_energy():
    normal = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])  # (1, 2, 2): one normal query
    defect = torch.tensor([[[0.9, 0.5], [0.6, 0.7]]])  # (1, 2, 2): one anomalous image
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 0:4] = True  # cell (0, 0) fully covered
    masks[0, 4:5, 4:5] = True  # cell (1, 1) 1/16 covered: neither a defect cell nor a normal one
    queries, anomalous = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    atoms = torch.randn(6, 20, generator=torch.Generator().manual_seed(0))  # (m, A)
    dictionary = SimpleNamespace(atoms=atoms)
    spec = StepSpec(steps=1, step_size=1.0, noise_scale=0.0, rank_weight=0.1)
    model = FixedEnergies({id(queries): normal, id(anomalous): defect})
    result = defect_losses(model, dictionary, queries, anomalous, masks, spec)
    normal_cells = np.mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # the query's cells and the untouched defect-image cells
    defect_cells = 0.9
    rank = float(participation_ratio(atoms.transpose(0, 1)))
    assert float(result.loss) == pytest.approx(normal_cells - defect_cells - 0.1 * np.log(rank), abs=1e-6)
    assert result.stats["defect_cell_energy"] == pytest.approx(defect_cells)
    assert 1 / 16 < DEFECT_COVERAGE  # the 1/16-covered cell is left out on purpose


def test_sampler_gives_each_episode_defects_of_its_own_category_transformed_with_it():
    g = torch.Generator().manual_seed(0)
    normals = {c: torch.rand(6, 3, 16, 16, generator=g) for c in ("a", "b")}
    defects = {}
    for value, c in ((0.25, "a"), (0.75, "b")):
        masks = torch.zeros(3, 16, 16, dtype=torch.bool)
        masks[:, 0:4, 0:8] = True  # not symmetric under the dihedral group: the transform is visible
        defects[c] = (torch.full((3, 3, 16, 16), value) + masks[:, None] * 0.1, masks)
    sampler = EpisodeSampler(normals, 2, 2, augment="episode", seed=1, defects=defects)
    for _ in range(8):
        ep = sampler.sample()
        assert ep.anomalous.shape == (2, 3, 16, 16) and ep.anomalous_masks.shape == (2, 16, 16)
        base = 0.25 if ep.category == "a" else 0.75
        # image and mask moved together: the bright pixels are exactly the masked ones
        assert torch.equal(ep.anomalous[:, 0] > base + 0.05, ep.anomalous_masks)


def test_a_training_category_without_masked_defects_is_refused():
    normals = {"a": torch.rand(6, 3, 16, 16)}
    with pytest.raises(Exception, match="train.objective=defects.*'a'"):
        EpisodeSampler(normals, 2, 2, defects={})


def assert_only_the_head_learnt(out) -> None:
    from orchestrator.config import load_config
    from orchestrator.tracking.artifacts import build_model

    torch.manual_seed(0)  # the training loop seeds θ₀ with train.seed
    initial = build_model(load_config(None, dict(TINY))).state_dict()
    trained = load_file(str(out / "model.safetensors"))
    head = f"backbone.features.{max(int(k.split('.')[2]) for k in initial)}"  # the last layer, the 1×1 head
    for name, tensor in trained.items():
        if name.startswith(head + "."):
            assert not torch.equal(tensor, initial[name]), f"{name} (the head) did not learn"
        else:
            assert torch.equal(tensor, initial[name]), f"{name} (the trunk) moved"


def test_train_on_defects_with_a_frozen_trunk_changes_only_the_head(small_real_root, tmp_path):
    out = tmp_path / "model"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 *tiny_sets(train__objective="defects", train__trainable="head", train__episodes=3)])
    assert code == 0
    assert_only_the_head_learnt(out)
    history = json.loads((out / "meta.json").read_text())["history"]
    assert all(h["defect_cell_energy"] >= 0 and "normal_cell_energy" in h for h in history)


def test_a_frozen_trunk_stays_frozen_with_ray_workers(small_real_root, tmp_path):
    # the workers' copies compute gradients for every parameter; the learner must not apply the trunk's
    out = tmp_path / "model"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 "--workers", "1", *tiny_sets(train__trainable="head", train__episodes=2),
                 "--set", "distributed.mode=sync"])
    assert code == 0
    assert_only_the_head_learnt(out)


def test_defects_objective_with_ray_workers_is_refused_in_one_line(small_real_root, tmp_path, capsys):
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(tmp_path / "m"),
                 "--quiet", "--workers", "1", *tiny_sets(train__objective="defects")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.objective=defects" in err[0]


@pytest.mark.parametrize("key,value", [("train.objective", "gan"), ("train.trainable", "trunk")])
def test_unknown_objective_or_trainable_is_a_one_line_error(small_real_root, tmp_path, capsys, key, value):
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(tmp_path / "m"),
                 "--quiet", *tiny_sets(), "--set", f"{key}={value}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and value in err[0]
