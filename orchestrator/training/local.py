"""The in-process worker set: one worker in the learner's process, on the learner's own model.

Local mode of the one loop (orchestrator/training/loop.py), as RLlib's local mode: the worker computes
each episode's loss on θ itself (staleness 0, nothing to broadcast) and the learner applies it. Episodes
come from one stateful EpisodeSampler seeded train.seed and the Langevin noise from one generator seeded
train.seed + 1, both carried across a checkpoint, so a resumed run continues the same draws.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from model.methods import MAML_AE
from model.objective import episode_loss
from orchestrator.config import Config
from orchestrator.tracking.artifacts import Writer
from orchestrator.training.inputs import RunInputs, learns_from_defects, load_defects, load_normals
from orchestrator.training.learner import Learner, Update
from workers.episodes import EpisodeSampler


class LocalWorkers:
    distributed = False

    def __init__(self, cfg: Config, inputs: RunInputs, device: torch.device):
        self.cfg, self.device = cfg, device
        normals = load_normals(inputs.source, inputs.categories, cfg.data.image_size)
        defects = None
        if learns_from_defects(cfg):
            defects = load_defects(inputs.source, inputs.categories, cfg.data.image_size)
        self.sampler = EpisodeSampler(
            normals, cfg.train.shots, cfg.train.queries, (cfg.inpaint.min_frac, cfg.inpaint.max_frac),
            cfg.train.augment, cfg.train.seed, exclude=tuple(cfg.data.exclude), corruptions=tuple(cfg.inpaint.kinds),
            defects=defects, crop=cfg.train.crop,
        )
        self.generator: torch.Generator | None = None
        self.description = f"train {cfg.train.method}"

    def start(self, learner: Learner, state: dict[str, Any] | None, out: Path) -> None:
        self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed + 1)
        if state is not None:
            self.sampler.set_state(state["sampler_rng"])
            self.generator.set_state(state["langevin_rng"].to(self.generator.get_state().device))

    def updates(self, learner: Learner, start: int) -> Iterator[Update]:
        """Episodes start.. in order, each applied before the next is drawn."""
        cfg = self.cfg
        for _ in range(start, cfg.train.episodes):
            episode = self.sampler.sample()
            if cfg.train.method == MAML_AE.model:
                stats = learner.apply_maml(episode, cfg.maml.inner_steps, cfg.maml.inner_lr)
            else:
                stats = learner.apply_loss(episode_loss(learner.model, episode, learner.spec, self.generator,
                                                        self.device))
            yield Update(episode.category, stats)

    def log_record(self, record: dict[str, Any], rounded: dict[str, float], update: Update) -> dict[str, Any]:
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"sampler_rng": self.sampler.get_state(), "langevin_rng": self.generator.get_state().cpu()}

    def extra_writers(self) -> dict[str, Writer]:
        return {}

    def finish(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass
