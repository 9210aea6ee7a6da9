"""The sampler and pruner of a study: TPE reseeded per trial, so parallel processes draw differently."""
from __future__ import annotations

import numpy as np
import optuna

from orchestrator.config import Config


def make_sampler(cfg: Config) -> optuna.samplers.BaseSampler:
    return TrialSeededTPE(cfg.tune.sampler_seed, max(1, cfg.tune.startup_trials))


def trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler seed of trial `number`: distinct per trial, the same in every process."""
    return int(np.random.SeedSequence([sampler_seed, number]).generate_state(1)[0])


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE (constant liar on) whose random state is reseeded from (tune.sampler_seed, trial number).

    One TPESampler(seed=S) in each of P processes made the same draws in each: P parallel trials got
    the same parameters. The trial number is unique in the storage, so here concurrent trials draw
    differently while a trial's draws stay a function of the seed, its number and the trials it sees:
    the first tune.startup_trials trials (random sampling) are identical in any run with the same seed,
    whatever --parallel; later ones also depend on which trials had finished when they were asked
    (deterministic with --parallel 1). Running trials count as bad values (constant liar), so
    concurrent TPE trials spread out."""

    def __init__(self, seed: int, n_startup_trials: int):
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._number: int | None = None
        self._tpe: optuna.samplers.TPESampler | None = None

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number != self._number:  # one trial at a time per process (study.optimize, n_jobs=1)
            self._number = trial.number
            self._tpe = optuna.samplers.TPESampler(seed=trial_seed(self.seed, trial.number), constant_liar=True,
                                                   n_startup_trials=self.n_startup_trials)
        return self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    t = cfg.tune
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_steps)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=t.eval_every, max_resource=cfg.train.episodes)
    return optuna.pruners.NopPruner()
