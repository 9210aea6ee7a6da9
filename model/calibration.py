"""Thresholds from normal samples only: the score above which an image is called anomalous, for a
target false-alarm rate, estimated from a few normal scores (the K shots scored leave-one-out).

With K ≈ 10 independent shots the empirical 99th percentile does not exist (it is the maximum, and its
false-alarm rate is anything from 0 to ~10 %). The estimators here fit a tail instead:

    lognormal_t  log-scores ~ Normal; the threshold is the one-sided (1 − fpr) *prediction* bound
                 exp(m + t_{1−fpr, n−1} · s · √(1 + 1/n)), n = the number of independent shots: it
                 accounts for the mean and spread being estimated from n samples (the default)
    lognormal_z  the same without the small-sample terms: exp(m + z_{1−fpr} · s)
    normal_t     the prediction bound on raw scores
    empirical    the (1 − fpr) quantile of the samples (linear interpolation): no extrapolation

Size correction (`size_corrected`): a leave-one-out sample is scored against K − 1 shots, a test image
against K. Where the score falls with the dictionary's size (ours: more atoms explain more), the samples
sit high and the threshold errs towards fewer false alarms. Scoring each sample against K − 2 shots too
gives the step from K − 2 to K − 1; the correction takes one more such step, in log space, with the
median step over the samples: log s_K ≈ log s_{K−1} + median(log s_{K−1} − log s_{K−2}).

Augmented copies of a shot (flips, shifts) are correlated with it: they sharpen m and s, but count
once each in n (`n_independent`). Scores are positive energies or distances; log takes max(score, 1e-12).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from model.errors import InputError

ESTIMATORS = ("lognormal_t", "lognormal_z", "normal_t", "empirical")
MAX_FPR = 0.5


def check_fpr(fpr: float, name: str = "--fpr") -> float:
    """A target false-alarm rate must lie in (0, 0.5]; anything else is bad input."""
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not math.isfinite(fpr) or not 0 < fpr <= MAX_FPR:
        raise InputError(f"{name} {fpr!r}: expected a target false-alarm rate in (0, {MAX_FPR}], e.g. 0.01")
    return float(fpr)


def threshold(samples, fpr: float, estimator: str = "lognormal_t", n_independent: int | None = None) -> float:
    """samples (N,) normal scores -> the score threshold whose false-alarm rate is `fpr` under the
    estimator's model. n_independent: how many of the N samples are independent (default N)."""
    check_fpr(fpr, "target false-alarm rate")
    if estimator not in ESTIMATORS:
        raise InputError(f"calibration estimator {estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    x = np.asarray(samples, dtype=np.float64).ravel()  # (N,)
    if x.size < 2 or not np.isfinite(x).all():
        raise InputError(f"calibration needs at least 2 finite normal scores; got {x.size}"
                         + ("" if np.isfinite(x).all() else " (some not finite)"))
    if estimator == "empirical":
        return float(np.quantile(x, 1.0 - fpr))
    if estimator.startswith("lognormal"):
        x = np.log(np.maximum(x, 1e-12))
    n = x.size if n_independent is None else max(2, min(int(n_independent), x.size))
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if estimator == "lognormal_z":
        bound = mean + float(stats.norm.ppf(1.0 - fpr)) * sd
    else:
        bound = mean + float(stats.t.ppf(1.0 - fpr, df=n - 1)) * sd * math.sqrt(1.0 + 1.0 / n)
    return float(math.exp(bound)) if estimator.startswith("lognormal") else float(bound)


def size_step(at_k_minus_1, at_k_minus_2) -> float:
    """Leave-one-out samples scored against K − 1 shots (N,) and the same samples against K − 2 (N,) ->
    the log step from K − 1 to K shots: median(log s_{K−1} − log s_{K−2}), capped at 0 so the correction
    never raises a threshold. 0 for kNN, whose nearest neighbour rarely changes."""
    a = np.log(np.maximum(np.asarray(at_k_minus_1, dtype=np.float64).ravel(), 1e-12))  # (N,)
    b = np.log(np.maximum(np.asarray(at_k_minus_2, dtype=np.float64).ravel(), 1e-12))  # (N,)
    if a.shape != b.shape:
        raise InputError(f"size correction needs one K - 2 score per sample; got {b.size} for {a.size}")
    return min(0.0, float(np.median(a - b)))


def size_corrected(at_k_minus_1, at_k_minus_2):
    """The samples extrapolated to K shots: each times exp(size_step)."""
    a = np.maximum(np.asarray(at_k_minus_1, dtype=np.float64).ravel(), 1e-12)  # (N,)
    return np.exp(np.log(a) + size_step(at_k_minus_1, at_k_minus_2))


def rates(scores, labels, thr: float) -> dict[str, float | None]:
    """Realised false-alarm rate on the normal (label 0) and recall on the anomalous (label 1) scores
    at `thr` (score > thr is flagged); None where a class is absent."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    flagged = s > thr
    return {"realised_fpr": float(flagged[~y].mean()) if (~y).any() else None,
            "recall": float(flagged[y].mean()) if y.any() else None,
            "n_normal": int((~y).sum()), "n_anomalous": int(y.sum())}
