"""Langevin worker: E_θ at a weights version -> task dictionary -> J Langevin steps (Alg. 1 lines 7-9).

A plain class (RLlib's EnvRunner pattern): `ray.remote` is applied where the pool is built
(orchestrator/pool.py), so tests call `set_weights` / `run` directly without Ray.

What a worker ships back (measured in docs/benchmarks_ray.md):
* default (`detach_rec=False`): L_rec backpropagates through the whole Langevin chain, so the only cheap
  place to differentiate is where the chain was run. The worker computes L = η₀L_rec + η₁L_cd and returns
  ∇θL (one tensor per parameter, None where θ gets no gradient); the learner clips and applies it.
  Shipping negatives instead would make the learner replay the J double-backward steps: all the work.
* `detach_rec=True`: the chain carries no θ-gradient, so the worker returns the negatives only
  (M, C, H, W) and the learner evaluates L_cd at its own, current θ (one dictionary + 2M energies).

The loss is `episode_loss`, the same composition as orchestrator.train.episode_step (checked by
tests/test_ray_workers.py to 1e-6): a synchronous distributed update equals the in-process one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from model.ebm.energy import AdaptiveEBM, participation_ratio
from model.errors import InputError
from model.ebm.langevin import langevin, validate_langevin
from model.losses import contrastive_divergence, energy_regularizer, reconstruction_loss, total_loss
from model.ebm.sparse import TaskDictionary
from workers.episodes import Episode


@dataclass(frozen=True)
class StepSpec:
    """The part of the config a Langevin worker needs (plain values: workers import no orchestrator)."""

    steps: int  # J
    step_size: float  # β
    noise_scale: float
    eta_rec: float = 1.0  # η₀
    eta_cd: float = 1.0  # η₁
    reg_weight: float = 0.0
    detach_rec: bool = False  # True: workers ship negatives, the learner computes L_cd
    rank_weight: float = 0.0  # weight of −log(participation ratio of the support atoms): keeps Ψ from collapsing

    def __post_init__(self) -> None:
        validate_langevin(self.steps, self.step_size, self.noise_scale)


@dataclass
class WeightsPacket:
    """θ at one version; `ray.put` once per version, every worker gets the same reference."""

    version: int
    state: dict[str, torch.Tensor]  # CPU tensors, model.state_dict() keys

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


@dataclass
class EpisodeLoss:
    loss: torch.Tensor  # () differentiable w.r.t. θ
    stats: dict[str, float]


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


def sample_negatives(
    model: AdaptiveEBM,
    dictionary: TaskDictionary,
    corrupted: torch.Tensor,
    spec: StepSpec,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """LD(q̂): J Langevin steps from the corrupted queries (M, C, H, W) -> negatives (M, C, H, W).

    With detach_rec=False the chain stays differentiable w.r.t. θ (create_graph)."""
    return langevin(
        lambda x: model.energy(x, dictionary),
        corrupted,
        spec.steps,
        spec.step_size,
        spec.noise_scale,
        generator=generator,
        create_graph=not spec.detach_rec,
    )


def episode_losses(
    model: AdaptiveEBM,
    dictionary: TaskDictionary,
    queries: torch.Tensor,
    corrupted: torch.Tensor,
    negatives: torch.Tensor,
    spec: StepSpec,
) -> EpisodeLoss:
    """Eqs. 10-12 from the negatives: L = η₀·MSE(LD(q̂), q) + η₁·(E(q) − E(sg[LD(q̂)])) (+ reg)."""
    pos_energy = model.energy(queries, dictionary)  # (M,)
    # Contrastive divergence treats negatives as samples: no gradient through the chain (Eq. 3).
    neg_energy = model.energy(negatives.detach(), dictionary)  # (M,)
    l_cd = contrastive_divergence(pos_energy, neg_energy)
    l_rec = reconstruction_loss(negatives, queries)
    reg = energy_regularizer(pos_energy, neg_energy)
    loss = total_loss(l_rec, l_cd, spec.eta_rec, spec.eta_cd, reg, spec.reg_weight)
    # Effective rank of the support features (the atoms, (m, A) -> rows (A, m)); meta-training that lowers
    # it collapses Ψ onto a few directions, and every category then looks alike to the dictionary.
    support_rank = participation_ratio(dictionary.atoms.transpose(0, 1))
    if spec.rank_weight:
        loss = loss - spec.rank_weight * support_rank.log()
    start_rec = reconstruction_loss(corrupted, queries)
    with torch.no_grad():  # the chain should lower the corrupted query's energy (inpainting): > 0 is good
        chain_energy_drop = model.energy(corrupted, dictionary.detach()) - neg_energy.detach()  # (M,)
    stats = {
        "loss": float(loss.detach()),
        "l_rec": float(l_rec.detach()),
        "l_cd": float(l_cd.detach()),
        "reg": float(reg.detach()),
        "pos_energy": float(pos_energy.detach().mean()),
        "neg_energy": float(neg_energy.detach().mean()),
        "inpaint_gain": float(start_rec - l_rec.detach()),  # > 0: Langevin moved towards the query
        "chain_energy_drop": float(chain_energy_drop.mean()),
        "support_rank": float(support_rank.detach()),
    }
    return EpisodeLoss(loss, stats)


def episode_loss(
    model: AdaptiveEBM, episode: Episode, spec: StepSpec, generator: torch.Generator | None, device: torch.device
) -> EpisodeLoss:
    """Alg. 1 lines 7-9 for one episode: dictionary, Langevin negatives, L = η₀L_rec + η₁L_cd."""
    support = episode.support.to(device)  # (K, C, S, S)
    queries = episode.queries.to(device)  # (M, C, S, S)
    corrupted = episode.corrupted.to(device)  # (M, C, S, S)
    dictionary = model.build_dictionary(support)  # gradient flows into θ through D too
    negatives = sample_negatives(model, dictionary, corrupted, spec, generator)  # (M, C, S, S)
    return episode_losses(model, dictionary, queries, corrupted, negatives, spec)


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
