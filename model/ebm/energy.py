"""AdaptiveEBM: Ψ -> adaptive sparse-coding layer -> energy (Eq. 8); anomaly map |∇ₓE| (Alg. 2).

Energy. For every feature position p the signal z_p is the d·l² volume around it (l = receptive field),
scaled to unit ℓ2 norm; the dictionary atoms (every position of every support image) are scaled the
same way. The position energy is e_p = ‖z_p − z'_p‖², z' = D S(z; D) (Eq. 8), and the image energy
is the mean over positions. Why unit norms: L_cd (Eq. 10) is unbounded below for an unnormalised
energy (Ψ can scale features up for negatives); with unit signals e_p lies in [0, 1] (0 = explained by
the normal atoms, 1 = orthogonal to all of them), so L_cd ∈ [−1, 1] and training cannot run away. The
Du & Mordatch energy-magnitude regulariser is available on top (losses.energy_regularizer).

Centering. Before normalising, signals and atoms have the mean volume of the support set subtracted
(computed from the K shots, so adaptation stays one forward pass). Conv features share a large common
direction; left in, it dominates ‖D‖₂ (measured on tire with a random Ψ: ‖D‖₂² 405 -> 153 after centering),
makes every cosine high and leaves the few ISTC steps of Eq. 6 reconstructing only that direction. With
it removed, the code captures what distinguishes a position (position-energy pixel AUROC 0.24 -> 0.90 in
that measurement). `center=False` gives the plain layer.

Exposure (`exposure="support"`). Every image, the shots included, enters Ψ with its own per-channel mean
intensity replaced by the shots' mean: a product line whose later images are darker or brighter than its
shots is compared at the shots' exposure. It also cancels a defect that only shifts the whole image's
intensity, so it is an option: on the validation categories it fixes screw (whose test normals are darker
than its shots) and costs elpv_poly, whose defective cells are darker (docs/benchmarks.md, "Statistics of
the shots").

Whitening (`whiten="support"`). Signals and atoms are multiplied by W = (M + r·I)^(−1/2), M the shots'
second-moment matrix of raw volumes and r = whiten_shrink × its mean eigenvalue, before the unit norm: the
cosine then weighs directions in which normal positions vary little as much as the few that dominate conv
features (a Mahalanobis cosine; the ridge bounds the gain of directions the shots never span). Off by
default: it lifts pcb_deeppcb's pixel AUROC and costs screw's (same section).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ebm.backbone import check_precomputed
from model.errors import InputError
from model.ebm.sparse import (
    SHRINKS,
    SOLVERS,
    fista_code,
    fista_energy,
    local_energy,
    top_per_shot,
    merge_top,
    TaskDictionary,
    sparse_code,
    unfold_volumes,
    spectral_norm,
    validate_sparsity,
)


@dataclass(frozen=True)
class SparseSpec:
    """The sparse-coding layer's settings. No defaults here: a run's defaults live in the config schema
    (orchestrator/config/schema.py, built by keyword in orchestrator/config/specs.py); `SparseSpec.paper()`
    is the paper's configuration (Eqs. 6-9: ISTC with continuation, SigShrink, l = 3, mean image score)."""

    lam_max: float  # first continuation threshold (cosine units, see sparse.py)
    lam_star: float  # last continuation threshold
    istc_steps: int  # N in Eq. 6
    shrink: str  # sigshrink | hard | none
    tau: float  # SigShrink smoothness (Eq. 9), in 1/cosine units
    receptive_field: int  # l (Section 3.1.1)
    normalize: bool  # unit-norm signals and atoms (bounded energy)
    center: bool  # subtract the support set's mean volume before normalising (module doc)
    solver: str  # istc (Eq. 6, N steps of continuation) | fista (Eq. 5 at λ = lam_star, to `tol`)
    max_steps: int  # FISTA's step budget
    tol: float  # FISTA stops once no code changes by more than this (cosine units)
    top_k_atoms: int  # FISTA codes each position over its k most similar atoms; 0 = all atoms
    image_score: str  # mean | topk: image energy = mean of the top `top_frac` position energies
    top_frac: float  # fraction of positions in the top-k image score (1 position at least)
    image_norm: str  # none | support: standardise position energies by the shots' leave-one-out energies
    exposure: str  # none | support: every image's per-channel mean intensity replaced by the shots' before Ψ
    whiten: str  # none | support: volumes whitened by the shots' second-moment matrix before normalising
    whiten_shrink: float  # that matrix's ridge, in units of its mean eigenvalue (> 0)

    @classmethod
    def paper(cls, **changes) -> "SparseSpec":
        """The paper's configuration, with `changes` (field=value) applied."""
        return cls(**{**PAPER_SPARSE, **changes})

    def __post_init__(self) -> None:
        self.validate()  # once, at construction: the forward pass trusts a built spec

    def validate(self) -> None:
        validate_sparsity(self.lam_max, self.lam_star, self.istc_steps, self.tau)
        if self.shrink not in SHRINKS:
            raise InputError(f"model.shrink={self.shrink!r}: expected one of {SHRINKS}")
        if self.solver not in SOLVERS:
            raise InputError(f"model.solver={self.solver!r}: expected one of {SOLVERS}")
        if self.image_score not in IMAGE_SCORES:
            raise InputError(f"model.image_score={self.image_score!r}: expected one of {IMAGE_SCORES}")
        for name in ("image_norm", "exposure", "whiten"):
            if getattr(self, name) not in TASK_NORMS:
                raise InputError(f"model.{name}={getattr(self, name)!r}: expected one of {TASK_NORMS}")
        if not (math.isfinite(self.whiten_shrink) and self.whiten_shrink > 0):
            raise InputError(f"model.whiten_shrink={self.whiten_shrink}: expected a finite value > 0")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise InputError(f"model.max_steps={self.max_steps}: expected an integer >= 1")
        if not (isinstance(self.top_k_atoms, int) and self.top_k_atoms >= 0):
            raise InputError(f"model.top_k_atoms={self.top_k_atoms}: expected an integer >= 0 (0 = all atoms)")
        if not (math.isfinite(self.tol) and self.tol >= 0):
            raise InputError(f"model.tol={self.tol}: expected a finite value >= 0")
        if not (math.isfinite(self.top_frac) and 0 < self.top_frac <= 1):
            raise InputError(f"model.top_frac={self.top_frac}: expected a fraction in (0, 1]")
        if self.receptive_field < 1 or self.receptive_field % 2 == 0:
            raise InputError(f"model.receptive_field={self.receptive_field}: expected an odd integer >= 1")


PAPER_SPARSE = dict(
    lam_max=0.9,
    lam_star=0.1,
    istc_steps=5,
    shrink="sigshrink",
    tau=20.0,
    receptive_field=3,
    normalize=True,
    center=True,
    solver="istc",
    max_steps=50,
    tol=1e-4,
    top_k_atoms=0,
    image_score="mean",
    top_frac=0.01,
    image_norm="none",
    exposure="none",
    whiten="none",
    whiten_shrink=1.0,
)  # the paper's settings (Eqs. 6-9); centring, the FISTA budget and top_frac are this code's, at reference values


MAP_MODES = ("gradient", "energy")
IMAGE_SCORES = ("mean", "topk")
TASK_NORMS = ("none", "support")  # image_norm, exposure, whiten: nothing, or a statistic of the task's shots
# Fewest shots that get normal energies: a calibrated threshold scores each shot against the other K − 1 and
# K − 2 shots, and each of those dictionaries needs two shots of its own for them; with fewer shots the score
# stays raw, so that the threshold and the test scores are in the same units.
MIN_NORMAL_SHOTS = 4


def top_mean(maps: torch.Tensor, top_frac: float) -> torch.Tensor:
    """maps (B, ...) -> (B,) mean of the largest max(1, round(top_frac·N)) values of each map."""
    flat = maps.flatten(1)  # (B, N)
    k = max(1, int(round(top_frac * flat.shape[1])))
    return flat.topk(k, dim=1).values.mean(1)


def image_score(position: torch.Tensor, kind: str, top_frac: float) -> torch.Tensor:
    """Position energies (B, h', w') -> image energies (B,): the mean, or the mean of the top
    max(1, round(top_frac·h'w')) positions (a small defect covers few positions; the mean dilutes it)."""
    if kind == "mean":
        return position.flatten(1).mean(1)
    return top_mean(position, top_frac)


def task_exposure(support: torch.Tensor) -> torch.Tensor:
    """support (K, C, H, W) -> the shots' mean intensity per channel (C,)."""
    return support.mean(dim=(0, 2, 3))  # (C,)


def align_exposure(images: torch.Tensor, exposure: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) with each image's per-channel mean replaced by exposure (C',) -> (B, max(C, C'), H, W)
    (a grey image against colour shots broadcasts to three channels). Differentiable in the images."""
    own = images.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return images - own + exposure.view(1, -1, 1, 1)  # (B, max(C, C'), H, W)


def whitening(volumes: torch.Tensor, shrink: float) -> torch.Tensor:
    """The task's whitening matrix W = (M + shrink·mean(eig M)·I)^(−1/2) (m, m), symmetric, from the shots'
    volumes (n, m) and their second-moment matrix M = VᵀV / n. Cosines between W-whitened volumes weigh the
    directions in which the shots vary little (where a defect stands out) as much as the few that dominate
    conv features; the ridge keeps directions the shots never span from being amplified without bound.
    A constant of the task (no gradient): eigh's backward is unstable at near-equal eigenvalues."""
    with torch.no_grad():
        v = volumes.detach().double()  # (n, m)
        moment = v.transpose(0, 1) @ v / max(1, v.shape[0])  # (m, m)
        ridge = shrink * moment.diagonal().mean().clamp_min(1e-12)
        eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # (m,), (m, m)
        inv_sqrt = (eigenvalues.clamp_min(0) + ridge).rsqrt()  # (m,)
        return ((eigenvectors * inv_sqrt) @ eigenvectors.transpose(0, 1)).to(volumes.dtype)  # (m, m)


def participation_ratio(volumes: torch.Tensor) -> torch.Tensor:
    """Effective rank of a feature set: (Σλ)² / Σλ² over the eigenvalues λ of its covariance.

    volumes (n, m) -> () in [1, m]; 1 = every vector on one line (collapsed features), m = isotropic.
    Computed from the trace and the Frobenius norm of the covariance (no eigendecomposition), so it is
    cheap and differentiable."""
    centred = volumes - volumes.mean(0, keepdim=True)  # (n, m)
    cov = centred.transpose(0, 1) @ centred / max(1, volumes.shape[0] - 1)  # (m, m)
    return cov.diagonal().sum().pow(2) / cov.pow(2).sum().clamp_min(1e-12)


class AdaptiveEBM(nn.Module):
    """E_θ(x; D): the only learnt parameters θ are Ψ's; D is built from support images at run time."""

    def __init__(self, backbone: nn.Module, sparse: SparseSpec):
        super().__init__()
        self.backbone = backbone
        self.sparse = sparse

    # -- features ---------------------------------------------------------------------------
    def volumes(self, images: torch.Tensor, exposure: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, C, H, W) -> raw volumes (B, h'·w', m) with m = d·l², and (h', w').

        exposure (C',), the task's mean intensity per channel (`task_exposure`): each image's own per-channel
        mean is replaced by it before Ψ (module doc, "Exposure"). features (B, d, h', w'): Ψ(images) computed
        once already (an evaluation scoring one test set for several support draws); only without exposure,
        which changes what enters Ψ."""
        if features is not None:
            if exposure is not None:
                raise InputError("precomputed features cannot serve a task with exposure alignment: Ψ sees "
                                 "the images at the task's exposure")
            check_precomputed(features, images)
        else:
            if exposure is not None:
                images = align_exposure(images, exposure)  # (B, max(C, C'), H, W)
            features = self.backbone(images)  # (B, d, h', w')
        # unchecked: the spec validated receptive_field when it was built
        return unfold_volumes(features, self.sparse.receptive_field), features.shape[2:]  # (B, h'w', d·l²)

    def prepare(self, volumes: torch.Tensor, center: torch.Tensor | None,
                whiten: torch.Tensor | None = None) -> torch.Tensor:
        """Subtract the task centre (m,) when given, whiten by the task's (m, m) matrix when given, then scale
        every volume to unit norm."""
        if center is not None:
            volumes = volumes - center
        if whiten is not None:
            volumes = volumes @ whiten  # (..., m) @ (m, m): W is symmetric
        if self.sparse.normalize:
            volumes = F.normalize(volumes, dim=-1, eps=1e-6)
        return volumes

    def signals(self, images: torch.Tensor, dictionary: TaskDictionary,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, C, H, W) -> signals (B, h'·w', m) ready for sparse coding over `dictionary`, and (h', w').
        features: Ψ(images), when the caller has them (`volumes`)."""
        volumes, size = self.volumes(images, dictionary.exposure, features)  # (B, h'w', m)
        if volumes.shape[-1] != dictionary.atoms.shape[0]:  # before the centre and W meet the volumes
            raise InputError(f"dictionary atoms have dimension {dictionary.atoms.shape[0]}, signals {volumes.shape[-1]}")
        return self.prepare(volumes, dictionary.center, dictionary.whiten), size

    def build_dictionary(self, support: torch.Tensor, task_shots: int | None = None,
                         features: torch.Tensor | None = None) -> TaskDictionary:
        """Alg. 2 steps 3-4: support (K, C, H, W) -> D (m, K·h'·w'), every position an atom.

        task_shots (scoring only): D also carries the shots' normal energies (_normal_energy) when a task of
        that many shots gets them (`standardises`) and K >= 2. It is K for a task, and the task's K for a
        calibration's leave-one-out subset, so that its scores are in the units of the task's test scores.
        features: Ψ(support) when the caller has them (a calibration adapting to many subsets of K shots)."""
        if support.dim() != 4 or support.shape[0] < 1:
            raise InputError(f"support batch of shape {tuple(support.shape)}: expected (K >= 1, C, H, W)")
        exposure = task_exposure(support) if self.sparse.exposure == "support" else None  # (C,)
        raw, size = self.volumes(support, exposure, features)  # (K, h'w', m)
        flat = raw.reshape(-1, raw.shape[-1])  # (K·h'w', m)
        center = flat.mean(0) if self.sparse.center else None  # (m,)
        whiten = (whitening(flat if center is None else flat - center, self.sparse.whiten_shrink)
                  if self.sparse.whiten == "support" else None)  # (m, m)
        volumes = self.prepare(raw, center, whiten)  # (K, h'w', m)
        atoms = volumes.reshape(-1, volumes.shape[-1]).transpose(0, 1)  # (m, K·h'w')
        # No task Gram: the top-k solver builds each position's k×k Gram from its gathered atoms.
        dictionary = TaskDictionary(atoms=atoms, scale=spectral_norm(atoms), shots=support.shape[0], center=center,
                                    whiten=whiten, exposure=exposure)
        if task_shots is not None and self.standardises(task_shots) and support.shape[0] >= 2:
            dictionary.normal_mean, dictionary.normal_scale = self._normal_energy(volumes, atoms, center, tuple(size))
        return dictionary

    def _normal_energy(self, volumes: torch.Tensor, atoms: torch.Tensor, center: torch.Tensor | None,
                       size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """What normal positions score: volumes (K, h'w', m), the shots' prepared signals, and D's atoms
        (m, K·h'w'), shot-major -> (mean, scale) (h', w').

        Every shot i is coded against the atoms of the other K − 1 shots: its position energies e_i (h', w')
        are what a normal image scores where it looks like no shot exactly. Their mean μ and spread s over
        the K shots, each averaged over a 3×3 neighbourhood (K − 1 samples per position are few), say where
        normal images are hard to reconstruct (edges, a label, a thread). The image score then ranks
        (e − μ) / (s + mean(s)) instead of e; the floor mean(s) keeps positions where the shots agree by
        chance from dominating. The maps stay raw energies. Costs K single-image codings and no backbone
        pass beyond the dictionary's own, measured on the validation categories (docs/benchmarks.md).
        """
        shots, positions = volumes.shape[0], volumes.shape[1]
        with torch.no_grad():
            energies = []
            for i in range(shots):
                others = torch.cat([atoms[:, :i * positions], atoms[:, (i + 1) * positions:]], 1)  # (m, (K−1)·h'w')
                left_out = TaskDictionary(others, spectral_norm(others), shots - 1, center)
                energies.append(self.signal_energy(volumes[i], left_out).reshape(size))  # (h', w')
            return normal_statistics(torch.stack(energies))  # (K, h', w') -> (h', w') each

    def standardises(self, task_shots: int) -> bool:
        """Whether a task of task_shots shots gets normal energies (image_norm "support", K >= MIN_NORMAL_SHOTS)."""
        return self.sparse.image_norm == "support" and task_shots >= MIN_NORMAL_SHOTS

    def image_energy(self, position: torch.Tensor, dictionary: TaskDictionary) -> torch.Tensor:
        """Position energies (B, h', w') -> image scores (B,), standardised first when D carries normal energies."""
        if dictionary.normal_mean is not None:
            if dictionary.normal_mean.shape != position.shape[1:]:
                raise InputError(f"images give {tuple(position.shape[1:])} feature positions, the shots gave "
                                 f"{tuple(dictionary.normal_mean.shape)}: score images of the shots' size")
            position = (position - dictionary.normal_mean) / dictionary.normal_scale  # (B, h', w')
        return image_score(position, self.sparse.image_score, self.sparse.top_frac)

    # -- energy -----------------------------------------------------------------------------
    def position_energy(self, images: torch.Tensor, dictionary: TaskDictionary,
                        features: torch.Tensor | None = None,
                        return_atoms: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Eq. 8 per feature position: images (B, C, H, W) -> e (B, h', w'); features: Ψ(images) if known.
        return_atoms > 0 (`signal_energy`): also the columns of every position's most similar atoms (B, h'·w', c)."""
        signals, (h, w) = self.signals(images, dictionary, features)  # (B, h'w', m)
        B, P, m = signals.shape
        found = self.signal_energy(signals.reshape(B * P, m), dictionary, return_atoms)
        if return_atoms > 0:
            return found[0].reshape(B, h, w), found[1].reshape(B, P, -1)  # (B, h', w'), (B, h'w', c)
        return found.reshape(B, h, w)  # (B, h', w')

    def unit_volume_field(self) -> int | None:
        """The receptive field l when the signals are Ψ's plain l-volumes at unit norm, coded over their top-k
        atoms (FISTA) — the volumes and memory bank kNN scores on the same Ψ — else None (centre, whitening or
        exposure make them another space; the other solvers choose no atoms)."""
        spec = self.sparse
        plain = (spec.normalize and not spec.center and spec.whiten == "none" and spec.exposure == "none")
        return spec.receptive_field if plain and spec.solver == "fista" and spec.top_k_atoms > 0 else None

    def signal_energy(self, flat: torch.Tensor, dictionary: TaskDictionary,
                      return_atoms: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Eq. 8 for prepared signals (n, m) -> (n,). return_atoms > 0 (FISTA over top-k atoms only, as
        `fista_energy`): also the columns (n, c) of each signal's most similar atoms, most similar first."""
        spec = self.sparse
        if spec.solver == "fista" and spec.top_k_atoms > 0:
            return fista_energy(flat, dictionary.atoms, spec.lam_star, spec.max_steps, spec.shrink, spec.tau,
                                spec.top_k_atoms, spec.tol, return_atoms=return_atoms)  # (n,) [, (n, c)]
        if return_atoms > 0:
            raise InputError("only FISTA over top-k atoms (model.solver=fista, model.top_k_atoms > 0) chooses each "
                             "position's atoms")
        if spec.solver == "fista":
            recon = fista_code(flat, dictionary.atoms, spec.lam_star, spec.max_steps, spec.shrink, spec.tau,
                               0, spec.tol)  # (n, m)
        else:
            recon = sparse_code(
                flat, dictionary.atoms, spec.lam_max, spec.lam_star, spec.istc_steps, spec.shrink, spec.tau,
                atom_scale=dictionary.scale,
            )  # (n, m)
        return (flat - recon).pow(2).sum(-1)  # (n,)

    def energy(self, images: torch.Tensor, dictionary: TaskDictionary) -> torch.Tensor:
        """Image energy = anomaly score (B,): mean or top-k mean of the position energies (spec.image_score),
        standardised by the shots' leave-one-out energies when the dictionary carries them."""
        return self.image_energy(self.position_energy(images, dictionary), dictionary)

    def forward(self, images: torch.Tensor, dictionary: TaskDictionary) -> torch.Tensor:
        return self.energy(images, dictionary)

    # -- localisation -----------------------------------------------------------------------
    def score_and_map(
        self, images: torch.Tensor, dictionary: TaskDictionary, smooth_sigma: float = 0.0,
        mode: str = "gradient", features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. 2 steps 5-6: energies (B,) and anomaly maps (B, H, W).

        mode "gradient" (the paper): |∇ₓE|, taken per image (energies are independent across the batch,
        so the gradient of their sum is every image's own gradient), reduced over channels by the mean
        of |·|. mode "energy": the position energies e (B, h', w') upsampled bilinearly to the input
        size. Either is then optionally Gaussian-smoothed with `smooth_sigma` pixels. θ gets no gradient.
        features: Ψ(images) computed once for several support draws (mode "energy" only: the gradient map
        needs the pass through Ψ).
        """
        if mode not in MAP_MODES:
            raise InputError(f"anomaly map mode {mode!r}: expected one of {MAP_MODES}")
        if features is not None and mode != "energy":
            raise InputError(f"anomaly map mode {mode!r} differentiates through Ψ: precomputed features serve "
                             "mode 'energy' only")
        if mode == "energy":
            with torch.no_grad():
                position = self.position_energy(images, dictionary, features)  # (B, h', w')
            return self.energy_map(position, dictionary, tuple(images.shape[-2:]), smooth_sigma)
        else:
            with torch.enable_grad():
                x = images.detach().clone().requires_grad_(True)
                energies = self.energy(x, dictionary.detach())
                (grad,) = torch.autograd.grad(energies.sum(), x)
            maps = grad.abs().mean(1)  # (B, H, W)
        return energies.detach(), smoothed(maps, smooth_sigma).detach()

    def energy_map(self, position: torch.Tensor, dictionary: TaskDictionary, image_size: tuple[int, int],
                   smooth_sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """score_and_map's mode "energy" from the position energies (B, h', w'): image energies (B,) and the
        energies upsampled bilinearly to image_size (H, W), then smoothed -> (B, H, W)."""
        energies = self.image_energy(position, dictionary)
        maps = F.interpolate(position[:, None], size=image_size, mode="bilinear",
                             align_corners=False)[:, 0]  # (B, H, W)
        return energies.detach(), smoothed(maps, smooth_sigma).detach()

    def codes_subsets(self) -> bool:
        """Whether `ShotSubsets` can stand in for adapting to subsets of a task's shots: the prepared atoms of a
        shot then do not depend on the other shots (no centre, whitening or exposure of the task) and each
        position is coded over its top-k atoms (FISTA), chosen by similarity alone."""
        spec = self.sparse
        return (spec.solver == "fista" and spec.top_k_atoms > 0 and not spec.center and spec.whiten == "none"
                and spec.exposure == "none")


def normal_statistics(loo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shots' leave-one-out position energies (K, h', w') -> (mean, scale) (h', w') of `_normal_energy`:
    mean and spread over the shots, each averaged over a 3×3 neighbourhood, the spread floored by its mean."""
    mean = F.avg_pool2d(loo.mean(0)[None, None], 3, 1, 1, count_include_pad=False)[0, 0]  # (h', w')
    spread = F.avg_pool2d(loo.std(0)[None, None], 3, 1, 1, count_include_pad=False)[0, 0]  # (h', w')
    return mean, (spread + spread.mean()).clamp_min(1e-6)  # (h', w') each


def smoothed(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """maps (B, H, W) Gaussian-smoothed with sigma pixels (0: as they are)."""
    if not math.isfinite(sigma) or sigma < 0:
        raise InputError(f"map smoothing sigma {sigma}: expected a finite value >= 0")
    return gaussian_blur(maps, sigma) if sigma > 0 else maps


class ShotSubsets:
    """Dictionaries of any subset of one task's K shots, and energies over them, from one similarity product
    per image: a calibration adapts to 2K subsets (every shot left out, then two) and scores each left-out
    shot's augmentations, which by adapting anew costs about K times the products of one adaptation.

    Exact where `AdaptiveEBM.codes_subsets` holds: a shot's prepared atoms are the same in every subset, and the
    k atoms a position is coded over are the k most similar of the subset's, which are among the k most similar
    of their own shot (`top_per_shot`, `merge_top`). FISTA stops each signal on its own, so energies differ from
    adapting anew only by the rounding of the two similarity products (tests/test_energy.py)."""

    def __init__(self, model: AdaptiveEBM, shot_features: torch.Tensor):
        """shot_features: Ψ of the K shots (K, d, h', w')."""
        if not model.codes_subsets():
            raise InputError("ShotSubsets needs FISTA over top-k atoms without centre, whitening or exposure "
                             "(model.solver=fista, model.top_k_atoms > 0, model.center=false, whiten/exposure none)")
        self.model, self.spec = model, model.sparse
        self.shots = shot_features.shape[0]
        self.size = tuple(shot_features.shape[2:])  # (h', w')
        self.positions = self.size[0] * self.size[1]
        self.shot_signals = self.signals(shot_features)  # (K·h'w', m), shot-major
        self.atoms = self.shot_signals.transpose(0, 1)  # (m, K·h'w'): every position an atom, as build_dictionary
        self.shot_top = self.top(self.shot_signals)  # (K·h'w', K, k) values and columns

    def top(self, signals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared signals (n, m) -> their k most similar atoms in each shot (`top_per_shot`)."""
        return top_per_shot(signals, self.atoms, self.shots, self.spec.top_k_atoms)

    def energies(self, signals: torch.Tensor, top: tuple[torch.Tensor, torch.Tensor], keep: list[int]) -> torch.Tensor:
        """Position energies (n,) of prepared signals (n, m) over the atoms of the shots `keep`, given their
        per-shot lists `top`: what signal_energy gives over a dictionary built from those shots."""
        spec = self.spec
        corr, index = merge_top(*top, keep, spec.top_k_atoms)  # (n, k) each
        return local_energy(signals, self.atoms, corr, index, spec.lam_star, spec.max_steps, spec.shrink, spec.tau,
                            spec.tol)

    def dictionary(self, keep: list[int], task_shots: int) -> TaskDictionary:
        """What build_dictionary(shots `keep`, task_shots) returns, the normal energies included: shot j of
        `keep` coded over the others of `keep`."""
        with torch.no_grad():
            columns = torch.cat([torch.arange(j * self.positions, (j + 1) * self.positions) for j in keep])
            atoms = self.atoms[:, columns.to(self.atoms.device)]  # (m, |keep|·h'w')
            dictionary = TaskDictionary(atoms=atoms, scale=spectral_norm(atoms), shots=len(keep), center=None)
            if self.model.standardises(task_shots) and len(keep) >= 2:
                loo = []
                for j in keep:
                    rows = slice(j * self.positions, (j + 1) * self.positions)
                    own = (self.shot_top[0][rows], self.shot_top[1][rows])
                    others = [o for o in keep if o != j]
                    loo.append(self.energies(self.shot_signals[rows], own, others).reshape(self.size))  # (h', w')
                dictionary.normal_mean, dictionary.normal_scale = normal_statistics(torch.stack(loo))
        return dictionary

    def signals(self, features: torch.Tensor) -> torch.Tensor:
        """Ψ's features of images (B, d, h', w') -> prepared signals (B·h'w', m)."""
        volumes = self.model.prepare(unfold_volumes(features, self.spec.receptive_field), None)  # (B, h'w', m)
        return volumes.reshape(-1, volumes.shape[-1])

    def score(self, signals: torch.Tensor, top: tuple[torch.Tensor, torch.Tensor], keep: list[int],
              dictionary: TaskDictionary, image_size: tuple[int, int], smooth_sigma: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """score_and_map (mode "energy") of B images, given as prepared signals (B·h'w', m) and their per-shot
        lists, over `dictionary` = self.dictionary(keep, ·) -> energies (B,), maps (B, H, W)."""
        with torch.no_grad():
            position = self.energies(signals, top, keep).reshape(-1, *self.size)  # (B, h', w')
        return self.model.energy_map(position, dictionary, image_size, smooth_sigma)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding."""
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)  # (B, 1, H, W)
    pad_h = min(radius, x.shape[2] - 1)
    pad_w = min(radius, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    # A map smaller than the kernel gets a cut kernel, renormalised so constants stay constant.
    kernel_w = kernel[radius - pad_w : radius + pad_w + 1]
    kernel_h = kernel[radius - pad_h : radius + pad_h + 1]
    x = F.conv2d(x, (kernel_w / kernel_w.sum()).view(1, 1, 1, -1))  # (B, 1, H, W)
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    x = F.conv2d(x, (kernel_h / kernel_h.sum()).view(1, 1, -1, 1))  # (B, 1, H, W)
    return x.squeeze(1)
