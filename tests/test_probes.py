"""The probes of docs/benchmarks.md that change what the model computes: the position-windowed top-k search
(benchmarks/probe_position.py), the frozen twin of Ψ (benchmarks/probe_twin.py) and l × l volume similarities
from shifted cell maps (benchmarks/probe_l3_search.py)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.probe_l3_search import volume_similarity_shifted, volume_similarity_unfold
from benchmarks.probe_position import grid_coordinates, windowed_energy
from benchmarks.probe_twin import TwinFeatures
from model.ebm.sparse import fista_energy

SIDE = 32  # the grid of 128-px images at stride 4
POSITIONS = SIDE * SIDE


def unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def energies(radius: float, signals: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    return windowed_energy(signals, atoms, 0.05, 20, top_k=4, radius=radius, positions=POSITIONS)


def test_grid_coordinates_are_row_major_per_image():
    cells = grid_coordinates(2 * 9, 9).numpy()  # two 3 × 3 images
    assert cells[0].tolist() == [0, 0] and cells[5].tolist() == [1, 2] and cells[9].tolist() == [0, 0]


def test_a_window_covering_the_grid_is_the_plain_search():
    signals, atoms = unit(POSITIONS, 8, 0), unit(2 * POSITIONS, 8, 1).T  # one image, two shots
    plain = fista_energy(signals, atoms, 0.05, 20, top_k=4)
    assert torch.allclose(energies(math.inf, signals, atoms), plain)
    assert torch.allclose(energies(SIDE, signals, atoms), plain, atol=1e-6)


def test_radius_zero_codes_each_position_over_its_own_cell_only():
    # shot 0 holds every signal, one cell off; shot 1 holds unrelated atoms: the plain search finds each
    # signal itself (energy ~0), the window of radius 0 only the two atoms of its own cell
    signals = unit(POSITIONS, 8, 0)
    shot0, shot1 = signals.roll(1, 0), unit(POSITIONS, 8, 2)
    atoms = torch.cat([shot0, shot1], 0).T  # (m, 2P), shot-major
    assert energies(math.inf, signals, atoms).max() < 0.01
    windowed = energies(0, signals, atoms).numpy()
    # reference: the least-squares residual over the two same-cell atoms (λ = 0.05 leaves the fit a little short)
    reference = []
    for p in range(POSITIONS):
        local = torch.stack([shot0[p], shot1[p]], 1).double().numpy()  # (m, 2)
        z = signals[p].double().numpy()
        codes = np.linalg.lstsq(local, z, rcond=None)[0]
        reference.append(((z - local @ codes) ** 2).sum())
    reference = np.array(reference)
    assert windowed.min() > 0.05
    assert np.all(windowed >= reference - 1e-4) and np.median(windowed - reference) < 0.05


def test_twin_similarity_is_the_mean_of_the_two_cosines():
    first, second = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
    for net in (first, second):
        net.out_dim, net.stride = 4, 1
    twin = TwinFeatures(first, second)
    images = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    pair = twin(images)  # (2, 8, 5, 5)
    assert pair.shape == (2, 8, 5, 5) and twin.out_dim == 8
    a, b = pair[0, :, 1, 1], pair[1, :, 3, 2]
    cos = [F.cosine_similarity(net(images)[0, :, 1, 1], net(images)[1, :, 3, 2], dim=0) for net in (first, second)]
    assert torch.isclose(a.norm(), torch.tensor(1.0)) and torch.isclose(a @ b, (cos[0] + cos[1]) / 2, atol=1e-6)


def test_shifted_cell_maps_give_the_volume_cosines_of_the_unfold():
    """Against a numpy reference built position by position from zero-padded 3 × 3 volumes, and against the
    model's unfold, on a grid small enough that a third of the positions touch the border."""
    g = torch.Generator().manual_seed(3)
    queries, atoms = torch.randn(2, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)  # (B|K, d, h, w)
    shifted = volume_similarity_shifted(queries, atoms, 3).numpy()  # (2·30, 3·30)

    def volume(x: np.ndarray, i: int, j: int) -> np.ndarray:  # (d, h, w) -> the unit 3 × 3 volume at (i, j)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
        v = padded[:, i:i + 3, j:j + 3].ravel()
        return v / np.linalg.norm(v)

    q = [volume(x, i, j) for x in queries.numpy() for i in range(5) for j in range(6)]
    a = [volume(x, i, j) for x in atoms.numpy() for i in range(5) for j in range(6)]
    np.testing.assert_allclose(shifted, np.array(q) @ np.array(a).T, atol=1e-5)
    np.testing.assert_allclose(shifted, volume_similarity_unfold(queries, atoms, 3).numpy(), atol=1e-5)
    # l = 1 degenerates to the plain cosines of cells
    np.testing.assert_allclose(volume_similarity_shifted(queries, atoms, 1).numpy(),
                               volume_similarity_unfold(queries, atoms, 1).numpy(), atol=1e-5)
