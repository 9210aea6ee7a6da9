"""knn: the kNN baseline (PatchCore without coreset subsampling) on the features Ψ of a trained model.

Adaptation stores every feature position of the K support images as one row of a memory bank; a
query position scores its Euclidean distance to the nearest bank row, an image scores its largest
position distance (PatchCore's image score). Features are the same receptive-field volumes the EBM
codes (`model.ebm.sparse.feature_volumes`), scaled to unit ℓ2 norm as in the EBM, so distances lie in
[0, 2] and the two methods compare on equal features.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.ebm.backbone import check_precomputed
from model.ebm.energy import gaussian_blur
from model.errors import InputError
from model.methods.base import Method, ScoringOptions
from model.ebm.sparse import feature_volumes

# upper bound on one distance block; blocks that stay near the cache run ~2x faster on CPU than 256 MiB ones
DEFAULT_CHUNK_BYTES = 16 * 2**20


def _check_search(name: str, queries: torch.Tensor, bank: torch.Tensor, max_chunk_bytes: int) -> None:
    """InputError naming `name` unless queries (n, m) and bank (N >= 1, m) match and max_chunk_bytes >= 1."""
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise InputError(
            f"{name}: queries {tuple(queries.shape)} and bank {tuple(bank.shape)}: expected (n, m) and (N, m)"
        )
    if bank.shape[0] < 1:
        raise InputError(f"{name}: the memory bank is empty")
    if max_chunk_bytes < 1:
        raise InputError(f"{name}: max_chunk_bytes={max_chunk_bytes}: expected >= 1")


def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Euclidean distance from every query row to its nearest bank row: queries (n, m), bank (N, m) -> (n,).

    Distances are computed in blocks of at most `max_chunk_bytes` (query chunks × bank chunks with a
    running minimum), so the working memory stays bounded for any n; beside it sits one transposed copy of the
    bank (N·m values: a contiguous (m, N) operand, measured faster than the transposed view). The neighbour is
    the row minimising ‖b‖² − 2q·b (‖q − b‖² less the query's own ‖q‖²): one matmul per block, no square root.
    That form loses precision near 0 (the terms cancel), so the winning distance is recomputed exactly from the
    difference vector: a query equal to a bank row gets exactly 0.
    """
    _check_search("nearest_distances", queries, bank, max_chunk_bytes)
    bank = bank.to(device=queries.device, dtype=queries.dtype)
    bank_sq = bank.pow(2).sum(1)  # (N,)
    bank_t = bank.transpose(0, 1).contiguous()  # (m, N)
    n, N = queries.shape[0], bank.shape[0]
    max_elems = max(1, max_chunk_bytes // queries.element_size())
    bank_rows = min(N, max_elems)  # a whole bank per block when it fits the budget
    query_rows = max(1, max_elems // bank_rows)
    out = queries.new_empty(n)
    for q0 in range(0, n, query_rows):
        q = queries[q0 : q0 + query_rows]  # (rq, m)
        best = torch.full((q.shape[0],), math.inf, dtype=q.dtype, device=q.device)  # (rq,)
        best_idx = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # (rq,)
        for b0 in range(0, N, bank_rows):
            columns = slice(b0, b0 + bank_rows)
            block = torch.addmm(bank_sq[columns], q, bank_t[:, columns], alpha=-2)  # (rq, rb): ‖b‖² − 2q·b
            value, idx = block.min(dim=1)  # (rq,), (rq,)
            better = value < best
            best = torch.where(better, value, best)
            best_idx = torch.where(better, idx + b0, best_idx)
        out[q0 : q0 + q.shape[0]] = (q - bank[best_idx]).norm(dim=1)  # exact distance, (rq,)
    return out


# A bank row whose norm differs from 1 by more than this is not a unit row (a zero volume stays zero when normalised)
UNIT_NORM_TOLERANCE = 1e-4
# more rows than this off the unit sphere and nearest_among searches the whole bank instead
MAX_OFF_UNIT_ROWS = 64


def nearest_among(queries: torch.Tensor, bank: torch.Tensor, candidates: torch.Tensor,
                  max_chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> torch.Tensor:
    """Euclidean distance from every query row to its nearest bank row, searched among its candidate rows only:
    queries (n, m), bank (N, m), candidates (n, c) row indices -> (n,).

    `nearest_distances` without its search over all N rows, for unit-norm bank rows and candidates that hold each
    query's most similar rows (largest inner product), as ours' top-k atoms do for the same volumes and shots: then
    ‖q − b‖² = ‖q‖² + 1 − 2q·b, so the most similar row is the nearest and the exact distances to the c candidates
    find it even where rounding ordered near-ties differently. Rows off the unit sphere (a zero volume normalises to
    zero) break that equivalence, so they are every query's candidates too; beyond MAX_OFF_UNIT_ROWS of them the
    whole bank is searched."""
    _check_search("nearest_among", queries, bank, max_chunk_bytes)
    if (candidates.dim() != 2 or candidates.shape[0] != queries.shape[0] or candidates.shape[1] < 1
            or candidates.is_floating_point() or candidates.is_complex()):
        raise InputError(f"nearest_among: candidates {tuple(candidates.shape)} {candidates.dtype}: expected integer "
                         f"row indices of shape ({queries.shape[0]}, c >= 1)")
    if candidates.numel() and (int(candidates.min()) < 0 or int(candidates.max()) >= bank.shape[0]):
        raise InputError(f"nearest_among: candidate rows span {int(candidates.min())}..{int(candidates.max())}: "
                         f"expected indices into a bank of {bank.shape[0]} rows")
    bank = bank.to(device=queries.device, dtype=queries.dtype)
    off_unit = torch.nonzero((bank.norm(dim=1) - 1).abs() > UNIT_NORM_TOLERANCE).flatten()  # (I,)
    if off_unit.numel() > MAX_OFF_UNIT_ROWS:
        return nearest_distances(queries, bank, max_chunk_bytes)
    extra = bank[off_unit]  # (I, m)
    candidates = candidates.to(queries.device).long()
    per_query = (candidates.shape[1] + extra.shape[0]) * queries.shape[1] * queries.element_size()
    rows = max(1, max_chunk_bytes // per_query)
    out = queries.new_empty(queries.shape[0])
    for q0 in range(0, queries.shape[0], rows):
        q = queries[q0 : q0 + rows]  # (r, m)
        best = (q.unsqueeze(1) - bank[candidates[q0 : q0 + rows]]).norm(dim=2).amin(1)  # (r, c, m) -> (r,)
        if extra.shape[0]:
            best = torch.minimum(best, (q.unsqueeze(1) - extra.unsqueeze(0)).norm(dim=2).amin(1))  # (r, I, m) -> (r,)
        out[q0 : q0 + q.shape[0]] = best
    return out


class KnnScorer:
    """Memory-bank kNN anomaly scorer on a (frozen) backbone Ψ: (B, 3, H, W) -> (B, d, h', w')."""

    def __init__(self, backbone: nn.Module, receptive_field: int = 1, smooth_sigma: float = 0.0,
                 max_chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if int(receptive_field) != receptive_field or receptive_field < 1 or receptive_field % 2 == 0:
            raise InputError(f"knn.receptive_field={receptive_field}: expected an odd integer >= 1")
        if not math.isfinite(smooth_sigma) or smooth_sigma < 0:
            raise InputError(f"knn.smooth_sigma={smooth_sigma}: expected a finite value >= 0")
        self.backbone = backbone
        self.receptive_field = int(receptive_field)
        self.smooth_sigma = float(smooth_sigma)
        self.max_chunk_bytes = int(max_chunk_bytes)

    def _signals(self, images: torch.Tensor, what: str,
                 features: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """images (B, C, H, W) -> unit-norm volumes (B, h'·w', m) and (h', w'); features: Ψ(images) if known."""
        if images.dim() != 4 or images.shape[0] < 1:
            raise InputError(f"{what} batch of shape {tuple(images.shape)}: expected (B >= 1, C, H, W)")
        if features is None:
            features = self.backbone(images)  # (B, d, h', w')
        else:
            check_precomputed(features, images)
        volumes = feature_volumes(features, self.receptive_field)  # (B, h'w', m), m = d·l²
        return F.normalize(volumes, dim=-1, eps=1e-6), (features.shape[2], features.shape[3])

    @torch.no_grad()
    def adapt(self, support: torch.Tensor) -> torch.Tensor:
        """support (K, C, H, W) -> memory bank (K·h'·w', m), one unit-norm row per support position."""
        volumes, _ = self._signals(support, "support")  # (K, h'w', m)
        return volumes.reshape(-1, volumes.shape[-1])  # (K·h'w', m)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What score() computes from the images alone, Ψ(images) (B, d, h', w'), for a caller that scores one
        test set under several support draws."""
        return self.backbone(images)

    def unit_volume_field(self) -> int:
        """The receptive field of the unit-norm volumes the memory bank holds (see model.methods.base.Scorer)."""
        return self.receptive_field

    @torch.no_grad()
    def score(self, images: torch.Tensor, bank: torch.Tensor, features: torch.Tensor | None = None,
              candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), bank (N, m) -> scores (B,) = max position distance, maps (B, H, W);
        features: Ψ(images) when the caller has them (`features`); candidates (B, h'·w', c): each position's most
        similar bank rows, found by a scorer that coded the same volumes over the same shots (`nearest_among`),
        instead of searching the whole bank."""
        volumes, (h, w) = self._signals(images, "query", features)  # (B, h'w', m)
        B, P, m = volumes.shape
        if bank.dim() != 2 or bank.shape[1] != m:
            raise InputError(f"memory bank of shape {tuple(bank.shape)}: expected (N, {m}) for these features")
        flat = volumes.reshape(B * P, m)  # (B·h'w', m)
        if candidates is None:
            dist = nearest_distances(flat, bank, self.max_chunk_bytes)  # (B·h'w',)
        else:
            if candidates.dim() != 3 or tuple(candidates.shape[:2]) != (B, P):
                raise InputError(f"candidates of shape {tuple(candidates.shape)}: expected ({B}, {P}, c) for these images")
            dist = nearest_among(flat, bank, candidates.reshape(B * P, -1), self.max_chunk_bytes)  # (B·h'w',)
        dist = dist.reshape(B, h, w)  # (B, h', w')
        scores = dist.flatten(1).amax(1)  # (B,)
        maps = F.interpolate(
            dist.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False
        ).squeeze(1)  # (B, 1, H, W) -> (B, H, W)
        if self.smooth_sigma > 0:
            maps = gaussian_blur(maps, self.smooth_sigma)
        return scores, maps


def build(network: nn.Module, options: ScoringOptions) -> KnnScorer:
    """kNN on the features Ψ of an `ours` model (its backbone)."""
    return KnnScorer(network.backbone, receptive_field=1, smooth_sigma=options.smooth_sigma)


METHOD = Method(name="knn", label="kNN", model="ours", model_use="uses the backbone of an `ours` model",
                baseline=False, untrained=False, build=build)
