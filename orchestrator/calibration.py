"""Calibration from the K normal shots alone (no labelled anomaly): leave-one-shot-out scores, a
threshold for a target false-alarm rate, and a pixel threshold for the masks.

Each shot, and a few cheap augmentations of it (eval.calibration_augment: hflip, vflip, shift), is
scored by a scorer adapted to the *other* K − 1 shots. That gives K·(1 + A) normal scores without any image
the detector adapted to; `model.calibration.threshold` fits their tail (n = K independent shots).

The dictionary is one shot smaller than the one test images meet (K − 1 instead of K). A larger
dictionary explains a normal image at least as well, so these scores are, if anything, slightly
higher than a test image's and the threshold errs on the side of fewer false alarms; the realised
rates in docs/benchmarks.md measure what that costs. No correction is applied.

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

from model.calibration import ESTIMATORS, check_fpr, threshold
from model.errors import InputError

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
    samples: list[float] = field(default_factory=list)  # the leave-one-out scores themselves

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


def state_without(scorer, state, i: int, shots: int):
    """The scorer's state for the K shots minus shot i, cut out of the full state when that is exactly
    what adapting to the other K − 1 shots gives (ours without centring or support augmentation: the
    atoms and Gram of the other shots; kNN: the other shots' bank rows); None otherwise. Saves K − 1
    backbone passes and Gram products (tests/test_calibration.py checks the equality)."""
    from model.knn import KnnScorer
    from model.sparse import TaskDictionary, spectral_norm
    from orchestrator.evaluate import OursScorer

    if isinstance(scorer, KnnScorer) and isinstance(state, torch.Tensor) and state.shape[0] % shots == 0:
        P = state.shape[0] // shots  # bank rows per shot (shot-major)
        return torch.cat([state[: i * P], state[(i + 1) * P :]])  # ((K-1)·P, m)
    if (isinstance(scorer, OursScorer) and isinstance(state, TaskDictionary) and state.center is None
            and not scorer.augment_support and state.atoms.shape[1] % shots == 0):
        P = state.atoms.shape[1] // shots  # atoms per shot: columns are shot-major
        keep = torch.cat([torch.arange(0, i * P), torch.arange((i + 1) * P, state.atoms.shape[1])])
        keep = keep.to(state.atoms.device)
        atoms = state.atoms[:, keep]  # (m, (K-1)·P)
        gram = state.gram[keep][:, keep] if state.gram is not None else None  # ((K-1)·P, (K-1)·P)
        return TaskDictionary(atoms=atoms, scale=spectral_norm(atoms), shots=shots - 1, center=None, gram=gram)
    return None


def can_cut(scorer) -> bool:
    """Whether state_without may find a shortcut for this scorer (then the full state is worth building)."""
    from model.knn import KnnScorer
    from orchestrator.evaluate import OursScorer

    return isinstance(scorer, KnnScorer) or (isinstance(scorer, OursScorer) and not scorer.augment_support)


def loo_scores(scorer, support: torch.Tensor, kinds, batch_size: int, device,
               full_state=None) -> tuple[np.ndarray, np.ndarray]:
    """support (K, C, H, W) -> (scores (K·(1+A),), map maxima (K·(1+A),)): shot i and its augmentations
    scored by the scorer adapted to the other K − 1 shots. full_state: the scorer's state for all K shots,
    when the caller has it already."""
    from orchestrator.evaluate import score_batches

    K = support.shape[0]
    scores, peaks = [], []
    full = full_state
    if full is None and K > 2 and can_cut(scorer):
        full = scorer.adapt(support.to(device))
    for i in range(K):
        state = state_without(scorer, full, i, K) if full is not None else None
        if state is None:
            others = torch.cat([support[:i], support[i + 1 :]])  # (K-1, C, H, W)
            state = scorer.adapt(others.to(device))
        held = augment(support[i : i + 1], kinds)  # (1+A, C, H, W)
        s, maps = score_batches(scorer, state, held, batch_size, device)
        scores.append(s.double().numpy())
        peaks.append(maps.flatten(1).max(1).values.double().numpy())
    return np.concatenate(scores), np.concatenate(peaks)


def calibrate(scorer, support: torch.Tensor, fpr: float, method: str, estimator: str = "lognormal_t",
              kinds=("hflip", "vflip", "shift"), batch_size: int = 32, device: torch.device | str = "cpu",
              full_state=None) -> Calibration:
    """The image and pixel thresholds of `scorer` for K shots `support` (K, C, H, W) at target `fpr`;
    full_state: the scorer already adapted to all K shots, if the caller has it (saves one adaptation)."""
    check_fpr(fpr)
    if estimator not in ESTIMATORS:
        raise InputError(f"eval.calibration={estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    K = support.shape[0]
    if K < 2:
        raise InputError(f"{K} normal shot: calibration scores each shot against the others, so it needs K >= 2")
    began = time.perf_counter()
    scores, peaks = loo_scores(scorer, support, list(kinds), batch_size, torch.device(device), full_state)
    return Calibration(
        target_fpr=fpr, threshold=threshold(scores, fpr, estimator, n_independent=K),
        pixel_threshold=threshold(peaks, fpr, estimator, n_independent=K), shots=K, method=method,
        estimator=estimator, augment=list(kinds), n_samples=int(scores.size),
        seconds=time.perf_counter() - began, samples=[float(v) for v in scores])
