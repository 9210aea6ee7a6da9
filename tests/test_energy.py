"""Equation tests for model/ebm/energy.py (Eq. 8, anomaly maps) and model/ebm/backbone.py.

The numpy reference re-implements the energy independently: Im2Col volumes by hand, unit-norm
signals and atoms, ISTA with step 1/L (L = ‖D‖₂², numpy.linalg.norm) and thresholds λ_n/L (the
equivalent of Eq. 6 on D/‖D‖₂ — see model/ebm/sparse.py), squared error summed over the m dims.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from model.ebm.backbone import BackboneSpec, ConvBackbone, build_backbone
from model.ebm.energy import AdaptiveEBM, SparseSpec, gaussian_blur
from model.ebm.sparse import fista_energy
from model.errors import InputError

KINDS = ("hard", "sigshrink", "none")
TINY = BackboneSpec(name="conv", width=4, depth=2, stride=2, out_dim=6, max_width=128, input_norm="none", hypercolumn=False)


# ----------------------------------------------------------------------------------------------
# numpy reference


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_shrink(z, lam, kind, tau):
    if kind == "hard":
        return np.sign(z) * np.maximum(np.abs(z) - lam, 0.0)
    if kind == "sigshrink":
        return z * np_sigmoid(tau * (np.abs(z) - lam))
    return z.copy()


def np_im2col(F, l):
    """(B, d, h, w) -> (B, h·w, d·l²), zero padding, feature order (channel, ky, kx)."""
    B, d, h, w = F.shape
    r = l // 2
    P = np.zeros((B, d, h + 2 * r, w + 2 * r))
    P[:, :, r : r + h, r : r + w] = F
    out = np.zeros((B, h, w, d, l, l))
    for ky in range(l):
        for kx in range(l):
            out[:, :, :, :, ky, kx] = P[:, :, ky : ky + h, kx : kx + w].transpose(0, 2, 3, 1)
    return out.reshape(B, h * w, d * l * l)


def np_unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def np_position_energy(q_feats, s_feats, spec: SparseSpec):
    """Eq. 8 per position, (B, h·w)."""
    l = spec.receptive_field
    Q, S = np_im2col(q_feats, l), np_im2col(s_feats, l)  # (B, P, m), (K, P, m)
    if spec.center:  # subtract the mean support volume from signals and atoms
        mu = S.reshape(-1, S.shape[-1]).mean(0)
        Q, S = Q - mu, S - mu
    Z = np_unit(Q)  # (B, P, m)
    atoms = np_unit(S).reshape(-1, Z.shape[-1]).T  # (m, K·P)
    L = np.linalg.norm(atoms, 2) ** 2
    n = np.arange(1, spec.istc_steps + 1)
    lambdas = spec.lam_max * (spec.lam_max / spec.lam_star) ** (-n / spec.istc_steps)
    B, P, m = Z.shape
    flat = Z.reshape(B * P, m)
    alpha = np.zeros((B * P, atoms.shape[1]))
    for lam in lambdas:
        alpha = np_shrink(alpha + (flat - alpha @ atoms.T) @ atoms / L, lam / L, spec.shrink, spec.tau * L)
    recon = alpha @ atoms.T
    return ((flat - recon) ** 2).sum(1).reshape(B, P)


def make_ebm(seed=0, **sparse):
    torch.manual_seed(seed)
    return AdaptiveEBM(ConvBackbone(TINY), SparseSpec.paper(**sparse)).double()


def rand_images(n, seed, size=16, channels=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# dictionary and Eq. 8


@pytest.mark.parametrize("l", [1, 3])
def test_build_dictionary_shape_and_unit_atoms(l):
    ebm = make_ebm(receptive_field=l)
    support = rand_images(3, 1)
    d = ebm.build_dictionary(support)
    assert d.atoms.shape == (6 * l * l, 3 * 8 * 8)  # (m, K·h'·w')
    assert d.shots == 3
    np.testing.assert_allclose(d.atoms.norm(dim=0).detach().numpy(), 1.0, rtol=1e-12)
    assert d.scale.item() == pytest.approx(np.linalg.norm(d.atoms.detach().numpy(), 2), rel=1e-10)
    with pytest.raises(InputError):
        ebm.build_dictionary(support[0])  # not a batch
    with pytest.raises(InputError):
        ebm.build_dictionary(support[:0])  # K = 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("l", [1, 3])
def test_position_energy_matches_numpy_eq8(kind, l):
    ebm = make_ebm(seed=2, shrink=kind, receptive_field=l, istc_steps=5, lam_max=0.9, lam_star=0.1, tau=20.0)
    support, query = rand_images(2, 3), rand_images(3, 4)
    with torch.no_grad():
        d = ebm.build_dictionary(support)
        got = ebm.position_energy(query, d)
        energy = ebm.energy(query, d)
        s_feats = ebm.backbone(support).numpy()
        q_feats = ebm.backbone(query).numpy()
    assert got.shape == (3, 8, 8)
    expected = np_position_energy(q_feats, s_feats, ebm.sparse)
    np.testing.assert_allclose(got.reshape(3, -1).numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(energy.numpy(), expected.mean(1), rtol=1e-9, atol=1e-12)
    assert torch.equal(ebm(query, d), energy)


def test_support_image_reconstructed_almost_exactly_without_shrink():
    # No shrink: Eq. 6 is plain gradient descent on ‖z − D̃α‖², and a support signal is itself an
    # atom. Convergence is linear with rate set by D̃'s conditioning: ~1e-3 after 200 steps here.
    ebm = make_ebm(seed=5, shrink="none", istc_steps=1000)
    support = rand_images(2, 6)
    with torch.no_grad():
        d = ebm.build_dictionary(support)
        e_support = ebm.energy(support, d)
    assert torch.all(e_support < 1e-3), e_support


@pytest.mark.parametrize("kind", ["hard", "sigshrink"])
def test_support_energy_lower_than_noise(kind):
    ebm = make_ebm(seed=7, shrink=kind)
    support = rand_images(2, 8)
    noise = rand_images(4, 9)
    with torch.no_grad():
        d = ebm.build_dictionary(support)
        e_support, e_noise = ebm.energy(support, d), ebm.energy(noise, d)
    assert e_support.max() < e_noise.min()


@pytest.mark.parametrize("kind", KINDS)
def test_energies_in_unit_interval(kind):
    for seed in range(3):
        ebm = make_ebm(seed=seed, shrink=kind)
        with torch.no_grad():
            d = ebm.build_dictionary(rand_images(2, 10 + seed))
            pos = ebm.position_energy(rand_images(5, 20 + seed), d)
            constant = ebm.position_energy(torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64), d)
        for e in (pos, constant):
            assert torch.all(e >= 0) and torch.all(e <= 1 + 1e-12)


def test_grey_batch_equals_repeated_rgb():
    ebm = make_ebm(seed=3)
    d = ebm.build_dictionary(rand_images(2, 11))
    grey = rand_images(3, 12, channels=1)
    with torch.no_grad():
        e_grey = ebm.energy(grey, d)
        e_rgb = ebm.energy(grey.repeat(1, 3, 1, 1), d)
    np.testing.assert_allclose(e_grey.numpy(), e_rgb.numpy(), rtol=1e-12, atol=1e-14)
    # a grey support builds the same dictionary as its RGB copy
    s = rand_images(2, 13, channels=1)
    np.testing.assert_allclose(
        ebm.build_dictionary(s).atoms.detach().numpy(),
        ebm.build_dictionary(s.repeat(1, 3, 1, 1)).atoms.detach().numpy(),
        rtol=1e-12, atol=1e-14,
    )


# ----------------------------------------------------------------------------------------------
# anomaly maps


def test_score_and_map_equals_per_image_autograd():
    ebm = make_ebm(seed=4)
    d = ebm.build_dictionary(rand_images(2, 14))
    images = rand_images(3, 15)
    energies, maps = ebm.score_and_map(images, d)
    assert maps.shape == (3, 16, 16) and energies.shape == (3,)
    assert not maps.requires_grad and not energies.requires_grad
    assert torch.all(maps >= 0)
    assert all(p.grad is None for p in ebm.parameters())  # θ gets no gradient
    for b in range(3):
        x = images[b : b + 1].clone().requires_grad_(True)
        e = ebm.energy(x, d.detach())
        (g,) = torch.autograd.grad(e.sum(), x)
        np.testing.assert_allclose(maps[b].numpy(), g.abs().mean(1)[0].numpy(), rtol=1e-9, atol=1e-14)
        assert energies[b].item() == pytest.approx(e.item(), rel=1e-12)
    assert maps.sum() > 0


def test_score_and_map_smoothing_is_gaussian_blur_of_raw_map():
    ebm = make_ebm(seed=4)
    d = ebm.build_dictionary(rand_images(2, 14))
    images = rand_images(2, 16)
    _, raw = ebm.score_and_map(images, d)
    _, smooth = ebm.score_and_map(images, d, smooth_sigma=1.5)
    np.testing.assert_allclose(smooth.numpy(), gaussian_blur(raw, 1.5).numpy(), rtol=1e-12, atol=1e-15)
    assert torch.all(smooth >= 0)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 0.7])
def test_gaussian_blur_matches_scipy_mirror(sigma):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 20, 23))
    got = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    radius = max(1, int(round(3 * sigma)))
    assert radius <= 19  # no kernel truncation in this regime
    for b in range(2):
        # torch 'reflect' padding (d c b | a b c d) is scipy's 'mirror' mode; radius = round(3σ)
        expected = ndimage.gaussian_filter(maps[b], sigma, mode="mirror", truncate=radius / sigma)
        np.testing.assert_allclose(got[b], expected, atol=1e-12)


def test_gaussian_blur_preserves_constant_map():
    maps = torch.full((2, 20, 20), 0.37, dtype=torch.float64)
    out = gaussian_blur(maps, 2.0)
    np.testing.assert_allclose(out.numpy(), 0.37, rtol=1e-12)


def test_gaussian_blur_preserves_constant_map_smaller_than_kernel():
    maps = torch.full((1, 5, 5), 1.0, dtype=torch.float64)  # σ = 2 -> radius 6 > H − 1 = 4
    out = gaussian_blur(maps, 2.0)
    assert out.mean().item() == pytest.approx(1.0, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# backbone


def test_receptive_field_by_hand():
    # stem 3x3 s1 (+2), block 3x3 s2 (+2·1), block 3x3 s1 (+2·2), head 1x1 (+0): 1 + 2 + 2 + 4 = 9
    assert ConvBackbone(TINY).receptive_field() == 9
    # depth 3, stride 4: 1 + 2 + 2 + 4 + 2·4 = 17
    assert ConvBackbone(BackboneSpec(name="conv", width=4, depth=3, stride=4, out_dim=6, max_width=128, input_norm="none", hypercolumn=False)).receptive_field() == 17
    # depth 2, stride 1: 1 + 2 + 2 + 2 = 7
    assert ConvBackbone(BackboneSpec(name="conv", width=4, depth=2, stride=1, out_dim=6, max_width=128, input_norm="none", hypercolumn=False)).receptive_field() == 7


def _strip_groupnorm(net: ConvBackbone) -> ConvBackbone:
    """GroupNorm statistics are global over the image (every output depends a little on every pixel);
    the receptive field is a property of the conv path, so probe it with the norms replaced."""
    for i, layer in enumerate(net.features):
        if isinstance(layer, nn.GroupNorm):
            net.features[i] = nn.Identity()
    return net


def test_receptive_field_gradient_probe():
    torch.manual_seed(0)
    net = _strip_groupnorm(ConvBackbone(TINY)).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    out = net(x)  # (1, 6, 8, 8)
    i = j = 4
    support = torch.zeros(16, 16, dtype=torch.bool)
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[0, c, i, j], x, retain_graph=True)
        support |= g[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(support, as_tuple=True)
    # output (i, j) sees input rows/cols 2i − 4 .. 2i + 4: exactly the 9 x 9 field
    assert (rows.min().item(), rows.max().item()) == (2 * i - 4, 2 * i + 4)
    assert (cols.min().item(), cols.max().item()) == (2 * j - 4, 2 * j + 4)
    assert support.sum().item() == 9 * 9 == net.receptive_field() ** 2


def test_groupnorm_only_couples_outside_field_through_statistics():
    """With GroupNorm, a pixel outside the field changes the output only via the norm statistics."""
    torch.manual_seed(0)
    net = ConvBackbone(TINY).double()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, :, 4, 4].sum(), x)
    g = g[0].abs().sum(0)
    inside = g[0:13, 0:13][4:, 4:].sum()  # the 9 x 9 field, rows/cols 4..12
    outside = g.sum() - inside
    assert inside > 0 and outside < inside


@pytest.mark.parametrize("stride, depth", [(1, 2), (2, 2), (4, 2), (4, 3), (8, 3)])
def test_backbone_output_stride(stride, depth):
    net = ConvBackbone(BackboneSpec(name="conv", width=4, depth=depth, stride=stride, out_dim=5, max_width=128, input_norm="none", hypercolumn=False))
    assert net.stride == stride and net.out_dim == 5
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 48))
    assert out.shape == (2, 5, 32 // stride, 48 // stride)


@pytest.mark.parametrize("stride, depth", [(3, 2), (6, 3), (0, 2), (-2, 2), (8, 2), (16, 3)])
def test_backbone_bad_stride_raises(stride, depth):
    with pytest.raises(InputError):
        ConvBackbone(BackboneSpec(name="conv", width=4, depth=depth, stride=stride, out_dim=5, max_width=128, input_norm="none", hypercolumn=False))
    with pytest.raises(InputError):
        build_backbone(BackboneSpec(name="conv", width=4, depth=depth, stride=stride, out_dim=5, max_width=128, input_norm="none", hypercolumn=False))


def test_backbone_rejects_bad_input_shapes():
    net = ConvBackbone(TINY)
    with pytest.raises(InputError):
        net(torch.rand(1, 2, 16, 16))
    with pytest.raises(InputError):
        net(torch.rand(3, 16, 16))


def test_energy_rejects_mismatched_dictionary():
    ebm3 = make_ebm(receptive_field=3)
    ebm1 = make_ebm(receptive_field=1)
    d = ebm1.build_dictionary(rand_images(1, 0))
    with pytest.raises(InputError):
        ebm3.energy(rand_images(1, 1), d)


# ----------------------------------------------------------------------------------------------
# model.backbone.input_norm: per-image photometric normalisation inside Ψ


def test_input_norm_matches_a_numpy_reference():
    from model.ebm.backbone import normalize_input

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(2, 3, 5, 7))
    mean = x.mean(axis=(2, 3), keepdims=True)
    std = x.std(axis=(2, 3), ddof=1, keepdims=True)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(normalize_input(t, "none").numpy(), 2 * x - 1)
    np.testing.assert_allclose(normalize_input(t, "mean").numpy(), 2 * (x - mean))
    np.testing.assert_allclose(normalize_input(t, "standardize").numpy(), 0.5 * (x - mean) / (std + 0.05))


def test_input_norm_mean_makes_features_blind_to_an_exposure_offset():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 0.6 + 0.2
    darker = x - 0.15  # the same scene, a uniformly lower exposure (no clipping: x >= 0.2)
    plain = ConvBackbone(TINY).eval()
    blind = ConvBackbone(BackboneSpec(**{**TINY.__dict__, "input_norm": "mean"})).eval()
    blind.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not torch.allclose(plain(x), plain(darker), atol=1e-3)
        torch.testing.assert_close(blind(x), blind(darker), atol=1e-5, rtol=1e-5)


def test_input_norm_unknown_mode_is_refused():
    with pytest.raises(InputError, match="input_norm"):
        ConvBackbone(BackboneSpec(**{**TINY.__dict__, "input_norm": "whiten"}))


# ----------------------------------------------------------------------------------------------
# model.backbone.hypercolumn: the head reads every block's output


def _np_block_outputs(net: ConvBackbone, images: torch.Tensor) -> list[np.ndarray]:
    """Each block's SiLU output, layer by layer through `features` (the reference's own forward)."""
    x, outs = images * 2 - 1, []
    for index, layer in enumerate(net.features[:-1]):
        x = layer(x)
        if isinstance(layer, nn.SiLU) and index > 1:  # index 1 is the stem's SiLU, not a block
            outs.append(x.detach().numpy())
    return outs


def test_hypercolumn_matches_a_numpy_reference():
    spec = BackboneSpec(name="conv", width=4, depth=3, stride=2, out_dim=5, max_width=16, input_norm="none",
                        hypercolumn=True)
    torch.manual_seed(0)
    net = ConvBackbone(spec).double().eval()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    blocks = _np_block_outputs(net, images)  # widths 8 (stride 2, 4×4), 8, 8 (stride 1, 4×4)
    assert [b.shape[1:] for b in blocks] == [(8, 4, 4)] * 3
    # a stride-2 model: block 1 is at the output grid already; check the pooling on a stride-4 model below
    column = np.concatenate([b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-6) for b in blocks], axis=1)
    head = net.head()
    weight = head.weight.detach().numpy()[:, :, 0, 0]  # (d, Σc)
    expected = np.einsum("dc,bchw->bdhw", weight, column) + head.bias.detach().numpy()[None, :, None, None]
    with torch.no_grad():
        np.testing.assert_allclose(net(images).numpy(), expected, atol=1e-10)
    assert head.in_channels == 24


def test_hypercolumn_pools_early_blocks_to_the_output_grid():
    spec = BackboneSpec(name="conv", width=4, depth=3, stride=4, out_dim=5, max_width=16, input_norm="none",
                        hypercolumn=True)
    torch.manual_seed(1)
    net = ConvBackbone(spec).double().eval()
    images = torch.rand(1, 3, 8, 12, dtype=torch.float64)  # non-square
    blocks = _np_block_outputs(net, images)  # (8, 4, 6) at stride 2, then (16, 2, 3) twice
    first = blocks[0].reshape(1, 8, 2, 2, 3, 2).mean(axis=(3, 5))  # 2×2 average pool -> (1, 8, 2, 3)
    levels = [first, blocks[1], blocks[2]]
    column = np.concatenate([b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-6) for b in levels], axis=1)
    weight = net.head().weight.detach().numpy()[:, :, 0, 0]  # (5, 40)
    expected = np.einsum("dc,bchw->bdhw", weight, column) + net.head().bias.detach().numpy()[None, :, None, None]
    with torch.no_grad():
        out = net(images)
    assert out.shape == (1, 5, 2, 3)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-10)


def test_hypercolumn_off_is_the_plain_sequential_net():
    torch.manual_seed(0)
    net = ConvBackbone(TINY).eval()
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(images), net.features(images * 2 - 1))
    assert net.head().in_channels == 8  # the last block's width only


# ----------------------------------------------------------------------------------------------
# image_norm=support: position energies standardised by the shots' leave-one-out energies


def np_box_mean(a):
    """3×3 mean over the in-bounds neighbours of every cell (count_include_pad=False)."""
    h, w = a.shape
    out = np.zeros_like(a)
    for y in range(h):
        for x in range(w):
            out[y, x] = a[max(0, y - 1):y + 2, max(0, x - 1):x + 2].mean()
    return out


def test_normal_energy_matches_a_leave_one_out_reference_and_standardises_the_image_score():
    sparse = dict(solver="fista", top_k_atoms=4, max_steps=50, receptive_field=1, center=False, image_score="topk",
                  top_frac=0.1, image_norm="support", shrink="hard", lam_star=0.05)
    ebm = make_ebm(seed=3, **sparse)
    g = torch.Generator().manual_seed(4)
    support = torch.rand(4, 3, 12, 12, generator=g).double()
    queries = torch.rand(2, 3, 12, 12, generator=g).double()
    with torch.no_grad():
        plain = ebm.build_dictionary(support)
        normed = ebm.build_dictionary(support, task_shots=4)
        # reference: each shot against a dictionary built from the other shots alone
        loo = np.stack([ebm.position_energy(support[i:i + 1], ebm.build_dictionary(
            torch.cat([support[:i], support[i + 1:]])))[0].numpy() for i in range(4)])  # (K, h', w')
        mean = np_box_mean(loo.mean(0))
        spread = np_box_mean(loo.std(0, ddof=1))
        scale = spread + spread.mean()
        np.testing.assert_allclose(normed.normal_mean.numpy(), mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(normed.normal_scale.numpy(), scale, rtol=1e-6, atol=1e-9)
        # the image score ranks standardised position energies; the raw score and the maps are unchanged
        position = ebm.position_energy(queries, plain).numpy()  # (B, h', w')
        z = ((position - mean) / scale).reshape(2, -1)
        k = max(1, round(0.1 * z.shape[1]))
        expected = np.sort(z, axis=1)[:, -k:].mean(1)
        scores, maps = ebm.score_and_map(queries, normed, 0.0, "energy")
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-9)
        raw_scores, raw_maps = ebm.score_and_map(queries, plain, 0.0, "energy")
        torch.testing.assert_close(maps, raw_maps)
        assert not torch.allclose(scores, raw_scores)
        torch.testing.assert_close(ebm.energy(queries, normed), scores)
    # below 4 shots the calibration's K − 2-shot dictionaries could not get normal energies: raw scores;
    # image_norm=none keeps raw energies too
    for shots in (1, 2, 3):
        assert ebm.build_dictionary(support[:shots], task_shots=shots).normal_mean is None
    off = make_ebm(seed=3, **{**sparse, "image_norm": "none"})
    assert off.build_dictionary(support, task_shots=4).normal_mean is None
    assert plain.normal_mean is None  # without task_shots (training) D never carries them
    with pytest.raises(InputError, match="image_norm"):
        make_ebm(**{**sparse, "image_norm": "zscore"})
    with pytest.raises(InputError, match="feature positions"):
        ebm.score_and_map(torch.rand(1, 3, 16, 16).double(), normed, 0.0, "energy")


# ----------------------------------------------------------------------------------------------
# exposure=support and whiten=support: statistics of the task's shots applied to every image


TASK = dict(solver="fista", top_k_atoms=4, max_steps=200, tol=1e-10, receptive_field=1, center=False, shrink="hard",
            lam_star=0.05, image_score="topk", top_frac=0.1)


def np_whitening(volumes, shrink):
    """(M + shrink·mean(diag M)·I)^(−1/2) through numpy's SVD of the symmetric matrix (not eigh)."""
    M = volumes.T @ volumes / volumes.shape[0]
    A = M + shrink * np.trace(M) / M.shape[0] * np.eye(M.shape[0])
    U, s, _ = np.linalg.svd(A)
    return U @ np.diag(s ** -0.5) @ U.T


def test_exposure_and_whitening_match_a_numpy_reference():
    ebm = make_ebm(seed=6, exposure="support", whiten="support", whiten_shrink=0.5, **TASK)
    support, query = rand_images(3, 30, size=8), rand_images(2, 31, size=8)
    with torch.no_grad():
        d = ebm.build_dictionary(support)
        got = ebm.position_energy(query, d).reshape(2, -1).numpy()
        exposure = support.numpy().mean(axis=(0, 2, 3))  # (C,)
        np.testing.assert_allclose(d.exposure.numpy(), exposure, rtol=1e-12)
        aligned = lambda x: x - x.mean(axis=(2, 3), keepdims=True) + exposure[None, :, None, None]  # noqa: E731
        s_feats = ebm.backbone(torch.from_numpy(aligned(support.numpy()))).numpy()  # (K, d, h', w')
        q_feats = ebm.backbone(torch.from_numpy(aligned(query.numpy()))).numpy()
    S = np_im2col(s_feats, 1).reshape(-1, s_feats.shape[1])  # (K·P, m)
    Q = np_im2col(q_feats, 1).reshape(-1, q_feats.shape[1])  # (B·P, m)
    W = np_whitening(S, 0.5)
    np.testing.assert_allclose(d.whiten.numpy(), W, rtol=1e-8, atol=1e-10)
    # the solver itself is tested against scikit-learn's Lasso (test_detector.py): here it codes the reference's
    # signals over the reference's atoms
    expected = fista_energy(torch.from_numpy(np_unit(Q @ W)), torch.from_numpy(np_unit(S @ W).T), 0.05, 200, "hard",
                            20.0, 4, 1e-10).reshape(2, -1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-12)


def test_exposure_support_makes_scores_blind_to_an_image_offset_and_keeps_what_differs_inside():
    on = make_ebm(seed=7, exposure="support", **TASK)
    off = make_ebm(seed=7, **TASK)
    ramp = torch.linspace(0.3, 0.6, 12, dtype=torch.float64).view(1, 1, 1, 12).expand(1, 3, 12, 12)  # a smooth product
    support, query = ramp + 0.02 * rand_images(3, 32, size=12), ramp + 0.02 * rand_images(2, 33, size=12)
    darker = query - torch.tensor([0.10, 0.05, 0.15], dtype=torch.float64).view(1, 3, 1, 1)  # a per-channel offset
    with torch.no_grad():
        d_on, d_off = on.build_dictionary(support), off.build_dictionary(support)
        torch.testing.assert_close(on.energy(darker, d_on), on.energy(query, d_on))
        assert not torch.allclose(off.energy(darker, d_off), off.energy(query, d_off))
        # a shot is still explained by its own atoms, whatever its exposure (about λ² is left by the soft threshold)
        own = on.position_energy(support[:1], d_on)
        torch.testing.assert_close(on.position_energy(support[:1] - 0.1, d_on), own)
        assert own.max() < 2 * 0.05 ** 2
        spotted = query.clone()
        spotted[:, :, 4:7, 4:7] = 1.0  # a bright defect moves one region, not just the mean
        assert (on.energy(spotted, d_on) > on.energy(query, d_on)).all()
        # a grey image against colour shots is given the shots' colour means (broadcast to three channels)
        grey = query.mean(1, keepdim=True)
        torch.testing.assert_close(on.energy(grey, d_on), on.energy(grey.expand(-1, 3, -1, -1), d_on))


def test_whitening_is_a_constant_of_the_task_and_spares_the_gradient_into_psi():
    ebm = make_ebm(seed=8, whiten="support", **TASK)
    support, query = rand_images(3, 34, size=8), rand_images(2, 35, size=8)
    d = ebm.build_dictionary(support)
    assert not d.whiten.requires_grad  # no gradient through eigh
    W = d.whiten.numpy()
    np.testing.assert_allclose(W, W.T, atol=1e-12)  # symmetric (prepare multiplies by it from the right)
    assert np.linalg.eigvalsh(W).min() > 0
    ebm.energy(query, d).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ebm.backbone.parameters())


@pytest.mark.parametrize("bad, match", [({"exposure": "mean"}, "model.exposure"), ({"whiten": "zca"}, "model.whiten"),
                                        ({"whiten_shrink": 0.0}, "model.whiten_shrink"),
                                        ({"whiten_shrink": float("nan")}, "model.whiten_shrink")])
def test_task_statistics_bad_values_are_refused(bad, match):
    with pytest.raises(InputError, match=match):
        make_ebm(**{**TASK, **bad})


@pytest.mark.parametrize("receptive_field,smooth", [(1, 0.0), (3, 1.5)])
def test_shot_subsets_give_what_adapting_to_the_subset_gives(receptive_field, smooth):
    """ShotSubsets (one similarity product per image, top-k lists per shot) against building the dictionary of
    the subset anew: the same normal energies and the same scores and energy maps, for subsets of one and two
    shots left out, the standardisation of a K-shot task included."""
    from model.ebm.energy import ShotSubsets

    spec = BackboneSpec(name="conv", width=8, depth=2, stride=4, out_dim=16, max_width=128, input_norm="none",
                        hypercolumn=False)
    sparse = SparseSpec.paper(solver="fista", shrink="hard", lam_star=0.05, max_steps=20, top_k_atoms=8,
                              center=False, image_norm="support", image_score="topk", top_frac=0.05,
                              receptive_field=receptive_field)
    torch.manual_seed(0)
    ebm = AdaptiveEBM(ConvBackbone(spec), sparse).double().eval()
    gen = torch.Generator().manual_seed(3)
    shots = torch.rand(6, 3, 48, 48, generator=gen, dtype=torch.float64)
    images = torch.rand(3, 3, 48, 48, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        subsets = ShotSubsets(ebm, ebm.backbone(shots))
        signals = subsets.signals(ebm.backbone(images))  # (3·h'w', m)
    top = subsets.top(signals)
    for keep in ([1, 2, 3, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4, 5]):
        mine = subsets.dictionary(keep, 6)
        direct = ebm.build_dictionary(shots[keep], 6)
        torch.testing.assert_close(mine.atoms, direct.atoms)
        torch.testing.assert_close(mine.normal_mean, direct.normal_mean, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(mine.normal_scale, direct.normal_scale, rtol=1e-6, atol=1e-9)
        scores, maps = subsets.score(signals, top, keep, mine, (48, 48), smooth)
        expected_scores, expected_maps = ebm.score_and_map(images, direct, smooth, "energy")
        torch.testing.assert_close(scores, expected_scores, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(maps, expected_maps, rtol=1e-6, atol=1e-9)
    assert subsets.dictionary([2, 5], 3).normal_mean is None  # a 3-shot task is not standardised
    with pytest.raises(InputError, match="ShotSubsets needs FISTA"):
        ShotSubsets(AdaptiveEBM(ConvBackbone(spec), SparseSpec.paper()), torch.rand(2, 16, 12, 12))


def test_fista_energy_returns_the_columns_of_each_signals_most_similar_atoms():
    """return_atoms: the same energies, and the columns topk gives over the similarity product, most similar first
    (the candidates kNN takes, model.methods.knn.nearest_among)."""
    g = torch.Generator().manual_seed(5)
    signals = torch.nn.functional.normalize(torch.randn(300, 12, generator=g), dim=1)  # (n, m)
    atoms = torch.nn.functional.normalize(torch.randn(12, 700, generator=g), dim=0)  # (m, A)
    plain = fista_energy(signals, atoms, 0.05, 20, top_k=8, chunk_bytes=4 * 700 * 64)  # several chunks
    energies, columns = fista_energy(signals, atoms, 0.05, 20, top_k=8, chunk_bytes=4 * 700 * 64, return_atoms=3)
    torch.testing.assert_close(energies, plain, rtol=0, atol=0)
    assert columns.shape == (300, 3)
    torch.testing.assert_close(columns, (signals @ atoms).topk(3, dim=1).indices, rtol=0, atol=0)
    assert fista_energy(signals, atoms, 0.05, 20, top_k=2, return_atoms=5)[1].shape == (300, 2)  # at most top_k
