"""Equation tests for model/ebm/sparse.py against independent numpy float64 references.

Conventions (module docstring of model/ebm/sparse.py): signals are rows Z (n, m), the dictionary is
D (m, A) with one atom per column, codes are α (n, A) and the reconstruction is α Dᵀ. `sparse_code`
runs Eq. 6 on D / ‖D‖₂ with thresholds λ/‖D‖₂ and SigShrink smoothness τ·‖D‖₂, which is ISTA with
step 1/L (L = ‖D‖₂²) and thresholds λ/L on the raw D.
"""

import math

import numpy as np
import pytest
import torch

from model.ebm.energy import AdaptiveEBM, SparseSpec
from model.errors import InputError
from model.ebm.backbone import BackboneSpec, ConvBackbone
from model.ebm.sparse import (
    TaskDictionary,
    continuation_schedule,
    feature_volumes,
    hard_shrink,
    istc,
    lasso_objective,
    no_shrink,
    shrink,
    sig_shrink,
    sparse_code,
    spectral_norm,
)

KINDS = ("hard", "sigshrink", "none")


# ----------------------------------------------------------------------------------------------
# numpy references


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_shrink(z, lam, kind, tau=1.0):
    if kind == "hard":
        return np.sign(z) * np.maximum(np.abs(z) - lam, 0.0)
    if kind == "sigshrink":
        return z * np_sigmoid(tau * (np.abs(z) - lam))
    if kind == "none":
        return z.copy()
    raise ValueError(kind)


def np_schedule(lam_max, lam_star, n_steps):
    n = np.arange(1, n_steps + 1, dtype=np.float64)
    return lam_max * (lam_max / lam_star) ** (-n / n_steps)


def np_ista_raw(Z, D, lambdas, kind, tau):
    """ISTA on the raw dictionary D (m, A), rows of Z are signals; step 1/L with L = ‖D‖₂².

    Threshold λ_n / L; SigShrink's smoothness in these units is τ·L (derivation: with s = ‖D‖₂ the
    code on D/s is s·α, and σ(s·y, λ/s, τ·s) = s·y·sigmoid(τ·L·(|y| − λ/L)))."""
    L = np.linalg.norm(D, 2) ** 2
    alpha = np.zeros((Z.shape[0], D.shape[1]))
    for lam in lambdas:
        grad_step = alpha + (Z - alpha @ D.T) @ D / L
        alpha = np_shrink(grad_step, lam / L, kind, tau * L)
    return alpha


def np_im2col(F, l):
    """(B, d, h, w) -> (B, h·w, d·l²) with zero padding, feature order (channel, ky, kx)."""
    B, d, h, w = F.shape
    r = l // 2
    P = np.zeros((B, d, h + 2 * r, w + 2 * r))
    P[:, :, r : r + h, r : r + w] = F
    out = np.zeros((B, h * w, d * l * l))
    for b in range(B):
        for i in range(h):
            for j in range(w):
                vec = []
                for c in range(d):
                    for ky in range(l):
                        for kx in range(l):
                            vec.append(P[b, c, i + ky, j + kx])
                out[b, i * w + j] = vec
    return out


# ----------------------------------------------------------------------------------------------
# continuation schedule


@pytest.mark.parametrize("lam_max, lam_star, n", [(0.9, 0.1, 5), (2.0, 0.5, 1), (1.0, 1e-3, 12), (0.3, 0.29, 3)])
def test_continuation_schedule_matches_numpy(lam_max, lam_star, n):
    got = continuation_schedule(lam_max, lam_star, n)
    assert got.dtype == torch.float64 and got.shape == (n,)
    np.testing.assert_allclose(got.numpy(), np_schedule(lam_max, lam_star, n), rtol=1e-14, atol=0)
    assert got[-1].item() == pytest.approx(lam_star, rel=1e-14)
    assert got[0].item() < lam_max
    assert np.all(np.diff(got.numpy()) < 0)


def test_continuation_schedule_hand_values():
    # λ_max = 1, λ* = 0.25, N = 2: λ_1 = 4^(-1/2) = 0.5, λ_2 = 4^(-1) = 0.25
    np.testing.assert_allclose(continuation_schedule(1.0, 0.25, 2).numpy(), [0.5, 0.25], rtol=1e-15)


@pytest.mark.parametrize(
    "lam_max, lam_star, n",
    [
        (0.0, 0.1, 5),  # λ_max <= 0
        (-1.0, -2.0, 5),
        (0.5, 0.9, 5),  # λ* > λ_max
        (0.9, 0.0, 5),  # λ* <= 0
        (0.9, -0.1, 5),
        (float("nan"), 0.1, 5),
        (0.9, float("nan"), 5),
        (float("inf"), 0.1, 5),
        (0.9, float("inf"), 5),
        (0.9, 0.1, 0),  # N < 1
        (0.9, 0.1, -3),
        (0.9, 0.1, 2.5),  # not an integer
    ],
)
def test_continuation_schedule_rejects_bad_values(lam_max, lam_star, n):
    with pytest.raises(InputError):
        continuation_schedule(lam_max, lam_star, n)


@pytest.mark.parametrize("n", [float("nan"), float("inf")])
def test_continuation_schedule_rejects_non_finite_steps(n):
    with pytest.raises(InputError):
        continuation_schedule(0.9, 0.1, n)


# ----------------------------------------------------------------------------------------------
# shrink functions and their gradients

LAM = 0.5
TAU = 7.0
GRID = np.concatenate(
    [
        np.linspace(-2.0, 2.0, 41),
        [-LAM - 1e-3, -LAM, -LAM + 1e-3, LAM - 1e-3, LAM, LAM + 1e-3, 0.0, -1e-4, 1e-4],
    ]
)


@pytest.mark.parametrize("kind", KINDS)
def test_shrink_values_match_numpy(kind):
    z = torch.from_numpy(GRID)
    got = shrink(z, LAM, kind, TAU).numpy()
    np.testing.assert_allclose(got, np_shrink(GRID, LAM, kind, TAU), rtol=1e-14, atol=1e-15)


def test_shrink_functions_direct_and_hand_values():
    z = torch.tensor([-2.0, -0.5, -0.2, 0.0, 0.3, 0.5, 1.25], dtype=torch.float64)
    np.testing.assert_allclose(hard_shrink(z, 0.5).numpy(), [-1.5, 0, 0, 0, 0, 0, 0.75])
    assert torch.equal(no_shrink(z, 0.5), z)
    # sigshrink at |z| = λ is exactly z/2
    np.testing.assert_allclose(sig_shrink(z, 0.5, 3.0).numpy()[[1, 5]], [-0.25, 0.25], rtol=1e-15)
    with pytest.raises(InputError):
        shrink(z, 0.5, "soft")


def _grad(fn, z_np):
    z = torch.from_numpy(z_np.copy()).requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z).sum(), z)
    return g.numpy()


def test_hard_shrink_gradient():
    g = _grad(lambda z: hard_shrink(z, LAM), GRID)
    expected = np.where(np.abs(GRID) > LAM, 1.0, 0.0)
    np.testing.assert_array_equal(g, expected)


def test_sig_shrink_gradient_analytic_and_positive():
    g = _grad(lambda z: sig_shrink(z, LAM, TAU), GRID)
    s = np_sigmoid(TAU * (np.abs(GRID) - LAM))
    expected = s + TAU * np.abs(GRID) * s * (1 - s)
    np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)
    assert np.all(g > 0)
    # at z = 0 exactly the derivative is sigmoid(−τλ) > 0
    g0 = _grad(lambda z: sig_shrink(z, LAM, TAU), np.array([0.0]))
    assert g0[0] == pytest.approx(np_sigmoid(-TAU * LAM), rel=1e-14) and g0[0] > 0


def test_sig_shrink_gradient_positive_for_sharp_tau():
    grid = np.linspace(-3, 3, 601)
    g = _grad(lambda z: sig_shrink(z, 0.3, 20.0), grid)
    assert np.all(g > 0)


def test_no_shrink_gradient_is_one():
    g = _grad(lambda z: shrink(z, LAM, "none"), GRID)
    np.testing.assert_array_equal(g, np.ones_like(GRID))


# ----------------------------------------------------------------------------------------------
# ISTC (Eq. 6)


def _unit_dictionary(rng, m, A, norm=0.9):
    D = rng.normal(size=(m, A))
    return D / np.linalg.norm(D, 2) * norm


@pytest.mark.parametrize("kind", KINDS)
def test_istc_single_step(kind):
    rng = np.random.default_rng(1)
    D = _unit_dictionary(rng, 6, 10)
    Z = rng.normal(size=(4, 6))
    lam = 0.3
    alpha0 = np.zeros((4, 10))
    expected = np_shrink(alpha0 + (Z - alpha0 @ D.T) @ D, lam, kind, 5.0)  # σ(α0 + Dᵀ(z − Dα0))
    np.testing.assert_allclose(expected, np_shrink(Z @ D, lam, kind, 5.0))  # α0 = 0 -> σ(Z D)
    got = istc(torch.from_numpy(Z), torch.from_numpy(D), torch.tensor([lam], dtype=torch.float64), kind, 5.0)
    assert got.shape == (4, 10)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_istc_two_steps_match_numpy_loop(kind):
    rng = np.random.default_rng(2)
    D = _unit_dictionary(rng, 5, 12)
    Z = rng.normal(size=(3, 5))
    lambdas = [0.6, 0.2]
    alpha = np.zeros((3, 12))
    for lam in lambdas:  # Eq. 6 with D as columns, signals as rows
        alpha = np_shrink(alpha + (Z - alpha @ D.T) @ D, lam, kind, 4.0)
    got = istc(torch.from_numpy(Z), torch.from_numpy(D), torch.tensor(lambdas, dtype=torch.float64), kind, 4.0)
    np.testing.assert_allclose(got.numpy(), alpha, rtol=1e-12, atol=1e-14)


def test_istc_hand_case():
    # D = I (2x2), z = (1, 0.2), λ = 0.5, hard: α1 = soft(z) = (0.5, 0)
    got = istc(torch.tensor([[1.0, 0.2]], dtype=torch.float64), torch.eye(2, dtype=torch.float64),
               torch.tensor([0.5]), "hard")
    np.testing.assert_allclose(got.numpy(), [[0.5, 0.0]])


# ----------------------------------------------------------------------------------------------
# sparse_code (normalised ISTC == ISTA with step 1/L on the raw D)


def test_spectral_norm_matches_numpy():
    rng = np.random.default_rng(3)
    for shape in [(5, 40), (12, 12), (3, 7)]:
        D = rng.normal(size=shape) * 3.0
        got = spectral_norm(torch.from_numpy(D))
        assert got.item() == pytest.approx(np.linalg.norm(D, 2), rel=1e-12)
    D32 = torch.from_numpy(rng.normal(size=(8, 50))).float()
    assert spectral_norm(D32).dtype == torch.float32
    assert spectral_norm(D32).item() == pytest.approx(np.linalg.norm(D32.double().numpy(), 2), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_scale", [False, True])
def test_sparse_code_matches_numpy_ista(kind, with_scale):
    rng = np.random.default_rng(4)
    m, A, n = 7, 30, 5
    D = rng.normal(size=(m, A)) * 2.5 + 0.3  # unnormalised, ‖D‖₂ ≫ 1
    assert np.linalg.norm(D, 2) > 5
    Z = rng.normal(size=(n, m)) * 4.0
    lam_max, lam_star, N, tau = 3.0, 0.2, 6, 2.0
    alpha = np_ista_raw(Z, D, np_schedule(lam_max, lam_star, N), kind, tau)
    expected = alpha @ D.T
    scale = torch.tensor(np.linalg.norm(D, 2)) if with_scale else None
    got = sparse_code(torch.from_numpy(Z), torch.from_numpy(D), lam_max, lam_star, N, kind, tau, atom_scale=scale)
    assert got.shape == (n, m)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-11)


def test_sparse_code_hand_case():
    # D = 2·I: ‖D‖₂ = 2, L = 4. One hard step from 0 with λ = 1: α = soft(Dᵀz/4, 1/4) = soft(z/2, 1/4)
    z = np.array([[1.0, 0.3, -2.0]])
    alpha = np.sign(z / 2) * np.maximum(np.abs(z / 2) - 0.25, 0)  # [0.25, 0, -0.75]
    got = sparse_code(torch.from_numpy(z), 2 * torch.eye(3, dtype=torch.float64), 1.0, 1.0, 1, "hard")
    np.testing.assert_allclose(got.numpy(), 2 * alpha, rtol=1e-14)  # reconstruction D α
    np.testing.assert_allclose(got.numpy(), [[0.5, 0.0, -1.5]], rtol=1e-14)


def test_lasso_objective_matches_numpy():
    rng = np.random.default_rng(5)
    D, Z, alpha = rng.normal(size=(4, 9)), rng.normal(size=(3, 4)), rng.normal(size=(3, 9))
    expected = 0.5 * ((Z - alpha @ D.T) ** 2).sum(1) + 0.37 * np.abs(alpha).sum(1)
    got = lasso_objective(torch.from_numpy(Z), torch.from_numpy(D), torch.from_numpy(alpha), 0.37)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13)


def test_ista_monotone_and_istc_gives_same_iterates():
    rng = np.random.default_rng(6)
    m, A, n = 8, 40, 6
    D = rng.normal(size=(m, A)) + 0.5
    Z = rng.normal(size=(n, m)) * 3.0
    lam, iters = 0.8, 50
    L = np.linalg.norm(D, 2) ** 2
    s = math.sqrt(L)
    alpha = np.zeros((n, A))
    iterates, objectives = [], []
    Zt, Dt = torch.from_numpy(Z), torch.from_numpy(D)
    for _ in range(iters):
        alpha = np_shrink(alpha + (Z - alpha @ D.T) @ D / L, lam / L, "hard")
        iterates.append(alpha.copy())
        obj = lasso_objective(Zt, Dt, torch.from_numpy(alpha), lam).numpy()
        np.testing.assert_allclose(obj, 0.5 * ((Z - alpha @ D.T) ** 2).sum(1) + lam * np.abs(alpha).sum(1), rtol=1e-13)
        objectives.append(obj)
    objectives = np.array(objectives)  # (iters, n)
    start = 0.5 * (Z**2).sum(1)  # objective at α = 0
    assert np.all(objectives[0] <= start + 1e-12)
    assert np.all(np.diff(objectives, axis=0) <= 1e-10), "Eq. 5 objective increased along ISTA"
    assert np.all(objectives[-1] < start)  # and strictly decreased overall
    # model.sparse.istc at a constant λ on D/‖D‖ with λ/‖D‖ reproduces the iterates (codes scale by s)
    unit = torch.from_numpy(D / s)
    for k in (1, 2, 7, 50):
        codes = istc(Zt, unit, torch.full((k,), lam / s, dtype=torch.float64), "hard")
        np.testing.assert_allclose(codes.numpy() / s, iterates[k - 1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_code_residual_never_exceeds_signal(kind):
    """With continuation, every step is a descent step, so ‖z − z'‖ ≤ ‖z‖ (basis of E ∈ [0, 1])."""
    rng = np.random.default_rng(7)
    D = rng.normal(size=(10, 60))
    D /= np.linalg.norm(D, axis=0, keepdims=True)
    Z = rng.normal(size=(200, 10))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    got = sparse_code(torch.from_numpy(Z), torch.from_numpy(D), 0.9, 0.1, 5, kind, 20.0).numpy()
    err = ((Z - got) ** 2).sum(1)
    assert np.all(err <= 1 + 1e-12)


# ----------------------------------------------------------------------------------------------
# receptive-field volumes (Section 3.1.1)


def test_feature_volumes_shapes():
    feats = torch.randn(2, 5, 4, 6)
    assert feature_volumes(feats, 1).shape == (2, 24, 5)
    assert feature_volumes(feats, 3).shape == (2, 24, 45)
    assert feature_volumes(feats, 5).shape == (2, 24, 125)


def test_feature_volumes_l1_is_plain_layer():
    rng = np.random.default_rng(8)
    F_np = rng.normal(size=(2, 3, 4, 5))
    got = feature_volumes(torch.from_numpy(F_np), 1).numpy()
    for b in range(2):
        for i in range(4):
            for j in range(5):
                np.testing.assert_array_equal(got[b, i * 5 + j], F_np[b, :, i, j])


@pytest.mark.parametrize("l", [3, 5])
def test_feature_volumes_match_hand_im2col(l):
    rng = np.random.default_rng(9)
    F_np = rng.normal(size=(2, 3, 5, 6))
    got = feature_volumes(torch.from_numpy(F_np), l).numpy()
    np.testing.assert_array_equal(got, np_im2col(F_np, l))
    if l == 3:
        # interior position (2, 3): the flattened 3x3 neighbourhood, channel-major then ky, kx
        expected = F_np[1, :, 1:4, 2:5].reshape(-1)
        np.testing.assert_array_equal(got[1, 2 * 6 + 3], expected)
        # corner (0, 0): the first row and first column of the neighbourhood are zero padding
        corner = got[0, 0].reshape(3, 3, 3)  # (channel, ky, kx)
        assert np.all(corner[:, 0, :] == 0) and np.all(corner[:, :, 0] == 0)
        np.testing.assert_array_equal(corner[:, 1:, 1:], F_np[0, :, 0:2, 0:2])
        # bottom-right corner: last row and column padded
        corner = got[0, -1].reshape(3, 3, 3)
        assert np.all(corner[:, 2, :] == 0) and np.all(corner[:, :, 2] == 0)
        np.testing.assert_array_equal(corner[:, :2, :2], F_np[0, :, 3:5, 4:6])


@pytest.mark.parametrize("l", [0, 2, 4, -1])
def test_feature_volumes_rejects_even_or_small(l):
    with pytest.raises(InputError):
        feature_volumes(torch.randn(1, 2, 4, 4), l)


def test_receptive_field_one_energy_equals_hand_built_plain_dictionary():
    torch.manual_seed(0)
    backbone = ConvBackbone(BackboneSpec(name="conv", width=4, depth=2, stride=2, out_dim=6, max_width=128, input_norm="none", hypercolumn=False)).double()
    ebm = AdaptiveEBM(backbone, SparseSpec.paper(receptive_field=1, istc_steps=4, shrink="hard", center=False)).double()
    support = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    query = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        feats = backbone(support).numpy()  # (2, 6, 8, 8)
        atoms = feats.transpose(1, 0, 2, 3).reshape(6, -1)  # every position of every image, (d, K·h·w)
        atoms = atoms / np.maximum(np.linalg.norm(atoms, axis=0, keepdims=True), 1e-6)
        hand = TaskDictionary(torch.from_numpy(atoms), torch.tensor(np.linalg.norm(atoms, 2)), 2)
        built = ebm.build_dictionary(support)
        assert built.atoms.shape == (6, 2 * 64)
        # same atom set (order: image-major, then row-major positions)
        np.testing.assert_allclose(built.atoms.numpy(), atoms, rtol=1e-12, atol=1e-14)
        e_hand = ebm.energy(query, hand)
        e_built = ebm.energy(query, built)
    np.testing.assert_allclose(e_hand.numpy(), e_built.numpy(), rtol=1e-10, atol=1e-12)


def test_gram_norm_bound_is_an_upper_bound_and_tight_for_correlated_atoms():
    from model.ebm.sparse import gram_norm_bound

    g = torch.Generator().manual_seed(3)
    orthogonal = torch.eye(4).expand(2, 4, 4)  # ‖G‖₂ = 1; Frobenius 2, Gershgorin 1
    torch.testing.assert_close(gram_norm_bound(orthogonal), torch.ones(2))
    for shift in (0.0, 1.0, 3.0):  # from nearly orthogonal to strongly correlated unit atoms
        atoms = torch.nn.functional.normalize(torch.randn(50, 8, 32, generator=g) + shift, dim=2)  # (n, k, m)
        gram = atoms @ atoms.transpose(1, 2)  # (n, k, k)
        exact = np.linalg.eigvalsh(gram.double().numpy())[:, -1]
        bound = gram_norm_bound(gram).double().numpy()
        assert (bound >= exact * (1 - 1e-6)).all()
        if shift == 3.0:
            assert (bound <= exact * 1.05).all()  # one dominant eigenvalue: the bound is tight


@pytest.mark.parametrize("rows,columns,k", [(7, 10240, 16), (5, 1000, 16), (3, 64 * 16, 16), (4, 300, 3),
                                            (2, 64 * 17 + 5, 16), (3, 10, 4)])
def test_top_similar_is_topk(rows, columns, k):
    """The two-stage search returns torch.topk's values and columns (continuous values: no ties), for block
    counts below, at and above k and with a remainder of columns after the last whole block."""
    from model.ebm.sparse import top_similar

    similarity = torch.randn(rows, columns, generator=torch.Generator().manual_seed(columns), dtype=torch.float64)
    values, index = top_similar(similarity, k)
    expected = similarity.topk(k, dim=1)
    assert torch.equal(values, expected.values) and torch.equal(index, expected.indices)


def test_top_similar_finds_values_in_the_remainder_and_in_one_block():
    """All k largest entries in one block, or beyond the last whole block: both are found."""
    from model.ebm.sparse import TOPK_BLOCK, top_similar

    similarity = torch.zeros(2, TOPK_BLOCK * 20 + 7)
    similarity[0, 3 * TOPK_BLOCK: 3 * TOPK_BLOCK + 5] = torch.arange(1.0, 6.0)  # five winners in block 3
    similarity[1, -5:] = torch.arange(1.0, 6.0)  # five winners after the last whole block
    values, index = top_similar(similarity, 5)
    assert values.tolist() == [[5.0, 4.0, 3.0, 2.0, 1.0]] * 2
    assert index[0].tolist() == [3 * TOPK_BLOCK + i for i in (4, 3, 2, 1, 0)]
    assert index[1].tolist() == [similarity.shape[1] - 5 + i for i in (4, 3, 2, 1, 0)]


def test_top_similar_gradient_is_topks():
    from model.ebm.sparse import top_similar

    similarity = torch.randn(3, 2000, generator=torch.Generator().manual_seed(1), requires_grad=True)
    top_similar(similarity, 16)[0].pow(2).sum().backward()
    mine = similarity.grad.clone()
    similarity.grad = None
    similarity.topk(16, dim=1).values.pow(2).sum().backward()
    assert torch.equal(mine, similarity.grad)


@pytest.mark.parametrize("per_shot", [40, 12])
@pytest.mark.parametrize("keep", [[0, 1, 2, 3, 4], [1, 3], [4], [0, 2, 3]])
def test_merged_per_shot_lists_are_the_top_k_over_the_kept_shots(keep, per_shot):
    """top_per_shot + merge_top = topk of the product with the kept shots' atoms alone (values and, mapped
    back to the full dictionary, columns), also where the kept shots hold fewer than k atoms in all (one shot)."""
    from model.ebm.sparse import merge_top, top_per_shot

    gen = torch.Generator().manual_seed(len(keep))
    shots, k = 5, 16
    signals = torch.randn(30, 8, generator=gen, dtype=torch.float64)  # (n, m)
    atoms = torch.randn(8, shots * per_shot, generator=gen, dtype=torch.float64)  # (m, K·P), shot-major
    values, columns = top_per_shot(signals, atoms, shots, k, chunk_bytes=7 * 8 * shots * per_shot)  # 7-row chunks
    assert values.shape == columns.shape == (30, shots, min(k, per_shot))
    corr, index = merge_top(values, columns, keep, k)
    kept_columns = torch.cat([torch.arange(j * per_shot, (j + 1) * per_shot) for j in keep])
    expected = (signals @ atoms[:, kept_columns]).topk(min(k, len(kept_columns)), dim=1)
    torch.testing.assert_close(corr, expected.values, rtol=1e-12, atol=1e-12)  # one product or another: rounding
    assert torch.equal(index, kept_columns[expected.indices])
    with pytest.raises(InputError, match="do not split into 5 shots"):
        top_per_shot(signals, atoms[:, :-1], shots, k)


def test_fista_stops_each_problem_on_its_own():
    """A problem that meets the tolerance keeps its code while slower problems of the batch iterate on: its
    solution is the one it gets alone (a stopping test over the whole batch kept it iterating, so its code
    depended on its batch-mates)."""
    from model.ebm.sparse import fista_solve

    gen = torch.Generator().manual_seed(5)
    grams, corrs = [], []
    for shift in (0.0, 3.0):  # nearly orthogonal atoms (stops early) and strongly correlated ones (slow)
        atoms = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen, dtype=torch.float64) + shift, dim=0)
        grams.append(atoms.T @ atoms)  # (k, k)
        corrs.append(atoms.T @ torch.randn(6, generator=gen, dtype=torch.float64))  # (k,) Dᵀz
    grams, corr = torch.stack(grams), torch.stack(corrs)  # (2, k, k), (2, k)
    alone = [fista_solve(grams[i:i + 1], corr[i:i + 1], 0.05, 500, tol=1e-3) for i in range(2)]
    together = fista_solve(grams, corr, 0.05, 500, tol=1e-3)
    assert torch.equal(together[0:1], alone[0]) and torch.equal(together[1:2], alone[1])
    # the case has teeth: iterating the first problem on (as its slow batch-mate does) still moves its code
    assert not torch.equal(fista_solve(grams[0:1], corr[0:1], 0.05, 500, tol=1e-9), alone[0])


def test_fista_energy_does_not_depend_on_chunks_or_groups():
    """A signal's energy is its own: the same scored alone, in one group, or split into many chunks and FISTA
    groups (the stopping test is per signal)."""
    from model.ebm.sparse import fista_energy

    gen = torch.Generator().manual_seed(11)
    base = torch.randn(6, 24, generator=gen)  # correlated features, as Ψ's are
    signals = torch.nn.functional.normalize(torch.randn(90, 6, generator=gen) @ base + 1.5, dim=1)  # (n, m)
    atoms = torch.nn.functional.normalize(torch.randn(400, 6, generator=gen) @ base + 1.5, dim=1).T  # (m, A)
    whole = fista_energy(signals, atoms, 0.05, 50, top_k=8, tol=1e-3)
    pieces = fista_energy(signals, atoms, 0.05, 50, top_k=8, tol=1e-3, chunk_bytes=4 * 400 * 7,
                          solve_bytes=4 * 8 * 24 * 20)  # 7-row search chunks, FISTA over 3 chunks at a time
    alone = torch.cat([fista_energy(signals[i:i + 1], atoms, 0.05, 50, top_k=8, tol=1e-3) for i in range(90)])
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, whole, rtol=0, atol=1e-6)
