"""Langevin worker: E_θ at a weights version -> task dictionary -> J Langevin steps (Alg. 1 lines 7-9).

A plain class (RLlib's EnvRunner pattern): `ray.remote` is applied where the pool is built
(workers/pool.py), so tests call `set_weights` / `run` directly without Ray.

What a worker ships back (measured in docs/benchmarks_ray.md):
* default (`detach_rec=False`): L_rec backpropagates through the whole Langevin chain, so the only cheap
  place to differentiate is where the chain was run. The worker computes L = η₀L_rec + η₁L_cd and returns
  ∇θL (one tensor per parameter, None where θ gets no gradient); the learner clips and applies it.
  Shipping negatives instead would make the learner replay the J double-backward steps: all the work.
* `detach_rec=True`: the chain carries no θ-gradient, so the worker returns the negatives only
  (M, C, H, W) and the learner evaluates L_cd at its own, current θ (one dictionary + 2M energies).

The loss is model.objective.episode_loss, the one the in-process run applies (checked by
tests/test_ray_workers.py to 1e-6): a synchronous distributed update equals the in-process one.
The message types between learner and workers (WeightsPacket, WorkResult) live here too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from model.errors import InputError
from model.objective import StepSpec, episode_loss, sample_negatives
from workers.episodes import Episode


@dataclass
class WeightsPacket:
    """θ at one version; `ray.put` once per version, every worker gets the same reference."""

    version: int
    state: dict[str, torch.Tensor]  # CPU tensors, model.state_dict() keys

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


@dataclass
class WorkResult:
    """One episode's contribution, tagged with the weights version that produced it."""

    episode_index: int
    version: int  # weights version of the worker when it ran this episode
    worker: int
    category: str
    grads: list[torch.Tensor | None] | None  # ∇θL per parameter (default mode)
    negatives: torch.Tensor | None  # (M, C, H, W) Langevin samples (detach mode)
    stats: dict[str, float] = field(default_factory=dict)
    compute_s: float = 0.0
    pid: int = 0
    input_bytes: int = 0  # the episode this worker received (support, queries, corrupted, mask)

    def nbytes(self) -> int:
        tensors = [g for g in (self.grads or []) if g is not None]
        if self.negatives is not None:
            tensors.append(self.negatives)
        return sum(t.numel() * t.element_size() for t in tensors)


class LangevinWorker:
    """Holds a private copy of E_θ; `set_weights` moves it to a version, `run` does one episode."""

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        spec: StepSpec,
        worker_id: int = 0,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.model = build_model().to(self.device)
        self.model.train()
        self.spec = spec
        self.worker_id = worker_id
        self.version = -1  # no weights yet

    def set_weights(self, packet: WeightsPacket) -> None:
        self.model.load_state_dict(packet.state)
        self.version = packet.version

    def run(self, episode: Episode, episode_index: int, seed: int) -> WorkResult:
        """One episode at the current version; `seed` fixes the Langevin noise (reproducible retries)."""
        if self.version < 0:
            raise InputError("LangevinWorker.run before set_weights: the worker has no weights version")
        began = time.perf_counter()
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        grads = negatives = None
        if self.spec.detach_rec:
            with torch.no_grad():
                dictionary = self.model.build_dictionary(episode.support.to(self.device))
            negatives = sample_negatives(
                self.model, dictionary, episode.corrupted.to(self.device), self.spec, generator
            ).cpu()  # (M, C, S, S)
            stats: dict[str, float] = {}
        else:
            result = episode_loss(self.model, episode, self.spec, generator, self.device)
            params = list(self.model.parameters())
            grads = list(torch.autograd.grad(result.loss, params, allow_unused=True))
            grads = [None if g is None else g.detach().cpu() for g in grads]
            stats = result.stats
        return WorkResult(
            episode_index=episode_index,
            version=self.version,
            worker=self.worker_id,
            category=episode.category,
            grads=grads,
            negatives=negatives,
            stats=stats,
            compute_s=time.perf_counter() - began,
            pid=os.getpid(),
            input_bytes=sum(t.numel() * t.element_size() for t in
                            (episode.support, episode.queries, episode.corrupted, episode.patch_mask)),
        )
