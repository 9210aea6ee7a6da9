"""The learner: owns θ and Adam, applies one episode's contribution per update, versions the weights.

One update rule for every worker set (orchestrator/training/loop.py): gradient of one episode's loss,
global norm clipped to train.grad_clip, one Adam step. The gradient comes from a loss computed on the
learner's own model (the in-process workers, `apply_loss`), ready-made from a Ray Langevin worker
(`apply` of a WorkResult with grads), or from a worker's negatives (`detach_rec`, `apply_negatives`).
maml_ae's outer step goes through `apply_maml`. Every applied update increments `version`; `packet()` is
θ at that version.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from model.objective import EpisodeLoss, StepSpec, episode_loss, episode_losses
from orchestrator.config import Config
from workers.episodes import Episode
from workers.langevin_worker import WeightsPacket, WorkResult


def step_spec(cfg: Config) -> StepSpec:
    return StepSpec(
        steps=cfg.langevin.steps,
        step_size=cfg.langevin.step_size,
        noise_scale=cfg.langevin.noise_scale,
        eta_rec=cfg.train.eta_rec,
        eta_cd=cfg.train.eta_cd,
        reg_weight=cfg.train.reg_weight,
        detach_rec=cfg.train.detach_rec,
        rank_weight=cfg.train.rank_weight,
        objective=cfg.train.objective,
    )


def episode_step(
    model: torch.nn.Module, episode: Episode, cfg: Config, generator: torch.Generator | None, device: torch.device
) -> EpisodeLoss:
    """Alg. 1 lines 7-9 for one episode: dictionary, Langevin negatives, L = η₀L_rec + η₁L_cd."""
    return episode_loss(model, episode, step_spec(cfg), generator, device)


@dataclass
class Update:
    """One applied update (what a worker set yields to the loop): the episode's category and loss terms."""

    category: str
    stats: dict[str, float]
    detail: dict[str, Any] = field(default_factory=dict)  # worker-set facts for the log record


class NonFiniteLoss(RuntimeError):
    """An episode's loss is NaN/inf: the update is not applied."""


class Learner:
    def __init__(self, model: torch.nn.Module, lr: float, grad_clip: float, spec: StepSpec,
                 device: torch.device = torch.device("cpu")):
        self.model = model.to(device)
        self.model.train()
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.grad_clip = grad_clip
        self.spec = spec
        self.device = device
        self.version = 0  # number of updates applied to θ

    def packet(self) -> WeightsPacket:
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return WeightsPacket(self.version, state)

    def _step(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.version += 1

    def apply_loss(self, result: EpisodeLoss) -> dict[str, float]:
        """One update from a loss on this learner's own model (the in-process workers)."""
        if not math.isfinite(float(result.loss.detach())):
            raise NonFiniteLoss(result.stats)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        self._step()
        return result.stats

    def apply_maml(self, episode: Episode, inner_steps: int, inner_lr: float) -> dict[str, float]:
        """maml_ae's outer step (its own inner loop); raises NonFiniteLoss after a non-finite step."""
        from model.maml_ae import meta_train_step

        stats = meta_train_step(self.model, self.optimizer, episode.support.to(self.device),
                                episode.queries.to(self.device), inner_steps, inner_lr)
        self.version += 1
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLoss(stats)
        return stats

    def apply(self, result: WorkResult, episode: Episode | None = None) -> dict[str, float]:
        """One update from a worker's result; -> the episode's loss terms. Raises NonFiniteLoss."""
        if result.grads is not None:
            stats = dict(result.stats)
            if not math.isfinite(stats.get("loss", float("nan"))):
                raise NonFiniteLoss(stats)
            if len(result.grads) != len(self.params):
                raise ValueError(f"{len(result.grads)} gradients for {len(self.params)} parameters")
            for p, g in zip(self.params, result.grads):
                # None stays None: Adam skips parameters without a gradient, as in the in-process loop; a frozen
                # parameter (train.trainable=head) takes no gradient from a worker's unfrozen copy either.
                p.grad = None if g is None or not p.requires_grad else g.to(device=self.device, dtype=p.dtype)
            self._step()
            return stats
        if episode is None or result.negatives is None:
            raise ValueError("a negatives-only result needs its episode and negatives")
        return self.apply_negatives(episode, result.negatives)

    def apply_negatives(self, episode: Episode, negatives: torch.Tensor) -> dict[str, float]:
        """detach_rec: L_cd (+ the constant L_rec) at the current θ from the worker's negatives."""
        dictionary = self.model.build_dictionary(episode.support.to(self.device))
        result = episode_losses(self.model, dictionary, episode.queries.to(self.device),
                                episode.corrupted.to(self.device), negatives.to(self.device), self.spec,
                                episode.patch_mask.to(self.device))
        if not math.isfinite(result.stats["loss"]):
            raise NonFiniteLoss(result.stats)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        self._step()
        return result.stats

    def state_dict(self) -> dict:
        return {"version": self.version, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.version = int(state["version"])
        self.optimizer.load_state_dict(state["optimizer"])
