"""The detector's math (issue: a sparse code that uses the dictionary, a tail image score, honest baselines).

Equations against references: FISTA against scikit-learn's coordinate-descent Lasso, the top-k image
score and the participation ratio against numpy, the no-support map against a numpy gradient. Then the
properties the dictionary must have on real images with an untrained Ψ: a support image is explained by
its own dictionary, not by another category's, and the support changes the ranking of the energies.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import Lasso

from model.ebm.backbone import BackboneSpec, build_backbone
from model.ebm.energy import AdaptiveEBM, SparseSpec, image_score, participation_ratio, top_mean
from model.errors import InputError
from model.methods.baselines import NoSupportScorer, gradient_magnitude
from model.ebm.sparse import fista, fista_code, fista_energy, lasso_objective, local_atoms

FISTA = dict(solver="fista", shrink="hard", lam_star=0.05, max_steps=200, tol=1e-6, top_k_atoms=16,
             image_score="topk", top_frac=0.01)


def random_problem(n=6, m=12, A=20, seed=0):
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(m, A))
    D /= np.linalg.norm(D, axis=0, keepdims=True)  # unit atoms, as the EBM's
    Z = rng.normal(size=(n, m))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    return Z, D


@pytest.mark.parametrize("lam", [0.02, 0.1, 0.3])
def test_fista_matches_reference_lasso(lam):
    """Eq. 5, ½‖z − Dα‖² + λ‖α‖₁, equals sklearn's (1/2m)‖z − Dα‖² + (λ/m)‖α‖₁ up to the factor m."""
    Z, D = random_problem()
    got = fista(torch.from_numpy(Z), torch.from_numpy(D), lam, 5000, "hard", tol=1e-12).numpy()
    m = Z.shape[1]
    for row in range(Z.shape[0]):
        ref = Lasso(alpha=lam / m, fit_intercept=False, tol=1e-12, max_iter=200000).fit(D, Z[row]).coef_
        np.testing.assert_allclose(got[row], ref, atol=1e-3)


def test_fista_stops_at_tolerance_with_objective_at_optimum():
    Z, D = random_problem(seed=1)
    Zt, Dt = torch.from_numpy(Z), torch.from_numpy(D)
    loose = fista(Zt, Dt, 0.05, 10000, "hard", tol=1e-5)
    exact = fista(Zt, Dt, 0.05, 10000, "hard", tol=0.0)
    gap = lasso_objective(Zt, Dt, loose, 0.05) - lasso_objective(Zt, Dt, exact, 0.05)
    assert float(gap.max()) < 1e-3 and float(gap.min()) > -1e-9


def test_local_dictionary_with_every_atom_equals_the_full_solve():
    Z, D = random_problem(seed=2)
    Zt, Dt = torch.from_numpy(Z), torch.from_numpy(D)
    full = fista_code(Zt, Dt, 0.05, 3000, "hard", top_k=0, tol=0.0)
    local = fista_code(Zt, Dt, 0.05, 3000, "hard", top_k=D.shape[1], tol=0.0)
    np.testing.assert_allclose(local.numpy(), full.numpy(), atol=1e-6)


def test_local_atoms_are_the_most_similar():
    Z, D = random_problem(seed=3)
    got = local_atoms(torch.from_numpy(Z), torch.from_numpy(D), 4).numpy()  # (n, m, 4)
    for row in range(Z.shape[0]):
        best = np.argsort(-(Z[row] @ D))[:4]
        np.testing.assert_allclose(got[row], D[:, best])


def test_fista_is_differentiable_in_signals_and_atoms():
    Z, D = random_problem(n=3, m=5, A=7, seed=4)
    Zt = torch.from_numpy(Z).requires_grad_(True)
    Dt = torch.from_numpy(D).requires_grad_(True)
    recon = fista_code(Zt, Dt, 0.05, 20, "sigshrink", tau=20.0, top_k=4)
    (Zt - recon).pow(2).sum().backward()
    assert Zt.grad is not None and Dt.grad is not None
    assert torch.isfinite(Zt.grad).all() and float(Dt.grad.abs().sum()) > 0


def test_image_score_topk_matches_numpy():
    e = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(0))
    ref = np.sort(e.flatten(1).numpy(), axis=1)[:, -5:].mean(1)  # top 5 of 100 positions
    np.testing.assert_allclose(image_score(e, "topk", 0.05).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(image_score(e, "topk", 1e-9).numpy(), e.flatten(1).amax(1).numpy())  # max
    np.testing.assert_allclose(image_score(e, "mean", 0.05).numpy(), e.flatten(1).mean(1).numpy(), rtol=1e-6)


def test_participation_ratio_matches_eigenvalues():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1, 0.1])
    eig = np.linalg.eigvalsh(np.cov(X, rowvar=False))
    ref = eig.sum() ** 2 / (eig**2).sum()
    assert float(participation_ratio(torch.from_numpy(X))) == pytest.approx(ref, rel=1e-9)
    collapsed = np.outer(rng.normal(size=200), rng.normal(size=6))  # rank 1
    assert float(participation_ratio(torch.from_numpy(collapsed))) == pytest.approx(1.0, rel=1e-6)


def test_no_support_map_is_the_blurred_gradient_and_ignores_support():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 9, 11))
    grey = x.mean(1)
    ref = np.zeros_like(grey)
    ref[:, :, :-1] += np.abs(np.diff(grey, axis=2))
    ref[:, :-1, :] += np.abs(np.diff(grey, axis=1))
    np.testing.assert_allclose(gradient_magnitude(torch.from_numpy(x)).numpy(), ref, atol=1e-12)
    scorer = NoSupportScorer(smooth_sigma=0.0, top_frac=0.1)
    scores, maps = scorer.score(torch.from_numpy(x), scorer.adapt(torch.zeros(1, 3, 9, 11)))
    np.testing.assert_allclose(maps.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(scores.numpy(), top_mean(torch.from_numpy(ref), 0.1).numpy())
    with pytest.raises(InputError):
        NoSupportScorer(top_frac=0.0)


@pytest.mark.parametrize("bad", [dict(solver="lbfgs"), dict(image_score="median"), dict(top_frac=0.0),
                                 dict(top_k_atoms=-1), dict(max_steps=0), dict(tol=float("nan"))])
def test_bad_detector_settings_are_one_line_errors(bad):
    with pytest.raises(InputError) as exc:
        SparseSpec.paper(**bad).validate()
    assert "\n" not in str(exc.value) and "model." in str(exc.value)


# ----------------------------------------------------------------------------------------------
# On real images, untrained Ψ: the dictionary is used


@pytest.fixture(scope="module")
def two_categories(real_root):
    from orchestrator.evaluation.evaluate import load_test_set

    return {c: load_test_set(real_root, c, 64) for c in ("tire", "kolektor")}


def untrained_model(**spec) -> AdaptiveEBM:
    torch.manual_seed(0)
    net = build_backbone(BackboneSpec(name="conv", width=16, depth=3, stride=4, out_dim=16, max_width=64, input_norm="none", hypercolumn=False))
    return AdaptiveEBM(net, SparseSpec.paper(**{**FISTA, **spec})).eval()


def test_support_image_is_explained_by_its_own_dictionary_not_another_category(two_categories):
    model = untrained_model()
    tire, kolektor = two_categories["tire"].support_pool[:5], two_categories["kolektor"].support_pool[:5]
    with torch.no_grad():
        own = model.energy(tire, model.build_dictionary(tire))
        other = model.energy(tire, model.build_dictionary(kolektor))
    assert float(own.max()) < 0.01  # ≈ λ²: each position is its own atom, shrunk by λ
    assert float(other.min()) > 10 * float(own.max())


def test_energies_depend_on_the_support(two_categories):
    """Two categories' dictionaries rank the same queries differently (the old 5-step ISTC: ρ = 0.99)."""
    model = untrained_model(image_score="mean")
    queries = two_categories["tire"].images[:40]
    with torch.no_grad():
        a = model.energy(queries, model.build_dictionary(two_categories["tire"].support_pool[:10]))
        b = model.energy(queries, model.build_dictionary(two_categories["kolektor"].support_pool[:10]))
    rho = spearmanr(a.numpy(), b.numpy()).statistic
    assert rho < 0.9, rho


@pytest.mark.parametrize("kind", ["hard", "sigshrink"])
def test_fista_energy_equals_the_residual_of_the_local_reconstruction(kind):
    Z, D = random_problem(n=9, m=10, A=30, seed=5)
    Zt, Dt = torch.from_numpy(Z), torch.from_numpy(D)
    recon = fista_code(Zt, Dt, 0.05, 200, kind, 20.0, top_k=6, tol=0.0)
    ref = (Zt - recon).pow(2).sum(1)
    got = fista_energy(Zt, Dt, 0.05, 200, kind, 20.0, top_k=6, tol=0.0)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-10)
    # differentiable in the signals (Langevin, |∇ₓE| maps) and the atoms (meta-training through D)
    Zg, Dg = Zt.clone().requires_grad_(True), Dt.clone().requires_grad_(True)
    fista_energy(Zg, Dg, 0.05, 20, kind, 20.0, top_k=6).sum().backward()
    assert float(Zg.grad.abs().sum()) > 0 and float(Dg.grad.abs().sum()) > 0
