"""Tests for the baselines: kNN memory bank (model/methods/knn.py) and MAML-AE (model/maml_ae.py,
model/methods/maml_ae.py)."""

import copy
import re

import numpy as np
import pytest
import torch

from model.ebm.backbone import BackboneSpec, build_backbone
from model.errors import InputError
from model.maml_ae import (
    AESpec,
    ConvAutoencoder,
    adapt,
    meta_train_step,
    reconstruction_loss,
)
from model.methods.knn import KnnScorer, nearest_distances
from model.methods.maml_ae import MamlAEScorer, score

SIZE = 32


def _images(n, seed, size=SIZE):
    """Smooth random images in [0, 1]: low-res noise upsampled, so they look like textures."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 4, size // 4, generator=g)  # (n, 3, s/4, s/4)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    net = build_backbone(BackboneSpec(name="conv", width=8, depth=2, stride=4, out_dim=16, max_width=32, input_norm="none", hypercolumn=False))
    return net.eval()


def test_knn_bank_shape(backbone):
    support = _images(3, seed=1)
    for l in (1, 3):
        bank = KnnScorer(backbone, receptive_field=l).adapt(support)
        h = SIZE // 4
        assert bank.shape == (3 * h * h, 16 * l * l)
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(bank.shape[0]))
        assert not bank.requires_grad


def test_knn_identical_query_scores_zero(backbone):
    support = _images(3, seed=2)
    scorer = KnnScorer(backbone, receptive_field=3, smooth_sigma=1.0)
    bank = scorer.adapt(support)
    scores, maps = scorer.score(support[1:2], bank)
    assert scores.shape == (1,) and maps.shape == (1, SIZE, SIZE)
    assert scores.item() < 1e-5
    assert maps.abs().max().item() < 1e-5


def test_knn_pasted_patch_is_localised(backbone):
    support = _images(4, seed=3)
    scorer = KnnScorer(backbone, receptive_field=1)
    bank = scorer.adapt(support)
    defect = support[0:1].clone()
    defect[:, :, 8:16, 16:24] = 1.0  # bright 8x8 patch
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[8:16, 16:24] = True
    scores, maps = scorer.score(torch.cat([support[0:1], defect]), bank)
    assert scores[1] > scores[0] + 0.05
    assert maps[1][mask].mean() > 2 * maps[1][~mask].mean()


def test_nearest_distances_chunked_matches_numpy():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(53, 7)).astype(np.float32)
    b = rng.normal(size=(41, 7)).astype(np.float32)
    ref = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)  # (53,)
    qt, bt = torch.from_numpy(q), torch.from_numpy(b)
    # 4 bytes per float: budgets of 1 element, a few bank rows, whole bank × few queries, unlimited
    for budget in (1, 4 * 5, 4 * 41 * 3, 2**30):
        got = nearest_distances(qt, bt, max_chunk_bytes=budget).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # a query equal to a bank row gets exactly 0 (exact recomputation, no cdist cancellation)
    assert nearest_distances(bt[5:6], bt).item() == 0.0


def test_knn_rejects_bad_input(backbone):
    with pytest.raises(InputError):
        KnnScorer(backbone, receptive_field=2)
    with pytest.raises(InputError):
        KnnScorer(backbone, smooth_sigma=-1.0)
    scorer = KnnScorer(backbone)
    with pytest.raises(InputError):
        scorer.score(_images(1, seed=0), torch.zeros(5, 3))
    with pytest.raises(InputError):
        scorer.adapt(torch.zeros(3, SIZE, SIZE))


# --------------------------------------------------------------------------------------------------
# MAML-AE
# --------------------------------------------------------------------------------------------------

SPEC = AESpec(width=8, latent=16, depth=2)


@pytest.fixture
def ae():
    torch.manual_seed(0)
    return ConvAutoencoder(SPEC)


def _state(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_autoencoder_shapes_and_range(ae):
    x = _images(2, seed=0)
    y = ae(x)
    assert y.shape == x.shape
    assert (y > 0).all() and (y < 1).all()
    with pytest.raises(InputError):
        ae(torch.rand(1, 3, 30, 32))  # 30 not divisible by 2**2
    with pytest.raises(InputError):
        ae(torch.rand(1, 2, 32, 32))


def test_adapt_zero_steps_returns_original(ae):
    params = adapt(ae, _images(2, seed=1), steps=0, lr=0.1)
    for name, p in ae.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=0, atol=0)
        assert params[name].data_ptr() != p.data_ptr()  # a copy: later optimiser steps can't alias it


def test_adapt_lowers_support_loss_and_leaves_ae_alone(ae):
    support = _images(3, seed=2)
    before = _state(ae)
    params = adapt(ae, support, steps=5, lr=0.5)
    original = {k: v.detach() for k, v in ae.named_parameters()}
    with torch.no_grad():
        assert reconstruction_loss(ae, params, support) < reconstruction_loss(ae, original, support)
    for name, p in ae.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
        assert p.grad is None


def test_adapt_works_under_no_grad(ae):
    with torch.no_grad():
        params = adapt(ae, _images(2, seed=3), steps=1, lr=0.1)
    assert any(not torch.equal(params[n], p) for n, p in ae.named_parameters())


def test_fomaml_gradient_matches_manual(ae):
    support, queries = _images(3, seed=4), _images(2, seed=5)
    steps, inner_lr, outer_lr = 2, 0.3, 0.01

    # manual: plain SGD on a copy, then the query-loss gradient at the adapted weights
    manual = copy.deepcopy(ae)
    inner = torch.optim.SGD(manual.parameters(), lr=inner_lr)
    for _ in range(steps):
        inner.zero_grad()
        torch.nn.functional.mse_loss(manual(support), support).backward()
        inner.step()
    manual.zero_grad()
    query_loss = torch.nn.functional.mse_loss(manual(queries), queries)
    query_loss.backward()
    expected = {n: ae_p.detach() - outer_lr * p.grad for (n, ae_p), p in zip(ae.named_parameters(), manual.parameters())}

    out = meta_train_step(ae, torch.optim.SGD(ae.parameters(), lr=outer_lr), support, queries, steps, inner_lr)
    assert out["loss"] == pytest.approx(query_loss.item(), rel=1e-5)
    for name, p in ae.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.grad, next(q.grad for n, q in manual.named_parameters() if n == name))


def test_meta_train_step_reduces_query_loss(ae):
    support, queries = _images(4, seed=6), _images(4, seed=7)
    before = _state(ae)
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-2)
    losses = [meta_train_step(ae, optimizer, support, queries, 1, 0.1)["loss"] for _ in range(30)]
    assert any(not torch.equal(p.detach(), before[n]) for n, p in ae.named_parameters())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    out = meta_train_step(ae, optimizer, support, queries, 0, 0.1)
    assert set(out) == {"loss", "support_loss"} and all(np.isfinite(list(out.values())))


def test_score_map_is_per_pixel_squared_error(ae):
    images = _images(2, seed=8)
    params = adapt(ae, _images(2, seed=9), steps=2, lr=0.2)
    scores, maps = score(ae, params, images)
    adapted = copy.deepcopy(ae)
    adapted.load_state_dict(params)
    recon = adapted(images).detach().numpy()
    x = images.numpy()
    ref = ((recon - x) ** 2).mean(axis=1)  # (B, H, W)
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.numpy(), ref.reshape(2, -1).mean(1), rtol=1e-5)
    blurred_scores, blurred = score(ae, params, images, smooth_sigma=1.5)
    assert blurred.shape == maps.shape
    torch.testing.assert_close(blurred_scores, scores)


def test_scorer_wrapper_and_validation(ae):
    scorer = MamlAEScorer(ae, inner_steps=1, inner_lr=0.1, smooth_sigma=1.0)
    params = scorer.adapt(_images(2, seed=10))
    scores, maps = scorer.score(_images(3, seed=11), params)
    assert scores.shape == (3,) and maps.shape == (3, SIZE, SIZE)
    for kwargs in ({"inner_steps": -1, "inner_lr": 0.1}, {"inner_steps": 1, "inner_lr": 0.0},
                   {"inner_steps": 1.5, "inner_lr": 0.1}):
        with pytest.raises(InputError):
            MamlAEScorer(ae, **kwargs)
    with pytest.raises(InputError):
        adapt(ae, _images(2, seed=0), steps=1, lr=-1.0)
    with pytest.raises(InputError):
        adapt(ae, torch.rand(2, 3, 18, 18), steps=1, lr=0.1)
    with pytest.raises(InputError):
        meta_train_step(ae, torch.optim.SGD(ae.parameters(), lr=0.1), _images(2, seed=0),
                        torch.rand(2, 3, 30, 30), 1, 0.1)


# --------------------------------------------------------------------------------------------------
# evaluation of a support-free scorer
# --------------------------------------------------------------------------------------------------


class _CountingScorer:
    """Wraps a scorer and counts the images it scores."""

    def __init__(self, inner, uses_support):
        self.inner, self.uses_support, self.scored = inner, uses_support, 0

    def adapt(self, support):
        return self.inner.adapt(support)

    def score(self, images, state):
        self.scored += images.shape[0]
        return self.inner.score(images, state)


def test_support_free_scorer_scores_the_test_set_once_and_gives_every_draw_its_metrics():
    from model.methods.baselines import NoSupportScorer
    from orchestrator.evaluation.evaluate import TestSet, draw_metrics, evaluate_scorer

    images = _images(6, seed=20)
    masks = torch.zeros(6, SIZE, SIZE)
    masks[3:, 8:16, 8:16] = 1
    images[3:, :, 8:16, 8:16] = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    test = TestSet("toy", _images(12, seed=21), images, masks, torch.tensor([0, 0, 0, 1, 1, 1]), [""] * 6)
    assert NoSupportScorer.uses_support is False
    free = _CountingScorer(NoSupportScorer(smooth_sigma=1.0), uses_support=False)
    result = evaluate_scorer(free, test, shots=2, draws=3, seed=0, batch_size=4, device=torch.device("cpu"),
                             progress=False)
    assert free.scored == 6  # once, not once per draw
    expected = draw_metrics(*NoSupportScorer(smooth_sigma=1.0).score(images, None), test)
    assert len(result["draws"]) == 3 and len({tuple(d["support"]) for d in result["draws"]}) == 3
    for draw in result["draws"]:
        assert draw["pixel_auroc"] == pytest.approx(expected["pixel_auroc"], abs=1e-12)
        assert draw["image_auroc"] == pytest.approx(expected["image_auroc"], abs=1e-12)
    # a scorer that reads its shots is scored afresh for every draw
    counted = _CountingScorer(NoSupportScorer(smooth_sigma=1.0), uses_support=True)
    evaluate_scorer(counted, test, shots=2, draws=3, seed=0, batch_size=4, device=torch.device("cpu"), progress=False)
    assert counted.scored == 18


def test_stratified_subset_keeps_both_classes_in_proportion_and_is_fixed_by_seed_and_category():
    from orchestrator.evaluation.evaluate import TestSet, stratified_subset, subset_test_set

    labels = torch.tensor([0] * 30 + [1] * 70)
    index = stratified_subset(labels, 20, seed=0, category="tile")
    assert len(index) == 20 and index == sorted(set(index))
    assert int(labels[index].sum()) == 14  # 70 % anomalous, as in the whole set
    assert stratified_subset(labels, 20, seed=0, category="tile") == index  # every method, every K
    assert stratified_subset(labels, 20, seed=1, category="tile") != index
    assert stratified_subset(labels, 20, seed=0, category="tire") != index
    assert stratified_subset(labels, 0, 0, "tile") == list(range(100)) == stratified_subset(labels, 100, 0, "tile")
    rare = torch.tensor([0] * 99 + [1])  # one anomaly: kept, so the AUROC stays defined
    assert int(rare[stratified_subset(rare, 5, 0, "x")].sum()) == 1
    images = torch.arange(100.0).reshape(100, 1, 1, 1)
    test = TestSet("tile", images[:3], images, torch.zeros(100, 1, 1), labels, [str(i) for i in range(100)])
    small = subset_test_set(test, index)
    assert small.paths == [str(i) for i in index] and small.images.flatten().tolist() == [float(i) for i in index]
    assert small.support_pool is test.support_pool


# ----------------------------------------------------------------------------------------------
# ScoreCache: an evaluation identical to an earlier one (same scorer function, same weights) reuses its outputs


def _initial_model_dir(small_real_root, tmp_path):
    from orchestrator.config import load_config
    from orchestrator.training.inputs import write_initial_model
    from tests.conftest import HELD_OUT, TINY

    out = tmp_path / "initial"
    write_initial_model(load_config(None, {**TINY, "data.exclude": [HELD_OUT]}), small_real_root, out)
    return out


def _evaluate(model_dir, root, out, method, reuse=None):
    from orchestrator.evaluation.evaluate import evaluate
    from tests.conftest import HELD_OUT

    return evaluate(model_dir, root, HELD_OUT, 2, 2, out, method=method, progress=False, allow_partial=True,
                    calibrate=False, reuse=reuse)


def test_untrained_reuses_ours_outputs_when_the_weights_are_the_initial_ones(small_real_root, tmp_path, monkeypatch):
    import json

    from model.methods.ours import OursScorer
    from orchestrator.evaluation.evaluate import ScoreCache

    model_dir = _initial_model_dir(small_real_root, tmp_path)
    fresh = _evaluate(model_dir, small_real_root, tmp_path / "fresh", "untrained")  # no cache: scored
    calls = {"n": 0}
    plain, plain_atoms = OursScorer.score, OursScorer.score_and_atoms

    def counted(self, images, state, features=None):
        calls["n"] += 1
        return plain(self, images, state, features=features)

    def counted_atoms(self, images, state, features=None):  # what ours scores with when kNN may take its atoms
        calls["n"] += 1
        return plain_atoms(self, images, state, features=features)

    monkeypatch.setattr(OursScorer, "score", counted)
    monkeypatch.setattr(OursScorer, "score_and_atoms", counted_atoms)
    cache = ScoreCache(["ours", "knn", "untrained"])
    ours = _evaluate(model_dir, small_real_root, tmp_path / "ours", "ours", cache)
    scored = calls["n"]
    assert scored > 0
    reused = _evaluate(model_dir, small_real_root, tmp_path / "untrained", "untrained", cache)
    assert calls["n"] == scored  # nothing scored again
    record = json.loads((tmp_path / "untrained" / "metrics.json").read_text())
    assert record["scores_reused_from"] == "ours" and record["method"] == "untrained"
    assert "scores_reused_from" not in fresh
    for name in ("image_auroc", "pixel_auroc", "pro", "miou"):
        assert reused[name] == fresh[name] == ours[name]
    assert [d["image_auroc"] for d in reused["per_draw"]] == [d["image_auroc"] for d in fresh["per_draw"]]
    assert len(list((tmp_path / "untrained" / "overlays").iterdir())) == len(list((tmp_path / "fresh" / "overlays").iterdir()))


def test_score_cache_is_not_used_for_other_weights_another_scorer_or_a_calibrating_evaluation(small_real_root, trained_model,
                                                                                             tmp_path):
    from orchestrator.evaluation.evaluate import ScoreCache, evaluate
    from tests.conftest import HELD_OUT

    model_dir = _initial_model_dir(small_real_root, tmp_path)
    cache = ScoreCache(["ours", "knn", "untrained", "knn_untrained", "nosupport"])
    _evaluate(model_dir, small_real_root, tmp_path / "ours", "ours", cache)
    assert "scores_reused_from" not in _evaluate(model_dir, small_real_root, tmp_path / "knn", "knn", cache)
    assert "scores_reused_from" not in _evaluate(model_dir, small_real_root, tmp_path / "ns", "nosupport", cache)
    assert _evaluate(model_dir, small_real_root, tmp_path / "ku", "knn_untrained", cache)["scores_reused_from"] == "knn"
    calibrated = evaluate(model_dir, small_real_root, HELD_OUT, 2, 2, tmp_path / "cal", method="untrained",
                          progress=False, calibrate=True, reuse=cache)
    assert "scores_reused_from" not in calibrated and "false_alarm_rate" in calibrated
    # a trained checkpoint: ours on it is not the untrained Ψ, so untrained is scored afresh
    cache = ScoreCache(["ours", "untrained"])
    _evaluate(trained_model, small_real_root, tmp_path / "t-ours", "ours", cache)
    assert "scores_reused_from" not in _evaluate(trained_model, small_real_root, tmp_path / "t-untrained", "untrained", cache)


def test_score_cache_keeps_only_methods_another_listed_method_could_reuse():
    from orchestrator.evaluation.evaluate import DrawOutputs, ScoreCache

    cache = ScoreCache(["ours", "maml_ae", "nosupport", "knn_untrained"])  # ours and knn_untrained share no scorer
    draws = [DrawOutputs(torch.zeros(2), torch.zeros(2, 4, 4), {}, 0.0)]
    for method in ("ours", "maml_ae", "nosupport", "knn_untrained"):
        cache.put(method, method, draws)
        assert cache.get(method) is None
    both = ScoreCache(["knn", "knn_untrained"])
    both.put("id", "knn", draws)
    assert both.get("id") == ("knn", draws)


def test_pixel_level_baselines_keep_their_blur_whatever_map_smooth_sigma_is():
    """model.map_smooth_sigma (chosen for ours' and kNN's feature-grid maps) must not change the rivals: the
    support-free gradient map and MAML-AE's reconstruction error keep σ = PIXEL_MAP_SIGMA = 2 px; kNN follows."""
    from model.methods.base import PIXEL_MAP_SIGMA
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model
    from orchestrator.training.selection import validation_scorer

    assert PIXEL_MAP_SIGMA == 2.0
    for sigma in (0.0, 5.0):
        cfg = load_config(None, parse_overrides(["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8",
                                                 f"model.map_smooth_sigma={sigma}"]))
        network = untrained_model(cfg)
        assert make_scorer("nosupport", network, cfg).smooth_sigma == PIXEL_MAP_SIGMA
        assert make_scorer("knn", network, cfg).smooth_sigma == sigma
        cfg.train.method = "maml_ae"  # a MAML-AE model directory's config
        assert make_scorer("maml_ae", ConvAutoencoder(SPEC), cfg).smooth_sigma == PIXEL_MAP_SIGMA
        # checkpoint selection scores MAML-AE's maps as its evaluation will
        assert validation_scorer(cfg)(ConvAutoencoder(SPEC)).smooth_sigma == PIXEL_MAP_SIGMA


def test_one_target_loads_its_test_set_once_and_shares_psi_features_across_methods(small_real_root, tmp_path,
                                                                                   monkeypatch):
    """With a ScoreCache (as in the DVC stage), ours, kNN and the baselines read one loaded test set, and ours and
    kNN on one Ψ one backbone pass of it; every number equals an evaluation without the cache."""
    import orchestrator.evaluation.evaluate as ev
    from orchestrator.evaluation.evaluate import ScoreCache

    model_dir = _initial_model_dir(small_real_root, tmp_path)
    methods = ["ours", "knn", "nosupport"]
    alone = {m: _evaluate(model_dir, small_real_root, tmp_path / f"alone-{m}", m) for m in methods}
    loads, passes = {"n": 0}, {"n": 0}
    plain_load, plain_features = ev.load_test_set, ev.draw_free_features

    def counted_load(*args, **kwargs):
        loads["n"] += 1
        return plain_load(*args, **kwargs)

    def counted_features(*args, **kwargs):
        passes["n"] += 1
        return plain_features(*args, **kwargs)

    monkeypatch.setattr(ev, "load_test_set", counted_load)
    monkeypatch.setattr(ev, "draw_free_features", counted_features)
    cache = ScoreCache(methods)
    shared = {m: _evaluate(model_dir, small_real_root, tmp_path / f"shared-{m}", m, cache) for m in methods}
    assert loads["n"] == 1
    assert passes["n"] == 1  # ours computed Ψ of the test set; kNN took it (nosupport reads no Ψ)
    for m in methods:
        assert "scores_reused_from" not in shared[m]
        for name in ("image_auroc", "pixel_auroc", "pro", "miou"):
            assert shared[m][name] == alone[m][name], (m, name)
        assert [d["pixel_auroc"] for d in shared[m]["per_draw"]] == [d["pixel_auroc"] for d in alone[m]["per_draw"]]


def test_shared_features_do_not_reach_a_scorer_that_takes_none(small_real_root, tmp_path, monkeypatch):
    """A scorer whose `features` gives none (ours with the gradient map differentiates through Ψ) is not handed
    the Ψ features kNN left in the cache."""
    from model.methods.ours import OursScorer
    from orchestrator.evaluation.evaluate import ScoreCache

    model_dir = _initial_model_dir(small_real_root, tmp_path)
    cache = ScoreCache(["knn", "ours"])
    _evaluate(model_dir, small_real_root, tmp_path / "knn", "knn", cache)
    assert len(cache._features) == 1  # kNN's Ψ of the test set, kept
    monkeypatch.setattr(OursScorer, "features", lambda self, images: None)
    seen, plain = [], OursScorer.score

    def spy(self, images, state, features=None):
        seen.append(features)
        return plain(self, images, state, features=features)

    monkeypatch.setattr(OursScorer, "score", spy)
    _evaluate(model_dir, small_real_root, tmp_path / "ours", "ours", cache)
    assert seen and all(f is None for f in seen)


# --------------------------------------------------------------------------------------------------
# kNN from ours' top-k atoms (docs/benchmarks.md, "kNN from ours' top-k")
# --------------------------------------------------------------------------------------------------


def _unit_rows(n, m, seed):
    rows = np.random.default_rng(seed).normal(size=(n, m)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_nearest_among_the_most_similar_rows_is_the_nearest_row():
    from model.methods.knn import nearest_among

    q, b = _unit_rows(97, 12, 1), _unit_rows(300, 12, 2)
    ref = np.sqrt(((q[:, None, :] - b[None]) ** 2).sum(-1)).min(1)  # (97,): numpy over every row
    qt, bt = torch.from_numpy(q), torch.from_numpy(b)
    top = (qt @ bt.T).topk(4, dim=1).indices  # (97, 4): most similar rows first
    for budget in (1, 4 * 12 * 5, 2**30):  # one query per block, a few, all
        np.testing.assert_allclose(nearest_among(qt, bt, top, budget).numpy(), ref, rtol=1e-5, atol=1e-6)
    # the first candidate alone suffices; a wrong candidate list gives a farther row (the function trusts it)
    np.testing.assert_allclose(nearest_among(qt, bt, top[:, :1]).numpy(), ref, rtol=1e-5, atol=1e-6)
    far = (qt @ bt.T).topk(4, dim=1, largest=False).indices
    assert (nearest_among(qt, bt, far) > torch.from_numpy(ref) + 0.1).all()
    # a query equal to a bank row gets exactly 0
    assert nearest_among(bt[7:8], bt, torch.tensor([[7]])).item() == 0.0


def test_nearest_among_searches_rows_off_the_unit_sphere_for_every_query():
    """A zero row (a zero volume stays zero when normalised) is at distance 1 from every unit query, nearer than
    any unit row with inner product below 1/2, yet never the most similar: it must be searched anyway."""
    from model.methods.knn import MAX_OFF_UNIT_ROWS, nearest_among

    q, b = _unit_rows(50, 32, 3), _unit_rows(12, 32, 4)  # in 32 dimensions random rows are far apart
    b[[3, 7]] = 0.0
    ref = np.sqrt(((q[:, None, :] - b[None]) ** 2).sum(-1)).min(1)
    assert (ref == 1.0).sum() > 10  # for many queries the nearest row is a zero row
    qt, bt = torch.from_numpy(q), torch.from_numpy(b)
    top = (qt @ bt.T).topk(2, dim=1).indices
    assert not torch.isin(top, torch.tensor([3, 7])).any()  # and it is never among the most similar
    np.testing.assert_allclose(nearest_among(qt, bt, top).numpy(), ref, rtol=1e-5, atol=1e-6)
    # more rows off the sphere than MAX_OFF_UNIT_ROWS (a bank never normalised): the whole bank is searched
    big = torch.cat([bt * s for s in torch.linspace(0.5, 2.0, MAX_OFF_UNIT_ROWS // 6)])  # (> 64, 32)
    assert big.shape[0] > MAX_OFF_UNIT_ROWS
    ref_big = np.sqrt(((q[:, None, :] - big.numpy()[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_among(qt, big, top).numpy(), ref_big, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("candidates, what", [
    (torch.zeros(5, 2), "integer"),
    (torch.zeros(4, 2, dtype=torch.long), "(5, c >= 1)"),
    (torch.full((5, 2), 40, dtype=torch.long), "40 rows"),
    (torch.full((5, 2), -1, dtype=torch.long), "40 rows"),
])
def test_nearest_among_rejects_bad_candidates(candidates, what):
    from model.methods.knn import nearest_among

    with pytest.raises(InputError, match=re.escape(what)):
        nearest_among(torch.from_numpy(_unit_rows(5, 6, 5)), torch.from_numpy(_unit_rows(40, 6, 6)), candidates)


def _ours_network(**model):
    from orchestrator.config import load_config
    from orchestrator.evaluation.evaluate import untrained_model

    overrides = {"data.image_size": 32, "model.backbone.width": 8, "model.backbone.out_dim": 8,
                 "model.backbone.max_width": 16, **{f"model.{k}": v for k, v in model.items()}}
    cfg = load_config(None, overrides)
    return untrained_model(cfg), cfg


def test_ours_atoms_give_knn_its_scores_without_a_search(monkeypatch):
    """ours' kept atoms are the kNN bank's rows: kNN given them scores what its full search scores, and ours'
    score_and_atoms scores what score does."""
    import model.methods.knn as knn
    from orchestrator.evaluation.evaluate import make_scorer

    network, cfg = _ours_network()
    ours, nn_scorer = make_scorer("ours", network, cfg), make_scorer("knn", network, cfg)
    assert ours.unit_volume_field() == nn_scorer.unit_volume_field() == 1
    support, images = _images(4, seed=11), _images(6, seed=12)
    images[2, :, 8:16, 8:16] = 1.0  # a bright patch: some positions far from every shot
    dictionary, bank = ours.adapt(support), nn_scorer.adapt(support)
    torch.testing.assert_close(dictionary.atoms.T, bank, rtol=0, atol=0)  # the same rows in the same order
    plain_scores, plain_maps = ours.score(images, dictionary)
    scores, maps, candidates = ours.score_and_atoms(images, dictionary)
    assert candidates.shape == (6, (32 // 4) ** 2, 4) and candidates.dtype == torch.long
    torch.testing.assert_close(scores, plain_scores, rtol=0, atol=0)
    torch.testing.assert_close(maps, plain_maps, rtol=0, atol=0)
    full_scores, full_maps = nn_scorer.score(images, bank)
    monkeypatch.setattr(knn, "nearest_distances", lambda *a, **k: pytest.fail("searched the whole bank"))
    shared_scores, shared_maps = nn_scorer.score(images, bank, candidates=candidates)
    torch.testing.assert_close(shared_scores, full_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared_maps, full_maps, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="candidates of shape"):
        nn_scorer.score(images, bank, candidates=candidates[:3])


@pytest.mark.parametrize("model, augment", [({"center": True}, False), ({"whiten": "support"}, False),
                                            ({"exposure": "support"}, False), ({"solver": "istc"}, False),
                                            ({"anomaly_map": "gradient"}, False), ({}, True)])
def test_ours_keeps_no_atoms_for_knn_where_its_signals_are_not_knns(model, augment):
    """Centred, whitened or exposure-aligned signals, a solver that chooses no atoms, the gradient map or dihedral
    copies of the shots: ours' atoms are not kNN's bank rows, so it offers none."""
    from orchestrator.evaluation.evaluate import make_scorer

    network, cfg = _ours_network(**model)
    ours = make_scorer("ours", network, cfg, augment_support=augment)
    assert ours.unit_volume_field() is None
    with pytest.raises(InputError, match="score_and_atoms"):
        ours.score_and_atoms(_images(2, seed=1), ours.adapt(_images(2, seed=2)))


def test_knn_takes_ours_candidates_through_the_score_cache(small_real_root, tmp_path, monkeypatch):
    """In one ScoreCache (the DVC stage), kNN after ours on the same Ψ never searches its whole bank, and scores
    what it scores alone; each draw's candidates are handed over once."""
    import model.methods.knn as knn
    from orchestrator.evaluation.evaluate import ScoreCache

    model_dir = _initial_model_dir(small_real_root, tmp_path)
    alone = _evaluate(model_dir, small_real_root, tmp_path / "alone", "knn")
    cache = ScoreCache(["ours", "knn"])
    _evaluate(model_dir, small_real_root, tmp_path / "ours", "ours", cache)
    assert len(cache._candidates) == 2  # one entry per draw
    monkeypatch.setattr(knn, "nearest_distances", lambda *a, **k: pytest.fail("searched the whole bank"))
    shared = _evaluate(model_dir, small_real_root, tmp_path / "knn", "knn", cache)
    assert not cache._candidates  # taken
    for name in ("image_auroc", "pixel_auroc", "pro"):
        assert shared[name]["mean"] == pytest.approx(alone[name]["mean"], abs=1e-6), name
    # nothing left to take: a second kNN evaluation searches the bank again
    monkeypatch.undo()
    calls = {"n": 0}
    plain = knn.nearest_distances

    def counted(*args, **kwargs):
        calls["n"] += 1
        return plain(*args, **kwargs)

    monkeypatch.setattr(knn, "nearest_distances", counted)
    _evaluate(model_dir, small_real_root, tmp_path / "again", "knn", cache)
    assert calls["n"] > 0
