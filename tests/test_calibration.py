"""Thresholds from normal shots alone: the estimators against their definitions and against sampling
(a prediction bound's false-alarm rate is its target on average, whatever the spread), leave-one-out
scoring (each shot against the others), augmentations, bad target rates."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from model.calibration import ESTIMATORS, check_fpr, rates, threshold
from model.errors import InputError
from orchestrator.evaluation.calibration import Calibration, CalibrationSpec, augment, calibrate, loo_scores
from tests.conftest import expect_error


def test_lognormal_t_is_the_student_t_prediction_bound_on_log_scores():
    x = np.array([0.11, 0.13, 0.12, 0.16, 0.10, 0.14, 0.12, 0.15, 0.13, 0.11])
    logs = np.log(x)
    n = len(x)
    expected = math.exp(logs.mean() + stats.t.ppf(0.99, n - 1) * logs.std(ddof=1) * math.sqrt(1 + 1 / n))
    assert threshold(x, 0.01, "lognormal_t") == pytest.approx(expected, rel=1e-12)
    assert threshold(x, 0.01, "lognormal_z") == pytest.approx(math.exp(logs.mean() + stats.norm.ppf(0.99) * logs.std(ddof=1)))
    assert threshold(x, 0.05, "empirical") == pytest.approx(np.quantile(x, 0.95))
    # augmented copies sharpen the fit but do not count as independent shots
    assert threshold(np.tile(x, 4), 0.01, "lognormal_t", n_independent=10) > threshold(np.tile(x, 4), 0.01, "lognormal_t")


@pytest.mark.parametrize("fpr", [0.01, 0.05])
def test_prediction_bound_hits_its_target_from_ten_samples_where_plain_z_does_not(fpr):
    """Draw K = 10 normal scores from a log-normal, set the threshold, compute its exact false-alarm rate;
    averaged over many draws the Student-t bound hits the target, the plain z bound overshoots it."""
    rng = np.random.default_rng(0)
    mu, sigma = math.log(0.2), 0.3
    realised = {name: [] for name in ("lognormal_t", "lognormal_z", "empirical")}
    for _ in range(4000):
        shots = np.exp(rng.normal(mu, sigma, 10))
        for name in realised:
            thr = threshold(shots, fpr, name)
            realised[name].append(1 - stats.norm.cdf((math.log(thr) - mu) / sigma))
    mean = {k: float(np.mean(v)) for k, v in realised.items()}
    assert mean["lognormal_t"] == pytest.approx(fpr, rel=0.15)
    assert mean["lognormal_z"] > 1.3 * fpr
    if fpr == 0.01:  # the empirical 99th percentile of 10 samples is about their maximum: ~9 % false alarms
        assert mean["empirical"] > 5 * fpr


@pytest.mark.parametrize("bad", [0, -0.1, 0.51, 1.0, float("nan"), float("inf")])
def test_target_rate_outside_zero_to_half_is_one_line_bad_input(bad):
    expect_error(lambda: check_fpr(bad), "expected a target false-alarm rate in (0, 0.5]")
    expect_error(lambda: threshold([0.1, 0.2, 0.3], bad), "(0, 0.5]")


def test_threshold_refuses_too_few_or_non_finite_scores_and_unknown_estimators():
    expect_error(lambda: threshold([0.1], 0.01), "at least 2")
    expect_error(lambda: threshold([0.1, float("nan")], 0.01), "not finite")
    expect_error(lambda: threshold([0.1, 0.2], 0.01, "gpd"), "expected one of", *ESTIMATORS)


def test_rates_count_strictly_above_the_threshold():
    found = rates([0.1, 0.5, 0.2, 0.9, 0.4], [0, 0, 0, 1, 1], 0.45)
    assert found == {"realised_fpr": pytest.approx(1 / 3), "recall": 0.5, "n_normal": 3, "n_anomalous": 2}


def test_augment_adds_flips_and_two_shifts_with_replicated_edges():
    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    out = augment(images, ["hflip", "shift"])
    assert out.shape == (2 * 4, 3, 64, 64)
    assert torch.equal(out[:2], images) and torch.equal(out[2:4], images.flip(-1))
    s = 2  # 64 / 32
    assert torch.equal(out[4, :, s:, s:], images[0, :, :-s, :-s])  # moved down-right
    assert torch.equal(out[6, :, :-s, :-s], images[0, :, s:, s:])  # moved up-left
    assert torch.equal(out[4, :, 0, s:], images[0, :, 0, :-s])  # replicated top edge
    expect_error(lambda: augment(images, ["rotate"]), "'rotate'", "hflip")


class MeanScorer:
    """A scorer whose state is the support set; score = distance of the image mean to the support mean.
    Records the supports it was adapted to."""

    def __init__(self):
        self.adapted: list[torch.Tensor] = []

    def adapt(self, support):
        self.adapted.append(support.clone())
        return support.mean()

    def score(self, images, state):
        maps = (images.mean(1) - state).abs()  # (B, H, W)
        return maps.flatten(1).mean(1), maps


def test_each_shot_is_scored_against_the_other_shots_only():
    support = torch.stack([torch.full((3, 8, 8), float(v)) for v in (0.1, 0.2, 0.3, 0.7)])  # (4, 3, 8, 8)
    scorer = MeanScorer()
    scores, peaks, step = loo_scores(scorer, support, [], 32, "cpu")
    assert step == 0.0
    assert [a.shape[0] for a in scorer.adapted] == [3, 3, 3, 3]  # no shortcut for this scorer: K − 1 each
    for i, adapted in enumerate(scorer.adapted):
        others = torch.cat([support[:i], support[i + 1 :]])
        assert torch.equal(adapted, others)
    expected = [abs(v - np.mean([w for w in (0.1, 0.2, 0.3, 0.7) if w != v])) for v in (0.1, 0.2, 0.3, 0.7)]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_allclose(peaks, expected, rtol=1e-5)  # constant maps: their maximum is the score


def test_calibrate_records_k_target_and_samples_and_round_trips():
    rng = torch.Generator().manual_seed(0)
    support = torch.rand(6, 3, 16, 16, generator=rng)
    spec = CalibrationSpec(0.05, "lognormal_t", ("hflip",), "toy", size_correction=False)
    cal = calibrate(MeanScorer(), support, spec)
    assert cal.shots == 6 and cal.target_fpr == 0.05 and cal.n_samples == 12 and len(cal.samples) == 12
    assert cal.threshold == pytest.approx(threshold(cal.samples, 0.05, "lognormal_t", n_independent=6))
    assert cal.size_step == 0.0
    assert cal.threshold > max(cal.samples[:6]) * 0.5 and cal.pixel_threshold > 0
    again = Calibration.from_dict(cal.to_dict())
    assert again == cal and again.verdict(cal.threshold) == "ok" and again.verdict(cal.threshold * 1.01) == "anomalous"
    expect_error(lambda: calibrate(MeanScorer(), support[:1], CalibrationSpec(0.05, method="toy")), "K >= 2")
    expect_error(lambda: calibrate(MeanScorer(), support, CalibrationSpec(0.6, method="toy")), "(0, 0.5]")


def test_size_correction_extrapolates_the_median_log_step_and_never_raises_scores():
    from model.calibration import size_corrected

    k1 = np.array([1.0, 2.0, 4.0])
    k2 = np.array([1.1, 2.0, 5.0])  # log steps: log(1/1.1), 0, log(4/5); median = log(1/1.1)
    np.testing.assert_allclose(size_corrected(k1, k2), k1 / 1.1, rtol=1e-12)
    np.testing.assert_allclose(size_corrected(k1, k1 * 0.5), k1)  # a rising step is capped at 0
    expect_error(lambda: size_corrected(k1, k2[:2]), "one K - 2 score per sample")


def test_calibration_with_size_correction_scores_against_k_minus_2_and_applies_the_step():
    """MeanScorer's score |mean(shot) − mean(others)| changes with the dictionary: the corrected samples are
    the K − 1 samples times exp(median log step to K − 2), as model.calibration.size_corrected says."""
    from model.calibration import size_corrected

    support = torch.stack([torch.full((3, 8, 8), float(v)) for v in (0.1, 0.2, 0.3, 0.7, 0.9)])  # (5, 3, 8, 8)
    plain, _, _ = loo_scores(MeanScorer(), support, [], 32, "cpu")
    scorer = MeanScorer()
    corrected, peaks, step = loo_scores(scorer, support, [], 32, "cpu", size_correction=True)
    assert [a.shape[0] for a in scorer.adapted] == [4] * 5 + [3] * 5  # K − 1 each, then K − 2 each
    values = [0.1, 0.2, 0.3, 0.7, 0.9]
    k2 = [abs(values[i] - np.mean([w for j, w in enumerate(values) if j not in (i, (i + 1) % 5)])) for i in range(5)]
    np.testing.assert_allclose(corrected, size_corrected(plain, k2), rtol=1e-5)
    np.testing.assert_allclose(peaks, corrected, rtol=1e-5)
    assert step <= 0.0
    cal = calibrate(MeanScorer(), support, CalibrationSpec(0.05, "normal_t", (), "toy"))
    assert cal.size_step == pytest.approx(step) and cal.samples == pytest.approx(list(corrected))
    with pytest.raises(InputError, match="not a calibration record"):
        Calibration.from_dict({"threshold": 1.0})


@pytest.mark.parametrize("method", ["untrained", "knn_untrained"])
def test_leave_one_out_cut_from_the_full_state_equals_adapting_to_the_others(method):
    """The shortcut (slice the K-shot dictionary or bank) gives the same scores as adapting to K − 1 shots."""
    from orchestrator.evaluation.calibration import state_without
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model

    small = ["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8"]
    plain = ["model.image_norm=none", "model.exposure=none", "model.whiten=none"]
    cfg = load_config(None, parse_overrides(small + plain))
    model = untrained_model(cfg)
    scorer = make_scorer(method, model, cfg)
    support = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    full = scorer.adapt(support)
    for i in range(4):
        cut = state_without(scorer, full, i, 4)
        assert cut is not None
        direct = scorer.adapt(torch.cat([support[:i], support[i + 1 :]]))
        s_cut, m_cut = scorer.score(support[i : i + 1], cut)
        s_dir, m_dir = scorer.score(support[i : i + 1], direct)
        torch.testing.assert_close(s_cut, s_dir, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m_cut, m_dir, rtol=1e-4, atol=1e-6)
    # two shots out (the K − 2 dictionary the calibration's size correction scores against)
    cut = state_without(scorer, full, [3, 1], 4)
    direct = scorer.adapt(support[[0, 2]])
    torch.testing.assert_close(scorer.score(support[3:], cut)[0], scorer.score(support[3:], direct)[0],
                               rtol=1e-5, atol=1e-6)
    # centring makes the dictionary depend on every shot: no shortcut, adapt is called instead
    centred = make_scorer(method, model, load_config(None, parse_overrides(["data.image_size=32", "model.backbone.width=8",
                                                          "model.backbone.out_dim=8", "model.center=true"])))
    if method == "untrained":
        assert state_without(centred, centred.adapt(support), 0, 4) is None
        # so do the shots' leave-one-out energies (model.image_norm=support, the default): adapt is called
        normed = make_scorer(method, model, load_config(None, parse_overrides(small)))
        assert normed.adapt(support).normal_mean is not None
        assert state_without(normed, normed.adapt(support), 0, 4) is None
        # and so do the shots' whitening matrix and exposure: statistics of every shot
        for option in ("model.exposure=support", "model.whiten=support"):
            one = make_scorer(method, model, load_config(None, parse_overrides(small + plain[:1] + [option])))
            assert state_without(one, one.adapt(support), 0, 4) is None


def test_threshold_is_in_the_units_of_the_test_scores_under_image_norm_support():
    """A calibration's leave-one-out samples and the test scores are both standardised (K = 4) or both raw (K = 3)."""
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.calibration import CalibrationSpec, calibrate
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model

    cfg = load_config(None, parse_overrides(["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8"]))
    scorer = make_scorer("untrained", untrained_model(cfg), cfg)
    shots = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for k, standardised in ((4, True), (3, False)):
        support = shots[:k]
        assert (scorer.adapt(support).normal_mean is not None) is standardised
        cal = calibrate(scorer, support, CalibrationSpec(0.05, "normal_t", (), "untrained", size_correction=False))
        # each sample: shot i against the other K − 1 shots, standardised exactly when the K-shot task is
        expected = []
        for i in range(k):
            others = scorer.adapt_as(torch.cat([support[:i], support[i + 1:]]), k)
            assert (others.normal_mean is not None) is standardised
            expected.append(float(scorer.score(support[i:i + 1], others)[0][0]))
        np.testing.assert_allclose(cal.samples, expected, rtol=1e-5)
        # the K − 2 dictionaries of the size correction are standardised as well
        assert (scorer.adapt_as(support[:2], k).normal_mean is not None) is standardised


def counted_ours_calibration(*overrides: str):
    """A tiny untrained `ours` scorer, 4 shots and a size-corrected calibration spec, with a list that a hook
    on Ψ fills with the batch size of every pass: (scorer, support, spec, passes)."""
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model

    cfg = load_config(None, parse_overrides(["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8",
                                             *overrides]))
    network = untrained_model(cfg)
    passes: list[int] = []
    network.backbone.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    support = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    spec = CalibrationSpec(0.05, "normal_t", ("hflip", "shift"), "ours", size_correction=True)
    return make_scorer("ours", network, cfg), support, spec, passes


def test_a_calibration_passes_each_image_through_psi_once_and_scores_as_before(monkeypatch):
    """The shots' features serve every leave-one-out adaptation and each shot's augmentations are passed
    through Ψ once for both dictionaries (K − 1, K − 2): the samples and thresholds are those of passing the
    images anew every time."""
    from model.methods.ours import OursScorer

    scorer, support, spec, seen = counted_ours_calibration()
    fast = calibrate(scorer, support, spec)
    assert sum(seen) == 4 + 4 * 4  # the shots once, then each shot's 1 + 3 augmented images once
    seen.clear()
    monkeypatch.setattr(OursScorer, "features", lambda self, images: None)  # no features: every pass anew
    slow = calibrate(scorer, support, spec)
    assert sum(seen) == 2 * 4 * (3 + 4) - 4  # per shot and dictionary: its K − 1 (or K − 2) others + 4 images
    assert fast.samples == slow.samples and fast.threshold == slow.threshold
    assert fast.pixel_threshold == slow.pixel_threshold


def test_a_calibration_cut_from_the_full_state_passes_no_shot_twice():
    """Where every leave-one-out state is cut from the K-shot one (ours without the shots' standardisation),
    the shots' features are never asked for: Ψ sees the shots once (the full adaptation) and each shot's
    augmentations once."""
    scorer, support, spec, seen = counted_ours_calibration("model.image_norm=none")
    calibrate(scorer, support, spec)
    assert sum(seen) == 4 + 4 * 4, seen  # before the memo was lazy: 4 + 4 + 4 * 4


def test_subsets_of_the_shots_are_coded_from_one_product_per_image_and_score_as_adapting_anew(monkeypatch):
    """With ours' defaults (FISTA over top-k atoms, no centre) a calibration builds no dictionary by adapting:
    ShotSubsets cuts every leave-one-out dictionary and its normal energies from per-shot top-k lists. The
    samples equal those of adapting to every subset (held_out_scores); with centring, the dictionaries depend
    on every shot and the calibration adapts anew (2K subsets)."""
    from model.ebm.energy import AdaptiveEBM
    from orchestrator.evaluation.calibration import FeatureMemo, codes_subsets, held_out_scores

    built: list[int] = []
    original = AdaptiveEBM.build_dictionary

    def counted(self, support, *args, **kwargs):
        built.append(support.shape[0])
        return original(self, support, *args, **kwargs)

    monkeypatch.setattr(AdaptiveEBM, "build_dictionary", counted)
    scorer, support, spec, _ = counted_ours_calibration()
    assert codes_subsets(scorer)
    scores, peaks, step = loo_scores(scorer, support, list(spec.augment), 32, "cpu", size_correction=True)
    assert built == []
    memo = FeatureMemo(scorer, support, 32, "cpu")
    plain, plain_peaks = held_out_scores(scorer, support, list(spec.augment), 32, "cpu", memo=memo)
    two, two_peaks = held_out_scores(scorer, support, list(spec.augment), 32, "cpu", without_next=True, memo=memo)
    assert built == [3] * 4 + [2] * 4  # adapting anew: K − 1 shots, then K − 2, for every shot
    from model.calibration import size_corrected, size_step

    assert step == pytest.approx(size_step(plain, two), rel=1e-5, abs=1e-9)
    np.testing.assert_allclose(scores, plain * np.exp(size_step(plain, two)), rtol=1e-5)
    np.testing.assert_allclose(peaks, size_corrected(plain_peaks, two_peaks), rtol=1e-5)
    centred, _, _, _ = counted_ours_calibration("model.center=true")
    assert not codes_subsets(centred)
    built.clear()
    loo_scores(centred, support, [], 32, "cpu", size_correction=True)
    assert built == [3] * 4 + [2] * 4
