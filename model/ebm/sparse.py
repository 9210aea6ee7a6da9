"""Adaptive sparse coding: shrink functions, ISTC with continuation (Eq. 6), receptive-field volumes.

Convention: signals are rows. A batch of feature vectors is Z (n, m); the dictionary is D (m, A) with one
atom per column; codes are α (n, A); the reconstruction is α Dᵀ (n, m).

Convergence of Eq. 6. Eq. 6 takes a unit gradient step, which is ISTA's step 1/L with L = ‖D‖₂², so it
converges only when ‖D‖₂ ≤ 1. A dictionary of K·h'·w' correlated atoms has ‖D‖₂ ≫ 1, so we run Eq. 6
on D̃ = D / ‖D‖₂ (spectral norm exactly 1) with thresholds λ_n / ‖D‖₂ and SigShrink smoothness
τ·‖D‖₂. Because shrinkage is positively homogeneous, this is ISTA with step 1/‖D‖₂² on the original D, so
λ keeps the units of Eq. 5: with unit-norm atoms and signals, λ is a cosine similarity, and an atom
enters the code only once its correlation with the residual exceeds λ. Each step therefore decreases the
Eq. 5 objective (tested), and λ means the same thing for any shot count K.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.errors import InputError

SHRINKS = ("sigshrink", "hard", "none")
SOLVERS = ("istc", "fista")  # the paper's Eq. 6 with continuation | FISTA solved to a tolerance


# ----------------------------------------------------------------------------------------------
# Shrink functions σ(z, λ)


def hard_shrink(z: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Eq. 7: sgn(z)·ReLU(|z| − λ). (The paper calls this ReLU-like shrink "hard"; it is the
    soft-threshold proximal operator of λ‖·‖₁, zero gradient wherever |z| < λ.)"""
    return torch.sign(z) * F.relu(z.abs() - lam)


def sig_shrink(z: torch.Tensor, lam: float | torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Eq. 9: z / (1 + exp(−τ(|z| − λ))) = z·sigmoid(τ(|z| − λ)). Derivative
    s + τ|z|·s(1 − s) with s = sigmoid(·) is > 0 everywhere: no dead gradients."""
    return z * torch.sigmoid(tau * (z.abs() - lam))


def no_shrink(z: torch.Tensor, lam: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The no-sparsity ablation (Table 4): Eq. 6 without σ, i.e. plain gradient steps on ‖z − Dα‖²."""
    return z


def shrink(z: torch.Tensor, lam, kind: str, tau: float | torch.Tensor = 1.0) -> torch.Tensor:
    if kind == "sigshrink":
        return sig_shrink(z, lam, tau)
    if kind == "hard":
        return hard_shrink(z, lam)
    if kind == "none":
        return no_shrink(z, lam)
    raise InputError(f"model.shrink={kind!r}: expected one of {SHRINKS}")


# ----------------------------------------------------------------------------------------------
# Continuation schedule and ISTC


def continuation_schedule(lam_max: float, lam_star: float, n_steps: int) -> torch.Tensor:
    """λ_n = λ_max · (λ_max/λ*)^(−n/N) for n = 1..N (Eq. 6): a geometric descent whose last step uses
    exactly λ*. Returns (N,) float64 so tests can compare to numpy to the last bit."""
    validate_sparsity(lam_max, lam_star, n_steps)
    return geometric_schedule(lam_max, lam_star, n_steps)


def geometric_schedule(lam_max: float, lam_star: float, n_steps: int) -> torch.Tensor:
    """`continuation_schedule` without its checks, for the forward pass (a built SparseSpec made them)."""
    n = torch.arange(1, n_steps + 1, dtype=torch.float64)
    return lam_max * (lam_max / lam_star) ** (-n / n_steps)


def validate_sparsity(lam_max: float, lam_star: float, n_steps: int, tau: float = 1.0) -> None:
    for name, value in (("lam_max", lam_max), ("lam_star", lam_star), ("tau", tau)):
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"model.{name}={value}: expected a finite value > 0")
    if lam_star > lam_max:
        raise InputError(f"model.lam_star={lam_star} > model.lam_max={lam_max}: expected lam_star <= lam_max")
    if not isinstance(n_steps, (int, float)) or not math.isfinite(n_steps) or int(n_steps) != n_steps or n_steps < 1:
        raise InputError(f"model.istc_steps={n_steps}: expected an integer >= 1")


def spectral_norm(atoms: torch.Tensor) -> torch.Tensor:
    """‖D‖₂ for D (m, A): sqrt of the top eigenvalue of D Dᵀ (m, m), cheap because m ≪ A.
    Differentiable (the top eigenvalue of a symmetric matrix)."""
    gram = atoms @ atoms.transpose(0, 1)  # (m, m)
    top = torch.linalg.eigvalsh(gram.double())[-1].to(atoms.dtype)
    return top.clamp_min(1e-12).sqrt()


def istc(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    lambdas: torch.Tensor,
    kind: str = "sigshrink",
    tau: float = 1.0,
) -> torch.Tensor:
    """Eq. 6, literally: α₀ = 0, α_{n+1} = σ(α_n + Dᵀ(z − Dα_n), λ_n).

    signals (n, m); atoms D (m, A), assumed ‖D‖₂ ≤ 1 (see `sparse_code` for the normalisation);
    lambdas (N,) thresholds in the units of α. Returns codes α (n, A).
    """
    lambdas = lambdas.to(device=signals.device, dtype=signals.dtype)
    codes = signals.new_zeros(signals.shape[0], atoms.shape[1])  # (n, A)
    for lam in lambdas:
        residual = signals - codes @ atoms.transpose(0, 1)  # (n, m)
        codes = shrink(codes + residual @ atoms, lam, kind, tau)  # (n, A)
    return codes


def sparse_code(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    lam_max: float,
    lam_star: float,
    n_steps: int,
    kind: str = "sigshrink",
    tau: float = 1.0,
    atom_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sparse reconstruction z' = D S(z; D) with the convergence-safe normalisation (module doc).

    signals (n, m); atoms (m, A) raw; atom_scale = ‖D‖₂ if precomputed. Returns z' (n, m).
    """
    scale = spectral_norm(atoms) if atom_scale is None else atom_scale
    unit_atoms = atoms / scale  # (m, A), ‖·‖₂ = 1
    lambdas = geometric_schedule(lam_max, lam_star, n_steps).to(signals) / scale
    codes = istc(signals, unit_atoms, lambdas, kind, tau * scale)  # (n, A)
    return codes @ unit_atoms.transpose(0, 1)  # (n, m)


def _shrink_step(z: torch.Tensor, lam: torch.Tensor, kind: str, tau: float, lipschitz: torch.Tensor) -> torch.Tensor:
    """The proximal step of FISTA at step 1/L: σ(z, λ/L) with SigShrink's smoothness τ·L, so that τ keeps
    its cosine units (τ(|Lz| − λ) is the same argument as in Eq. 9 on the unit-step problem)."""
    if kind == "sigshrink":
        return sig_shrink(z, lam / lipschitz, tau * lipschitz)
    return shrink(z, lam / lipschitz, kind, tau)


def fista(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    lam: float,
    max_steps: int,
    kind: str = "hard",
    tau: float = 20.0,
    tol: float = 1e-4,
) -> torch.Tensor:
    """Eq. 5 solved by FISTA (Beck & Teboulle 2009) with step 1/L, L = ‖D‖₂² per problem.

    signals (n, m); atoms (n, m, k) one local dictionary per signal (k atoms as columns), or (m, A) one
    dictionary shared by all. Returns codes α (n, k) or (n, A). See `fista_solve` for the iteration.
    """
    if atoms.dim() == 3:
        gram = atoms.transpose(1, 2) @ atoms  # (n, k, k)
        corr = (signals.unsqueeze(1) @ atoms).squeeze(1)  # (n, k) Dᵀz
        return fista_solve(gram, corr, lam, max_steps, kind, tau, tol)
    corr = signals @ atoms  # (n, A)
    lipschitz = spectral_norm(atoms.detach()).pow(2).reshape(1, 1)  # (1, 1)
    # matrix-free DᵀDα: the (A, A) Gram of a large dictionary need not exist
    return fista_solve(lambda codes: (codes @ atoms.transpose(0, 1)) @ atoms, corr, lam, max_steps, kind, tau,
                       tol, lipschitz)


def fista_solve(gram, corr: torch.Tensor, lam: float, max_steps: int, kind: str = "hard", tau: float = 20.0,
                tol: float = 1e-4, lipschitz: torch.Tensor | None = None) -> torch.Tensor:
    """FISTA on ½αᵀGα − αᵀc + λ‖α‖₁ (Eq. 5 up to the constant ½‖z‖²), G = DᵀD, c = Dᵀz.

    gram: (n, k, k) one small Gram per problem, or a function codes -> G·codes; corr c (n, k). lipschitz
    (n, 1) or (1, 1): ‖D‖₂² (the top eigenvalue of each small Gram when not given). Iterates each problem
    until its largest code change is below `tol` (only when no gradient is being recorded: an unrolled,
    differentiable solve runs all `max_steps`) or `max_steps` is reached. With kind "hard" (Eq. 7, the
    soft threshold) this is the exact Lasso solver; "sigshrink" uses Eq. 9 as the proximal map; "none" is
    plain accelerated gradient descent. Returns codes α (n, k).

    The tolerance is tested per problem: a problem whose code moved by at most `tol` keeps that code while
    the others iterate on, so each problem's solution is the same whether it is solved alone or in a batch
    of any size (a test over the whole batch made it depend on its batch-mates), and batches can be large,
    which on CPU costs about a third of as many small batches (k = 16: per-operation overhead dominates).
    """
    if callable(gram):
        apply_gram = gram
    else:
        def apply_gram(codes):  # (n, k, k) @ (n, k, 1) -> (n, k)
            return (gram @ codes.unsqueeze(2)).squeeze(2)

        if lipschitz is None:  # no gradient needed for a step size
            lipschitz = gram_norm_bound(gram.detach()).unsqueeze(1)  # (n, 1)
    lam_t = torch.as_tensor(lam, dtype=corr.dtype, device=corr.device)
    codes = corr.new_zeros(corr.shape)  # α₀ = 0
    momentum_point, t = codes, 1.0
    track = not torch.is_grad_enabled() or not corr.requires_grad
    moving = torch.ones(corr.shape[0], 1, dtype=torch.bool, device=corr.device)  # (n, 1) problems still iterating
    for _ in range(max_steps):
        step = momentum_point - (apply_gram(momentum_point) - corr) / lipschitz
        new = _shrink_step(step, lam_t, kind, tau, lipschitz)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        new_momentum = new + ((t - 1.0) / t_next) * (new - codes)
        t = t_next
        if not track:  # an unrolled, differentiable solve: every problem runs all max_steps
            codes, momentum_point = new, new_momentum
            continue
        still = (new - codes).abs().amax(1, keepdim=True) > tol  # (n, 1): moved more than tol this step
        # a problem that stopped keeps its code: the step it stopped at was its last
        codes = torch.where(moving, new, codes)
        momentum_point = torch.where(moving, new_momentum, momentum_point)
        moving = moving & still
        if not bool(moving.any()):
            break
    return codes


def gram_norm_bound(gram: torch.Tensor) -> torch.Tensor:
    """An upper bound on ‖G‖₂ (the top eigenvalue) of symmetric Grams (n, k, k) -> (n,): the smaller of the
    Frobenius norm and Gershgorin's largest absolute row sum, both ≥ ‖G‖₂, so the step 1/L stays safe.

    For a signal's k nearest atoms (strongly correlated) the spectrum is dominated by one eigenvalue and
    the bound is within a few per cent of it (median 1.002× on real features), at a tenth of the cost
    of a batched eigendecomposition, which took a quarter of the scoring time.
    """
    frobenius = gram.pow(2).sum((1, 2)).sqrt()  # (n,)
    gershgorin = gram.abs().sum(2).amax(1)  # (n,)
    return torch.minimum(frobenius, gershgorin).clamp_min(1e-6)


# Column block of the exact two-stage top-k below: on 2 CPU cores it halves torch.topk's time over 10 240 atoms.
TOPK_BLOCK = 64


def top_similar(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """similarity (r, A) -> (values, columns) of each row's k largest entries, (r, k) each, largest first:
    what similarity.topk(k, dim=1) returns, found in two stages.

    The A columns are cut into blocks of TOPK_BLOCK (the remainder stays a candidate). A block holding one
    of a row's k largest entries has a maximum at least as large as that entry, and at most k blocks have a
    maximum above the row's k-th largest entry, so the k blocks with the largest maxima hold all of them;
    topk then runs over those k·TOPK_BLOCK candidates instead of A. Equal entries may be picked in another
    order than topk's (which does not specify one either). Values are gathered from `similarity`, so they
    carry its gradient as topk's do."""
    r, A = similarity.shape
    blocks = A // TOPK_BLOCK
    if blocks <= k:  # nothing to skip
        return similarity.topk(k, dim=1)
    width = blocks * TOPK_BLOCK
    with torch.no_grad():
        head = similarity[:, :width].reshape(r, blocks, TOPK_BLOCK)  # (r, G, B): blocks of columns
        chosen = head.amax(2).topk(k, dim=1).indices  # (r, k): the blocks with the largest maxima
        candidates = head.gather(1, chosen.unsqueeze(2).expand(r, k, TOPK_BLOCK)).reshape(r, k * TOPK_BLOCK)
        columns = (chosen.unsqueeze(2) * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=similarity.device)
                   ).reshape(r, k * TOPK_BLOCK)  # (r, k·B): each candidate's column
        if width < A:  # the last A - width columns are candidates as they are
            candidates = torch.cat([candidates, similarity[:, width:]], dim=1)  # (r, k·B + A - width)
            tail = torch.arange(width, A, device=similarity.device).expand(r, A - width)
            columns = torch.cat([columns, tail], dim=1)
        index = columns.gather(1, candidates.topk(k, dim=1).indices)  # (r, k), largest first
    return similarity.gather(1, index), index


def chunk_rows(signals: torch.Tensor, atoms: torch.Tensor, chunk_bytes: int) -> int:
    """Signals per chunk so that one (rows × A) similarity block stays under chunk_bytes."""
    return max(1, chunk_bytes // max(1, atoms.shape[1] * signals.element_size()))


def fista_energy(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    lam: float,
    max_steps: int,
    kind: str = "hard",
    tau: float = 20.0,
    top_k: int = 16,
    tol: float = 1e-4,
    chunk_bytes: int = 16 * 2**20,  # similarity blocks that stay near the cache: ~1.5x faster than 128 MiB on CPU
    return_atoms: int = 0,
    solve_bytes: int = 16 * 2**20,  # the (g, k, m) local atoms of one FISTA group: 16 MiB beat 4 and 64 on CPU
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8's residual ‖z − Dα*‖² per signal, α* the FISTA solution over each signal's top_k atoms.

    signals (n, m), atoms (m, A) -> (n,). With c = Dₖᵀz (the top_k similarities themselves) and the local
    Gram Gₖ = Dₖᵀ Dₖ, ‖z − Dₖα‖² = ‖z‖² − 2αᵀc + αᵀGₖα. Gₖ is built from each signal's k gathered atoms
    (g·k·m values per FISTA group of g signals, at most solve_bytes) rather than gathered from a task Gram:
    that keeps adaptation to the backbone pass (the full Gram of K = 10 shots at 128 px has 10 240² entries,
    400 MB). The search runs in chunks of chunk_bytes, FISTA over groups of whole chunks; neither changes a
    signal's energy (each signal's top-k and its FISTA stopping test are its own).
    Differentiable in signals and atoms (through the similarities and the Gram); the choice of the k atoms
    is not (a selection).

    return_atoms > 0 (as torch's return_indices): returns (energies (n,), columns (n, min(return_atoms, k)) of each
    signal's most similar atoms, most similar first). For unit-norm signals and atoms the first is the nearest
    atom, so kNN on the same volumes can take its neighbour from them instead of searching all A atoms again
    (`model.methods.knn.nearest_among`).
    """
    if top_k < 1:
        raise InputError(f"fista_energy needs top_k >= 1, got {top_k}; use fista_code for the full dictionary")
    k = min(top_k, atoms.shape[1])
    rows = chunk_rows(signals, atoms, chunk_bytes)
    # FISTA runs over groups of whole search chunks: its k×k steps cost per operation, not per problem
    group = rows * max(1, solve_bytes // max(1, rows * k * atoms.shape[0] * signals.element_size()))
    atom_rows = atoms.transpose(0, 1).contiguous()  # (A, m): gathering rows of it is ~20x faster than of atoms.T
    energies, columns = [], []
    for signal_group in signals.split(group):
        found = [top_similar(chunk @ atoms, k) for chunk in signal_group.split(rows)]  # (r, k) Dₖᵀz and columns
        corr, index = torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])  # (g, k) each
        energies.append(local_energy(signal_group, atom_rows.transpose(0, 1), corr, index, lam, max_steps, kind,
                                     tau, tol))
        if return_atoms > 0:
            columns.append(index[:, :return_atoms])  # (g, min(return_atoms, k))
    return (torch.cat(energies), torch.cat(columns)) if return_atoms > 0 else torch.cat(energies)


def local_energy(signals: torch.Tensor, atoms: torch.Tensor, corr: torch.Tensor, index: torch.Tensor, lam: float,
                 max_steps: int, kind: str = "hard", tau: float = 20.0, tol: float = 1e-4) -> torch.Tensor:
    """`fista_energy` once each signal's atoms are chosen: signals (r, m), atoms (m, A), their similarities
    corr (r, k) = Dₖᵀz to the atoms of columns index (r, k) -> ‖z − Dₖα*‖² (r,). One FISTA run over all r
    signals, each stopping on its own tolerance."""
    atom_rows = atoms.transpose(0, 1)  # (A, m)
    if not atom_rows.is_contiguous():  # gathering rows of a strided view is slow: copy it once
        atom_rows = atom_rows.contiguous()
    local = atom_rows.index_select(0, index.reshape(-1)).view(*index.shape, -1)  # (r·k, m) -> (r, k, m): k atoms each
    local_gram = local @ local.transpose(1, 2)  # (r, k, k)
    codes = fista_solve(local_gram, corr, lam, max_steps, kind, tau, tol)  # (r, k)
    quad = (codes.unsqueeze(1) @ local_gram @ codes.unsqueeze(2)).reshape(-1)  # (r,) αᵀGα
    energy = signals.pow(2).sum(1) - 2 * (codes * corr).sum(1) + quad  # (r,)
    return energy.clamp_min(0.0)  # rounding can dip below 0 for an exact fit


def top_per_shot(signals: torch.Tensor, atoms: torch.Tensor, shots: int, k: int,
                 chunk_bytes: int = 16 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest similarities of every signal to the atoms of each shot separately: signals (n, m), atoms
    (m, K·P) shot-major (P atoms per shot) -> values (n, K, k) largest first and their columns in `atoms`
    (n, K, k). `merge_top` then gives the top k over any subset of the shots without another product."""
    A = atoms.shape[1]
    if A % shots:
        raise InputError(f"{A} atoms do not split into {shots} shots of equal size")
    per_shot = A // shots
    k = min(k, per_shot)
    offsets = (torch.arange(shots, device=atoms.device) * per_shot).view(1, shots, 1)  # (1, K, 1)
    values, columns = [], []
    with torch.no_grad():
        for chunk in signals.split(chunk_rows(signals, atoms, chunk_bytes)):
            found = (chunk @ atoms).view(chunk.shape[0], shots, per_shot).topk(k, dim=2)  # (r, K, k) each
            values.append(found.values)
            columns.append(found.indices + offsets)
    return torch.cat(values), torch.cat(columns)


def merge_top(values: torch.Tensor, columns: torch.Tensor, keep: list[int],
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_per_shot`'s lists (n, K, k') restricted to the shots `keep` -> the k largest similarities over those
    shots' atoms and their columns, (n, k) each, largest first: what top_similar returns for the product with
    the kept shots' atoms (any of the k largest over a union is among the k largest of its own shot)."""
    keep_index = torch.as_tensor(keep, device=values.device)
    kept_values = values.index_select(1, keep_index).flatten(1)  # (n, |keep|·k')
    kept_columns = columns.index_select(1, keep_index).flatten(1)  # (n, |keep|·k')
    top = kept_values.topk(min(k, kept_values.shape[1]), dim=1)  # (n, k)
    return top.values, kept_columns.gather(1, top.indices)


def local_atoms(signals: torch.Tensor, atoms: torch.Tensor, top_k: int) -> torch.Tensor:
    """The top_k atoms most similar (largest inner product) to every signal: signals (n, m), atoms (m, A)
    -> local dictionaries (n, m, top_k). With unit-norm signals and atoms this is the k nearest atoms."""
    with torch.no_grad():
        index = top_similar(signals @ atoms, min(top_k, atoms.shape[1]))[1]  # (n, k)
    return atoms.transpose(0, 1)[index].transpose(1, 2)  # (n, k, m) -> (n, m, k)


def fista_code(
    signals: torch.Tensor,
    atoms: torch.Tensor,
    lam: float,
    max_steps: int,
    kind: str = "hard",
    tau: float = 20.0,
    top_k: int = 0,
    tol: float = 1e-4,
    chunk_bytes: int = 128 * 2**20,
) -> torch.Tensor:
    """Sparse reconstruction z' = D α* with α* the FISTA solution of Eq. 5; signals (n, m), atoms (m, A).

    top_k > 0 codes every signal over its top_k most similar atoms only: one similarity product (as kNN's),
    then k² per step whatever the dictionary size, and the local problem is well conditioned (L ≤ k for unit
    atoms) so a few dozen steps reach the tolerance. top_k = 0 uses all atoms. (This reference path builds
    the (n, m, k) local dictionaries; the model uses `fista_energy`, which does not.)
    Signals are processed in chunks so the (rows × A) similarity block stays under `chunk_bytes`.
    """
    rows = chunk_rows(signals, atoms, chunk_bytes)
    out = []
    for chunk in signals.split(rows):
        if top_k > 0:
            dictionaries = local_atoms(chunk, atoms, top_k)  # (r, m, k)
            codes = fista(chunk, dictionaries, lam, max_steps, kind, tau, tol)  # (r, k)
            out.append((dictionaries @ codes.unsqueeze(2)).squeeze(2))  # (r, m)
        else:
            codes = fista(chunk, atoms, lam, max_steps, kind, tau, tol)  # (r, A)
            out.append(codes @ atoms.transpose(0, 1))  # (r, m)
    return torch.cat(out)


def lasso_objective(signals: torch.Tensor, atoms: torch.Tensor, codes: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 5 per signal: ½‖z − Dα‖² + λ‖α‖₁ -> (n,)."""
    residual = signals - codes @ atoms.transpose(0, 1)  # (n, m)
    return 0.5 * residual.pow(2).sum(1) + lam * codes.abs().sum(1)


# ----------------------------------------------------------------------------------------------
# Receptive field (Section 3.1.1)


def feature_volumes(features: torch.Tensor, receptive_field: int) -> torch.Tensor:
    """Flatten the d×l×l volume centred on every feature position into one signal (Im2Col).

    features (B, d, h, w) -> volumes (B, h·w, d·l²); zero padding of l//2 keeps h·w positions.
    l = 1 returns the plain feature vectors, (B, h·w, d).
    """
    if receptive_field < 1 or receptive_field % 2 == 0:
        raise InputError(f"model.receptive_field={receptive_field}: expected an odd integer >= 1")
    return unfold_volumes(features, receptive_field)


def unfold_volumes(features: torch.Tensor, receptive_field: int) -> torch.Tensor:
    """`feature_volumes` without its check, for the forward pass (a built SparseSpec made it)."""
    B, d, h, w = features.shape
    if receptive_field == 1:
        return features.flatten(2).transpose(1, 2)  # (B, h·w, d)
    cols = F.unfold(features, receptive_field, padding=receptive_field // 2)  # (B, d·l², h·w)
    return cols.transpose(1, 2)  # (B, h·w, d·l²)


@dataclass
class TaskDictionary:
    """D for one task: unit-norm atoms from the K support images and its spectral norm."""

    atoms: torch.Tensor  # (m, K·h'·w'), m = d·l²
    scale: torch.Tensor  # () ‖atoms‖₂
    shots: int
    center: torch.Tensor | None = None  # (m,) mean support volume subtracted from signals, or None
    # What the shots' own positions score against the other shots (AdaptiveEBM.build_dictionary): the
    # image score standardises position energies by them; None = raw energies (training, K = 1).
    normal_mean: torch.Tensor | None = None  # (h', w')
    normal_scale: torch.Tensor | None = None  # (h', w'), > 0
    whiten: torch.Tensor | None = None  # (m, m) the shots' whitening matrix, applied to signals before normalising
    exposure: torch.Tensor | None = None  # (C,) the shots' mean intensity per channel, given to every image

    def _map(self, fn) -> "TaskDictionary":
        keep = lambda t: None if t is None else fn(t)  # noqa: E731
        return TaskDictionary(fn(self.atoms), fn(self.scale), self.shots, keep(self.center), keep(self.normal_mean),
                              keep(self.normal_scale), keep(self.whiten), keep(self.exposure))

    def to(self, device) -> "TaskDictionary":
        return self._map(lambda t: t.to(device))

    def detach(self) -> "TaskDictionary":
        return self._map(lambda t: t.detach())
