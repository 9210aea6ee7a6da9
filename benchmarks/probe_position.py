"""Probe (docs/benchmarks.md, "Five levers measured, none adopted", item 1): ours with every feature position
coded over atoms taken only from shot positions within a window of it, untrained Ψ, on chosen categories at
K = 10 (3 draws, the probes' 160-image class-stratified test subset).

    python -m benchmarks.probe_position RADII CAT[,CAT...] [section.key=value ...] [--data ROOT]

RADII: comma-separated window radii in feature cells (Chebyshev distance on the h' × w' grid; `inf` = the whole
image, the default model). The same radius applies to the shots' leave-one-out energies (image_norm "support").
The probe patches the model's top-k search (model.ebm.energy.fista_energy); nothing in the package changes.
Square images only: the grid is (data.image_size / model.backbone.stride)², and every position's cell comes
from its index."""
from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial

import torch

import model.ebm.energy as energy_module
from model.ebm.sparse import chunk_rows, fista_energy, local_energy
from orchestrator.config.loading import load_config, parse_overrides
from orchestrator.evaluation.evaluate import make_scorer, untrained_model
from benchmarks.probe_features import DATA, probe, result_line


def grid_coordinates(count: int, positions: int) -> torch.Tensor:
    """(count,) rows laid out image-major over a side × side grid -> their (row, column) cells (count, 2)."""
    side = math.isqrt(positions)
    cell = torch.arange(count) % positions
    return torch.stack([cell // side, cell % side], 1)


def windowed_energy(signals, atoms, lam, max_steps, kind="hard", tau=20.0, top_k=16, tol=1e-4,
                    chunk_bytes=16 * 2**20, return_atoms=0, *, radius: float, positions: int):
    """fista_energy with each signal's top-k atoms drawn from its window only (radius cells). The atoms of K
    shots are K·P columns, shot-major; the signals B·P rows, image-major; P = positions = side²."""
    if math.isinf(radius):
        return fista_energy(signals, atoms, lam, max_steps, kind, tau, top_k, tol, chunk_bytes, return_atoms)
    atom_cells = grid_coordinates(atoms.shape[1], positions)  # (A, 2)
    signal_cells = grid_coordinates(signals.shape[0], positions)  # (n, 2)
    # a window with fewer than k atoms: the rest point at column A, a zero atom, which no code uses
    padded = torch.cat([atoms, atoms.new_zeros(atoms.shape[0], 1)], 1)  # (m, A + 1)
    k = min(top_k, atoms.shape[1])
    rows = chunk_rows(signals, atoms, chunk_bytes)  # a (rows × A) block per chunk
    out, columns = [], []
    for chunk, cells in zip(signals.split(rows), signal_cells.split(rows)):
        similarity = chunk @ atoms  # (r, A)
        far = (cells[:, None, :] - atom_cells[None]).abs().amax(-1) > radius  # (r, A)
        index = similarity.masked_fill(far, -1e9).topk(k, dim=1).indices  # (r, k)
        index = index.masked_fill(far.gather(1, index), atoms.shape[1])  # (r, k): outside the window -> zero atom
        corr = torch.cat([similarity, similarity.new_zeros(similarity.shape[0], 1)], 1).gather(1, index)  # (r, k)
        out.append(local_energy(chunk, padded, corr, index, lam, max_steps, kind, tau, tol))
        columns.append(index[:, :return_atoms])
    return (torch.cat(out), torch.cat(columns)) if return_atoms else torch.cat(out)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_position", description=__doc__.split("\n")[0])
    parser.add_argument("radii", type=lambda text: [float(r) for r in text.split(",")])
    parser.add_argument("categories", type=lambda text: text.split(","))
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--data", default=DATA)
    args = parser.parse_args(argv)
    cfg = load_config("params.yaml", parse_overrides(args.overrides))
    torch.set_num_threads(2)
    positions = (cfg.data.image_size // cfg.model.backbone.stride) ** 2
    for category in args.categories:
        for radius in args.radii:
            energy_module.fista_energy = partial(windowed_energy, radius=radius, positions=positions)
            t0 = time.perf_counter()
            res = probe(make_scorer("ours", untrained_model(cfg), cfg), args.data, category, cfg.data.image_size)
            print(result_line(f"radius {radius:g} {category}", res, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
