"""Probe (docs/benchmarks.md, "The noise_init ablation fixed and added to the quick profile"): the cosine
similarities of l × l feature volumes that l = 3's top-k atom search needs, computed as the sum of l² shifted
maps of the l = 1 (cell by cell) dot products instead of one product of the unfolded, d·l²-wide volumes. The two
agree up to rounding; the probe times both on features of the default grid (d = 128, 32 × 32 positions, K = 10
shots) and checks that they pick the same top-k atoms. Nothing in the package changes.

    python -m benchmarks.probe_l3_search [--shots 10] [--side 32] [--dim 128] [--field 3] [--top-k 16] [--repeats 5]

Times are medians of --repeats runs after one warm-up (benchmarks.run.timed).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from benchmarks.run import timed
from model.ebm.sparse import top_similar, unfold_volumes


def volume_similarity_unfold(queries: torch.Tensor, atoms: torch.Tensor, field: int) -> torch.Tensor:
    """queries (B, d, h, w), atoms (K, d, h, w) -> cosines (B·h·w, K·h·w) of their l × l volumes, as the model
    builds them (zero-padded unfold, unit norm)."""
    d = queries.shape[1]
    q = F.normalize(unfold_volumes(queries, field).reshape(-1, d * field * field), dim=1)  # (B·h·w, d·l²)
    a = F.normalize(unfold_volumes(atoms, field).reshape(-1, d * field * field), dim=1)  # (K·h·w, d·l²)
    return q @ a.T  # (B·h·w, K·h·w)


def volume_norms(features: torch.Tensor, field: int) -> torch.Tensor:
    """(N, d, h, w) -> (N, h, w): the norm of each position's zero-padded l × l volume, a box sum of the cells'
    squared norms."""
    squared = features.pow(2).sum(1, keepdim=True)  # (N, 1, h, w)
    box = torch.ones(1, 1, field, field, dtype=features.dtype, device=features.device)
    return F.conv2d(squared, box, padding=field // 2).squeeze(1).clamp_min(1e-12).sqrt()  # (N, h, w)


def volume_similarity_shifted(queries: torch.Tensor, atoms: torch.Tensor, field: int) -> torch.Tensor:
    """The same cosines from cell dot products: <vol(p), vol(a)> = Σ_o <cell(p + o), cell(a + o)> over the l²
    offsets o, a padded cell contributing 0, so one d-wide product serves every offset."""
    B, d, h, w = queries.shape
    K = atoms.shape[0]
    r = field // 2
    dots = torch.einsum("bdij,kdmn->bijkmn", queries, atoms)  # (B, h, w, K, h, w): every pair of cells
    padded = dots.new_zeros(B, h + 2 * r, w + 2 * r, K, h + 2 * r, w + 2 * r)  # zero cells outside the grid
    padded[:, r:r + h, r:r + w, :, r:r + h, r:r + w] = dots
    total = dots.new_zeros(B, h, w, K, h, w)
    for dy in range(field):
        for dx in range(field):  # the same offset on the query's and the atom's side
            total += padded[:, dy:dy + h, dx:dx + w, :, dy:dy + h, dx:dx + w]
    total = total / volume_norms(queries, field).reshape(B, h, w, 1, 1, 1)
    total = total / volume_norms(atoms, field).reshape(1, 1, 1, K, h, w)
    return total.reshape(B * h * w, K * h * w)  # (B·h·w, K·h·w), rows image-major, columns shot-major


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--side", type=int, default=32, help="feature grid side (128 px at stride 4: 32)")
    parser.add_argument("--dim", type=int, default=128, help="feature width d")
    parser.add_argument("--field", type=int, default=3, help="receptive field l (odd)")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.field < 1 or args.field % 2 == 0:
        print(f"probe_l3_search: error: --field {args.field}: expected an odd integer >= 1", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(0)
    # rectified features, as Ψ's (non-negative, so every cell pair correlates a little)
    query = torch.rand(1, args.dim, args.side, args.side, generator=generator)  # (1, d, h, w): one test image
    atoms = torch.rand(args.shots, args.dim, args.side, args.side, generator=generator)  # (K, d, h, w)
    with torch.no_grad():
        reference = volume_similarity_unfold(query, atoms, args.field)
        shifted = volume_similarity_shifted(query, atoms, args.field)
        same_atoms = (top_similar(reference, args.top_k)[1].sort(1).values
                      == top_similar(shifted, args.top_k)[1].sort(1).values).all(1).float().mean()
        unfold_s = timed(lambda: volume_similarity_unfold(query, atoms, args.field), args.repeats)
        shifted_s = timed(lambda: volume_similarity_shifted(query, atoms, args.field), args.repeats)
        cell_s = timed(lambda: volume_similarity_unfold(query, atoms, 1), args.repeats)
    print(f"l = {args.field}, d = {args.dim}, {args.side}x{args.side} positions, K = {args.shots}, one image "
          f"({reference.shape[0]} x {reference.shape[1]} similarities), {torch.get_num_threads()} threads")
    print(f"unfolded volumes (d*l^2 = {args.dim * args.field ** 2} wide): {unfold_s * 1e3:.0f} ms")
    print(f"shifted cell maps: {shifted_s * 1e3:.0f} ms ({unfold_s / shifted_s:.1f}x faster)")
    print(f"l = 1 product, for scale: {cell_s * 1e3:.0f} ms")
    print(f"max |difference| {float((reference - shifted).abs().max()):.2e}; "
          f"positions with the same top-{args.top_k} atoms: {float(same_atoms):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
