"""Central learner: owns θ and Adam, applies one episode's contribution per update, versions the weights.

The update is the in-process trainer's (orchestrator/train.py): gradient of one episode's loss, global
norm clipped to train.grad_clip, one Adam step. The gradient arrives either ready-made from a Langevin
worker (default mode) or is computed here from the worker's negatives (`detach_rec`, see
workers/negatives.py). Every applied update increments `version`; `packet()` is θ at that version.
"""
from __future__ import annotations

import math

import torch

from orchestrator.config import Config
from workers.episodes import Episode
from workers.negatives import StepSpec, WeightsPacket, WorkResult, episode_losses


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
    )


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

    def apply(self, result: WorkResult, episode: Episode | None = None) -> dict[str, float]:
        """One update from a worker's result; -> the episode's loss terms. Raises NonFiniteLoss."""
        if result.grads is not None:
            stats = dict(result.stats)
            if not math.isfinite(stats.get("loss", float("nan"))):
                raise NonFiniteLoss(stats)
            if len(result.grads) != len(self.params):
                raise ValueError(f"{len(result.grads)} gradients for {len(self.params)} parameters")
            for p, g in zip(self.params, result.grads):
                # None stays None: Adam skips parameters without a gradient, as in the in-process loop.
                p.grad = None if g is None else g.to(device=self.device, dtype=p.dtype)
            self._step()
            return stats
        if episode is None or result.negatives is None:
            raise ValueError("a negatives-only result needs its episode and negatives")
        return self.apply_negatives(episode, result.negatives)

    def apply_negatives(self, episode: Episode, negatives: torch.Tensor) -> dict[str, float]:
        """detach_rec: L_cd (+ the constant L_rec) at the current θ from the worker's negatives."""
        dictionary = self.model.build_dictionary(episode.support.to(self.device))
        result = episode_losses(self.model, dictionary, episode.queries.to(self.device),
                                episode.corrupted.to(self.device), negatives.to(self.device), self.spec)
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
