"""Calibration from the K normal shots alone (no labelled anomaly): leave-one-shot-out scores, a
threshold for a target false-alarm rate, and a pixel threshold for the masks.

Each shot, and a few cheap augmentations of it (eval.calibration_augment: hflip, vflip, shift), is
scored by a scorer adapted to the *other* K − 1 shots. That gives K·(1 + A) normal scores without any image
the detector adapted to; `model.calibration.threshold` fits their tail (n = K independent shots).

The dictionary is one shot smaller than the one test images meet (K − 1 instead of K). A larger
dictionary explains a normal image at least as well, so these scores sit slightly high and the
threshold would err towards fewer false alarms. With eval.calibration_size_correction (the default)
every sample is also scored against K − 2 shots (without shot i and shot i + 1) and the samples are
extrapolated one step on to K (model.calibration.size_corrected); that doubles the calibration's
scoring. The choice was measured on the validation categories (docs/benchmarks.md).

The pixel threshold is fitted the same way to the maximum of each calibration sample's anomaly map:
a normal image then gets a non-empty mask about as often as the target rate says.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.calibration import ESTIMATORS, check_fpr, size_corrected, size_step, threshold
from model.errors import InputError
from model.methods import OURS
from model.methods.knn import KnnScorer
from model.methods.ours import OursScorer

AUGMENTS = ("hflip", "vflip", "shift")
SHIFT_FRACTION = 1 / 32  # 4 px at 128 px: about one feature cell at output stride 4
OK, ANOMALOUS = "ok", "anomalous"


def augment(images: torch.Tensor, kinds: list[str] | tuple[str, ...]) -> torch.Tensor:
    """images (n, C, H, W) -> (n·(1 + A), C, H, W): the originals, then each augmentation of all of them.
    shift = two copies moved diagonally by ±H/32 pixels, edges replicated."""
    out = [images]
    for kind in kinds:
        if kind == "hflip":
            out.append(images.flip(-1))
        elif kind == "vflip":
            out.append(images.flip(-2))
        elif kind == "shift":
            s = max(1, round(images.shape[-1] * SHIFT_FRACTION))
            padded = F.pad(images, (s, s, s, s), mode="replicate")  # (n, C, H + 2s, W + 2s)
            H, W = images.shape[-2:]
            out += [padded[..., : H, : W], padded[..., 2 * s :, 2 * s :]]  # moved down-right, up-left
        else:
            raise InputError(f"calibration augmentation {kind!r}: expected any of {', '.join(AUGMENTS)}")
    return torch.cat(out)


@dataclass(frozen=True)
class CalibrationSpec:
    """How a threshold is calibrated from K shots (eval.fpr, eval.calibration, eval.calibration_augment,
    eval.calibration_size_correction): one bundle that evaluate, predict and the registry build alike."""

    fpr: float
    estimator: str = "normal_t"
    augment: tuple[str, ...] = ("hflip", "vflip", "shift")
    method: str = OURS.name
    size_correction: bool = True

    @classmethod
    def from_config(cls, cfg, method: str, fpr: float | None = None) -> "CalibrationSpec":
        return cls(cfg.eval.fpr if fpr is None else fpr, cfg.eval.calibration, tuple(cfg.eval.calibration_augment),
                   method, cfg.eval.calibration_size_correction)


@dataclass
class Calibration:
    """What a verdict needs, stored with every adapted model (calibration.json, registry tags)."""

    target_fpr: float
    threshold: float  # image score > threshold -> anomalous
    pixel_threshold: float  # anomaly map > pixel_threshold -> in the mask
    shots: int  # K the threshold was calibrated from
    method: str
    estimator: str
    augment: list[str] = field(default_factory=list)
    n_samples: int = 0  # K·(1 + A) leave-one-out scores
    seconds: float = 0.0
    samples: list[float] = field(default_factory=list)  # the leave-one-out scores themselves (size-corrected)
    size_step: float = 0.0  # log-score step of the size correction applied to the samples (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "calibration") -> "Calibration":
        try:
            cal = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
            floats = [float(cal.threshold), float(cal.pixel_threshold), float(cal.target_fpr)]
        except (TypeError, ValueError, KeyError) as exc:
            raise InputError(f"{source}: not a calibration record ({type(exc).__name__}); expected the "
                             "calibration.json fsad writes") from None
        if not np.isfinite(floats).all():
            raise InputError(f"{source}: threshold values are not finite numbers")
        return cal

    def verdict(self, score: float) -> str:
        return ANOMALOUS if score > self.threshold else OK

    def line(self) -> str:
        return (f"threshold {self.threshold:.6g} for a target false-alarm rate of {self.target_fpr:g} "
                f"(calibrated on K={self.shots} normal shots, leave-one-out, {self.n_samples} samples, "
                f"{self.estimator}); pixel threshold {self.pixel_threshold:.6g}")


def state_without(scorer, state, drop, shots: int):
    """The scorer's state for the K shots minus shot(s) `drop` (an index or a list of them), cut out of
    the full state when that is exactly what adapting to the other shots gives (ours without centring or
    support augmentation: the atoms of the other shots; kNN: the other shots' bank rows); None
    otherwise. Saves K − 1 backbone passes (tests/test_calibration.py checks the equality)."""
    from model.ebm.sparse import TaskDictionary, spectral_norm

    dropped = {int(drop)} if isinstance(drop, int) else {int(d) for d in drop}
    kept_shots = [k for k in range(shots) if k not in dropped]
    if isinstance(scorer, KnnScorer) and isinstance(state, torch.Tensor) and state.shape[0] % shots == 0:
        P = state.shape[0] // shots  # bank rows per shot (shot-major)
        rows = torch.cat([torch.arange(k * P, (k + 1) * P) for k in kept_shots]).to(state.device)
        return state[rows]  # (kept·P, m)
    if (isinstance(scorer, OursScorer) and isinstance(state, TaskDictionary) and state.center is None
            and state.normal_mean is None  # normal energies of K − 1 shots are not cut out of those of K
            and state.whiten is None and state.exposure is None  # nor are the statistics of the other shots
            and not scorer.augment_support and state.atoms.shape[1] % shots == 0):
        P = state.atoms.shape[1] // shots  # atoms per shot: columns are shot-major
        keep = torch.cat([torch.arange(k * P, (k + 1) * P) for k in kept_shots]).to(state.atoms.device)
        atoms = state.atoms[:, keep]  # (m, kept·P)
        return TaskDictionary(atoms=atoms, scale=spectral_norm(atoms), shots=len(kept_shots), center=None)
    return None


def can_cut(scorer, shots: int) -> bool:
    """Whether state_without may find a shortcut for this scorer adapted to `shots` shots (then the full state
    is worth building): not where the dictionary carries normal energies, which depend on every shot."""
    return isinstance(scorer, KnnScorer) or (isinstance(scorer, OursScorer) and not scorer.augment_support
                                             and not scorer.standardises(shots))


class FeatureMemo:
    """Ψ's features of the shots and of each shot's augmentations, computed once for the many leave-one-out
    adaptations and scorings of one calibration (scorers with `features`; the scores are the same)."""

    def __init__(self, scorer, support: torch.Tensor, batch_size: int, device):
        self.scorer, self.support, self.batch_size, self.device = scorer, support, batch_size, device
        compute = getattr(scorer, "features", None)
        # only a scorer that adapts with adapt_as takes the shots' features (kNN cuts its bank instead)
        self.compute_shots = compute if compute is not None and hasattr(scorer, "adapt_as") else None
        self.shots: torch.Tensor | None = None  # (K, d, h', w') once a leave-one-out adaptation asked for it
        self.held: dict[int, list[torch.Tensor] | None] = {}  # shot index -> its augmentations' features

    def shot_features(self) -> torch.Tensor | None:
        """Ψ's features of the K shots (K, d, h', w'), computed at the first adaptation that needs them: none
        does where every leave-one-out state is cut from the full one. None: adapt from the images."""
        if self.compute_shots is not None and self.shots is None:
            self.shots = self.compute_shots(self.support.to(self.device))
        return self.shots

    def held_features(self, i: int, held: torch.Tensor) -> list[torch.Tensor] | None:
        """Per batch, the features of shot i's augmentations `held` (1+A, C, H, W); None: score the images."""
        from orchestrator.evaluation.evaluate import draw_free_features  # evaluate imports this module

        if i not in self.held:
            self.held[i] = draw_free_features(self.scorer, held, self.batch_size, self.device)
        return self.held[i]


def held_out_scores(scorer, support: torch.Tensor, kinds, batch_size: int, device, full_state=None,
                    without_next: bool = False, memo: FeatureMemo | None = None) -> tuple[np.ndarray, np.ndarray]:
    """support (K, C, H, W) -> (scores (K·(1+A),), map maxima (K·(1+A),)), shot-major: shot i and its
    augmentations scored by the scorer adapted to the shots other than i (and other than i + 1 too with
    without_next: the K − 2 dictionary of the size correction). full_state: the scorer's state for all K
    shots, cut instead of adapting anew where state_without can. memo: features already computed."""
    from orchestrator.evaluation.evaluate import score_batches

    K = support.shape[0]
    scores, peaks = [], []
    for i in range(K):
        drop = [i, (i + 1) % K] if without_next else [i]
        state = state_without(scorer, full_state, drop, K) if full_state is not None else None
        if state is None:
            kept = [k for k in range(K) if k not in drop]
            others = support[kept]  # (K - len(drop), C, H, W)
            adapt_as = getattr(scorer, "adapt_as", None)  # ours: standardised as the K-shot task is
            shot_features = memo.shot_features() if adapt_as and memo is not None else None
            if shot_features is not None:
                state = adapt_as(others.to(device), K, features=shot_features[kept])  # (K - len(drop), d, h', w')
            else:
                state = adapt_as(others.to(device), K) if adapt_as else scorer.adapt(others.to(device))
        held = augment(support[i : i + 1], kinds)  # (1+A, C, H, W)
        features = memo.held_features(i, held) if memo is not None else None
        s, maps = score_batches(scorer, state, held, batch_size, device, features=features)
        scores.append(s.double().numpy())
        peaks.append(maps.flatten(1).max(1).values.double().numpy())
    return np.concatenate(scores), np.concatenate(peaks)


def codes_subsets(scorer) -> bool:
    """Whether subset_scores serves this scorer: ours with energy maps, no support augmentation, and a model
    for which ShotSubsets is exact (AdaptiveEBM.codes_subsets)."""
    return (isinstance(scorer, OursScorer) and not scorer.augment_support and scorer.map_mode == "energy"
            and scorer.model.codes_subsets())


def subset_scores(scorer, support: torch.Tensor, kinds, memo: FeatureMemo, without_next: bool
                  ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None] | None:
    """held_out_scores for the K − 1 dictionaries (and, with without_next, the K − 2 ones) through
    `ShotSubsets`: one similarity product per image instead of one per image and dictionary (1.5–2.1× faster
    at K = 10 on 2 CPU cores, docs/benchmarks.md). None where that would not give the same scores (see
    codes_subsets) or the scorer does not expose Ψ's features; held_out_scores then adapts to every subset."""
    from model.ebm.energy import ShotSubsets

    if not codes_subsets(scorer):
        return None
    shot_features = memo.shot_features()  # (K, d, h', w')
    if shot_features is None:
        return None
    subsets = ShotSubsets(scorer.model, shot_features)
    K = support.shape[0]
    image_size = tuple(support.shape[-2:])
    out: list[list[tuple[np.ndarray, np.ndarray]]] = [[], []]
    for i in range(K):
        held = augment(support[i : i + 1], kinds)  # (1+A, C, H, W)
        features = memo.held_features(i, held)
        if features is None:
            return None
        signals = subsets.signals(torch.cat(features))  # ((1+A)·h'w', m)
        top = subsets.top(signals)
        drops = [[i], [i, (i + 1) % K]] if without_next else [[i]]
        for pass_index, drop in enumerate(drops):
            keep = [k for k in range(K) if k not in drop]
            dictionary = subsets.dictionary(keep, K)  # standardised as the K-shot task is
            scores, maps = subsets.score(signals, top, keep, dictionary, image_size, scorer.smooth_sigma)
            peaks = maps.flatten(1).max(1).values  # (1+A,)
            out[pass_index].append((scores.cpu().double().numpy(), peaks.cpu().double().numpy()))
    joined = [(np.concatenate([s for s, _ in rows]), np.concatenate([p for _, p in rows])) if rows else None
              for rows in out]
    return joined[0], joined[1]


def loo_scores(scorer, support: torch.Tensor, kinds, batch_size: int, device,
               full_state=None, size_correction: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """support (K, C, H, W) -> (scores (K·(1+A),), map maxima (K·(1+A),), size step): shot i and its
    augmentations scored by the scorer adapted to the other K − 1 shots; with size_correction (K >= 3)
    also against K − 2 (without shot i + 1), and both arrays extrapolated to K shots. full_state: the
    scorer's state for all K shots, when the caller has it already."""
    K = support.shape[0]
    memo = FeatureMemo(scorer, support, batch_size, device)
    both = size_correction and K >= 3
    found = subset_scores(scorer, support, kinds, memo, both)
    if found is not None:
        (scores, peaks), second = found
    else:
        full = full_state
        if full is None and K > 2 and can_cut(scorer, K):
            full = scorer.adapt(support.to(device))
        scores, peaks = held_out_scores(scorer, support, kinds, batch_size, device, full, memo=memo)
        second = (held_out_scores(scorer, support, kinds, batch_size, device, full, without_next=True, memo=memo)
                  if both else None)
    if not both:
        return scores, peaks, 0.0
    scores2, peaks2 = second
    step = size_step(scores, scores2)
    return scores * np.exp(step), size_corrected(peaks, peaks2), step


def calibrate(scorer, support: torch.Tensor, spec: CalibrationSpec, batch_size: int = 32,
              device: torch.device | str = "cpu", full_state=None) -> Calibration:
    """The image and pixel thresholds of `scorer` for K shots `support` (K, C, H, W) as `spec` says;
    full_state: the scorer already adapted to all K shots, if the caller has it (saves one adaptation)."""
    check_fpr(spec.fpr)
    if spec.estimator not in ESTIMATORS:
        raise InputError(f"eval.calibration={spec.estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    K = support.shape[0]
    if K < 2:
        raise InputError(f"{K} normal shot: calibration scores each shot against the others, so it needs K >= 2")
    began = time.perf_counter()
    scores, peaks, step = loo_scores(scorer, support, list(spec.augment), batch_size, torch.device(device),
                                     full_state, spec.size_correction)
    return Calibration(
        target_fpr=spec.fpr, threshold=threshold(scores, spec.fpr, spec.estimator, n_independent=K),
        pixel_threshold=threshold(peaks, spec.fpr, spec.estimator, n_independent=K), shots=K, method=spec.method,
        estimator=spec.estimator, augment=list(spec.augment), n_samples=int(scores.size),
        seconds=time.perf_counter() - began, samples=[float(v) for v in scores], size_step=step)
