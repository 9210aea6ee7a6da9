"""Equation tests for model/ebm/langevin.py (Eq. 4), model/losses.py (Eqs. 10-12), model/ebm/inpaint.py (Sec. 3.3)."""

import math

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.ebm.inpaint import noise_patch
from model.ebm.langevin import langevin
from model.losses import contrastive_divergence, energy_regularizer, reconstruction_loss, total_loss


# ----------------------------------------------------------------------------------------------
# Langevin dynamics


def quadratic_energy(c):
    """E(x) = 0.5·‖x − c‖² per image, gradient x − c."""
    return lambda x: 0.5 * (x - c).pow(2).flatten(1).sum(1)


def test_langevin_without_noise_is_clamped_gradient_descent():
    rng = np.random.default_rng(0)
    x0 = rng.random((2, 3, 4, 5))
    c = rng.random((2, 3, 4, 5)) * 1.6 - 0.3  # targets partly outside [0, 1] so the clamp acts
    beta, J = 0.7, 3
    x = x0.copy()
    for _ in range(J):
        x = np.clip(x - 0.5 * beta * (x - c), 0.0, 1.0)
    got = langevin(quadratic_energy(torch.from_numpy(c)), torch.from_numpy(x0), J, beta, noise_scale=0.0)
    np.testing.assert_allclose(got.numpy(), x, rtol=1e-14, atol=1e-15)
    assert np.any(x == 0.0) and np.any(x == 1.0)  # the clamp was exercised


def test_langevin_hand_case():
    # one image, one pixel: x0 = 0.2, c = 0.6, β = 1 -> x1 = 0.2 − 0.5·(0.2 − 0.6) = 0.4, x2 = 0.5
    x0 = torch.tensor([[[[0.2]]]], dtype=torch.float64)
    c = torch.tensor([[[[0.6]]]], dtype=torch.float64)
    got = langevin(quadratic_energy(c), x0, 2, 1.0, noise_scale=0.0)
    assert got.item() == pytest.approx(0.5, abs=1e-15)


def test_langevin_zero_steps_returns_x0():
    x0 = torch.rand(2, 3, 4, 4)
    got = langevin(quadratic_energy(torch.zeros_like(x0)), x0, 0, 0.1)
    assert torch.equal(got, x0)
    assert not got.requires_grad


def test_langevin_seed_reproducible():
    x0 = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    c = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    runs = [
        langevin(quadratic_energy(c), x0, 4, 0.05, noise_scale=1.0, generator=torch.Generator().manual_seed(s))
        for s in (123, 123, 124)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    for r in runs:
        assert r.min() >= 0 and r.max() <= 1


@pytest.mark.parametrize("steps", [1, 4])
def test_langevin_noise_std(steps):
    beta, s = 0.002, 0.8  # per-step std s·√β ≈ 0.036; after J steps √J times that
    x0 = torch.full((4, 3, 64, 64), 0.5, dtype=torch.float64)
    zero_energy = lambda x: (0.0 * x).flatten(1).sum(1)  # noqa: E731 - ∇E = 0
    out = langevin(zero_energy, x0, steps, beta, noise_scale=s, generator=torch.Generator().manual_seed(0))
    expected = s * math.sqrt(beta) * math.sqrt(steps)
    delta = (out - 0.5).numpy().ravel()
    assert np.abs(delta).max() < 0.5  # the clamp never acted, so this is the raw noise
    assert delta.std() == pytest.approx(expected, rel=0.02)
    assert abs(delta.mean()) < 0.01 * expected + 3 * expected / math.sqrt(delta.size)


def test_langevin_pixels_stay_in_range():
    x0 = torch.rand(3, 3, 8, 8)
    c = torch.randn(3, 3, 8, 8) * 5
    out = langevin(quadratic_energy(c), x0, 5, 0.5, noise_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert out.min() >= 0 and out.max() <= 1
    out = langevin(quadratic_energy(c), x0, 2, 0.5, noise_scale=1.0, pixel_range=(-0.5, 0.25),
                   generator=torch.Generator().manual_seed(1))
    assert out.min() >= -0.5 and out.max() <= 0.25


def test_langevin_create_graph_reaches_energy_parameters():
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    c = torch.full((2, 1, 4, 4), 0.6, dtype=torch.float64)
    energy_fn = lambda x: w * (x - c).pow(2).flatten(1).sum(1)  # noqa: E731 - ∇ = 2w(x − c)
    x0 = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    out = langevin(energy_fn, x0, 2, 0.2, noise_scale=0.0, create_graph=True)
    assert out.requires_grad
    # closed form: x_{j+1} = x_j − 0.1·2w(x_j − c) => x_J − c = (1 − 0.2w)^J (x0 − c)
    loss = out.sum()
    (g,) = torch.autograd.grad(loss, w)
    # d/dw Σ [c + (1 − 0.2w)² (x0 − c)] = Σ 2(1 − 0.2w)(−0.2)(x0 − c)
    expected = 32 * 2 * (1 - 0.2 * 1.3) * (-0.2) * (0.3 - 0.6)
    assert g.item() != 0 and g.item() == pytest.approx(expected, rel=1e-12)

    detached = langevin(energy_fn, x0, 2, 0.2, noise_scale=0.0, create_graph=False)
    assert not detached.requires_grad and detached.grad_fn is None
    np.testing.assert_allclose(detached.numpy(), out.detach().numpy(), rtol=1e-14)


@pytest.mark.parametrize(
    "steps, beta, noise",
    [(-1, 0.1, 1.0), (1.5, 0.1, 1.0), (2, 0.0, 1.0), (2, -0.1, 1.0), (2, float("nan"), 1.0),
     (2, float("inf"), 1.0), (2, 0.1, float("nan")), (2, 0.1, -1.0), (2, 0.1, float("inf"))],
)
def test_langevin_bad_values_raise(steps, beta, noise):
    with pytest.raises(InputError):
        langevin(quadratic_energy(torch.zeros(1, 1, 2, 2)), torch.rand(1, 1, 2, 2), steps, beta, noise)


def test_langevin_nan_steps_raise_input_error():
    with pytest.raises(InputError):
        langevin(quadratic_energy(torch.zeros(1, 1, 2, 2)), torch.rand(1, 1, 2, 2), float("nan"), 0.1, 1.0)


# ----------------------------------------------------------------------------------------------
# losses


def test_contrastive_divergence_hand():
    pos = torch.tensor([0.1, 0.3, 0.2])
    neg = torch.tensor([0.5, 0.1, 0.8])
    # ((0.1−0.5) + (0.3−0.1) + (0.2−0.8)) / 3 = (−0.4 + 0.2 − 0.6) / 3 = −0.8/3
    assert contrastive_divergence(pos, neg).item() == pytest.approx(-0.8 / 3, rel=1e-6)


def test_reconstruction_loss_hand():
    q = torch.zeros(2, 1, 2, 2)
    neg = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    # image 0: MSE = 2/4 = 0.5; image 1: 4·0.25/4 = 0.25; mean = 0.375
    assert reconstruction_loss(neg, q).item() == pytest.approx(0.375, rel=1e-7)
    # per-image MSE averaged over images == overall MSE for equal image sizes
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 3, 4, 5)), rng.random((3, 3, 4, 5))
    assert reconstruction_loss(torch.from_numpy(a), torch.from_numpy(b)).item() == pytest.approx(((a - b) ** 2).mean(), rel=1e-12)


def test_energy_regularizer_hand():
    pos = torch.tensor([1.0, 3.0])
    neg = torch.tensor([2.0, 0.0, 4.0])
    # mean(1, 9) + mean(4, 0, 16) = 5 + 20/3
    assert energy_regularizer(pos, neg).item() == pytest.approx(5 + 20 / 3, rel=1e-6)


def test_total_loss_hand():
    rec, cd, reg = torch.tensor(0.4), torch.tensor(-0.2), torch.tensor(3.0)
    assert total_loss(rec, cd, 2.0, 0.5).item() == pytest.approx(2 * 0.4 + 0.5 * -0.2, rel=1e-6)
    assert total_loss(rec, cd, 2.0, 0.5, reg, 0.1).item() == pytest.approx(0.7 + 0.3, rel=1e-6)
    assert total_loss(rec, cd, 2.0, 0.5, reg, 0.0).item() == pytest.approx(0.7, rel=1e-6)
    assert total_loss(rec, cd, 2.0, 0.5, None, 0.1).item() == pytest.approx(0.7, rel=1e-6)


def test_losses_backpropagate():
    pos = torch.tensor([0.2, 0.4], requires_grad=True)
    neg = torch.tensor([0.6, 0.1], requires_grad=True)
    loss = total_loss(torch.tensor(0.0), contrastive_divergence(pos, neg), 1.0, 1.0, energy_regularizer(pos, neg), 1.0)
    loss.backward()
    # d/dpos_i = 1/2 + 2·pos_i/2, d/dneg_i = −1/2 + 2·neg_i/2
    np.testing.assert_allclose(pos.grad.numpy(), [0.5 + 0.2, 0.5 + 0.4], rtol=1e-6)
    np.testing.assert_allclose(neg.grad.numpy(), [-0.5 + 0.6, -0.5 + 0.1], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# learning by inpainting


@pytest.mark.parametrize("H, W, lo, hi", [(32, 32, 0.1, 0.3), (20, 28, 0.25, 0.25), (16, 40, 0.05, 1.0)])
def test_noise_patch_geometry_and_values(H, W, lo, hi):
    images = torch.ones(6, 3, H, W)  # U[0, 1) never equals 1, so every patch pixel differs
    corrupted, mask = noise_patch(images, lo, hi, generator=torch.Generator().manual_seed(0))
    assert corrupted.shape == images.shape and mask.shape == (6, H, W) and mask.dtype == torch.bool
    S = min(H, W)
    for b in range(6):
        rows, cols = torch.nonzero(mask[b], as_tuple=True)
        top, bottom, left, right = rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()
        side = bottom - top + 1
        assert right - left + 1 == side  # square
        assert mask[b].sum().item() == side * side  # one filled square
        assert max(1, round(lo * S)) <= side <= round(hi * S)
        assert 0 <= top and bottom < H and 0 <= left and right < W  # fully inside
        inside = corrupted[b][:, mask[b]]
        assert torch.all(inside >= 0) and torch.all(inside < 1)
        assert torch.all(inside != images[b][:, mask[b]])
        assert torch.equal(corrupted[b][:, ~mask[b]], images[b][:, ~mask[b]])  # outside unchanged
    assert torch.equal(images, torch.ones(6, 3, H, W))  # input not modified in place


def test_noise_patch_random_images_and_channels():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 24, 24, generator=g, dtype=torch.float64)
    corrupted, mask = noise_patch(images, 0.2, 0.4, generator=torch.Generator().manual_seed(1))
    assert corrupted.dtype == torch.float64
    changed = (corrupted != images).any(1)  # (B, H, W)
    assert torch.equal(changed, mask)
    # noise is drawn per channel, not shared across channels
    inside = corrupted[0][:, mask[0]]
    assert not torch.equal(inside[0], inside[1])


def test_noise_patch_seed_reproducible():
    images = torch.rand(5, 3, 32, 32)
    a = noise_patch(images, 0.1, 0.5, generator=torch.Generator().manual_seed(7))
    b = noise_patch(images, 0.1, 0.5, generator=torch.Generator().manual_seed(7))
    c = noise_patch(images, 0.1, 0.5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_noise_patch_sides_cover_range():
    images = torch.zeros(200, 1, 20, 20)
    _, mask = noise_patch(images, 0.2, 0.6, generator=torch.Generator().manual_seed(0))
    sides = mask.any(2).sum(1)  # (B,) number of rows in each patch
    assert sides.min().item() == 4 and sides.max().item() == 12  # round(0.2·20), round(0.6·20)


@pytest.mark.parametrize("lo, hi", [(0.0, 0.3), (-0.1, 0.3), (0.4, 0.3), (0.2, 1.2), (float("nan"), 0.3), (0.1, float("nan"))])
def test_noise_patch_bad_fractions(lo, hi):
    with pytest.raises(InputError):
        noise_patch(torch.rand(1, 3, 8, 8), lo, hi)


def test_inpaint_gain_patch_is_the_squared_error_drop_inside_the_corruption_by_hand():
    """inpaint_gain_patch = MSE(q̂, q) − MSE(LD(q̂), q) over the corrupted pixels only (every channel); the
    whole-image inpaint_gain also counts the pixels the chain disturbed outside the patch."""
    from model.ebm.backbone import BackboneSpec, build_backbone
    from model.ebm.energy import AdaptiveEBM, SparseSpec
    from model.objective import StepSpec, episode_losses

    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec(name="conv", width=4, depth=2, stride=4, out_dim=4, max_width=16,
                                           input_norm="none", hypercolumn=False))
    model = AdaptiveEBM(backbone, SparseSpec.paper())
    queries = torch.full((1, 3, 8, 8), 0.5)
    corrupted = queries.clone()
    corrupted[:, :, :2, :2] = 1.0  # a 2×2 patch, squared error 0.25 per corrupted value
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :2, :2] = True
    negatives = corrupted.clone()
    negatives[:, :, :2, :2] = 0.7  # moved towards 0.5: squared error 0.04 inside
    negatives[:, :, 4:, 4:] = 0.6  # a disturbance outside the patch: 16 pixels × 3 channels at 0.01
    dictionary = model.build_dictionary(torch.rand(2, 3, 8, 8))
    spec = StepSpec(steps=1, step_size=1.0, noise_scale=0.0)
    stats = episode_losses(model, dictionary, queries, corrupted, negatives, spec, mask).stats
    assert stats["inpaint_gain_patch"] == pytest.approx(0.25 - 0.04, abs=1e-6)
    whole = (12 * 0.25 - (12 * 0.04 + 48 * 0.01)) / 192  # MSE over all 3·8·8 values, before minus after
    assert stats["inpaint_gain"] == pytest.approx(whole, abs=1e-6)
    assert "inpaint_gain_patch" not in episode_losses(model, dictionary, queries, corrupted, negatives, spec).stats
