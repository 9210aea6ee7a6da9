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
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise InputError(
            f"nearest_distances: queries {tuple(queries.shape)} and bank {tuple(bank.shape)}: expected (n, m) and (N, m)"
        )
    if bank.shape[0] < 1:
        raise InputError("nearest_distances: the memory bank is empty")
    if max_chunk_bytes < 1:
        raise InputError(f"nearest_distances: max_chunk_bytes={max_chunk_bytes}: expected >= 1")
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

    @torch.no_grad()
    def score(self, images: torch.Tensor, bank: torch.Tensor,
              features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, C, H, W), bank (N, m) -> scores (B,) = max position distance, maps (B, H, W);
        features: Ψ(images) when the caller has them (`features`)."""
        volumes, (h, w) = self._signals(images, "query", features)  # (B, h'w', m)
        B, P, m = volumes.shape
        if bank.dim() != 2 or bank.shape[1] != m:
            raise InputError(f"memory bank of shape {tuple(bank.shape)}: expected (N, {m}) for these features")
        flat = volumes.reshape(B * P, m)  # (B·h'w', m)
        dist = nearest_distances(flat, bank, self.max_chunk_bytes).reshape(B, h, w)  # (B, h', w')
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
