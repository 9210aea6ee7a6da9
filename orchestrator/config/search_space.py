"""What `fsad tune` searches (TuneSpace), the config key each knob sets (TUNE_KEYS), and their checks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from model.errors import InputError
from model.ebm.langevin import validate_langevin
from orchestrator.config.checks import check_finite
from orchestrator.config.specs import sparse_spec

if TYPE_CHECKING:  # the schema holds TuneSpace: hints only, no import cycle
    from orchestrator.config.schema import Config


@dataclass
class FloatRange:
    """A float search dimension: uniform on [low, high], log-uniform with log: true (then low > 0)."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False
    search: bool = True  # false: the trial keeps the config's value


@dataclass
class IntChoices:
    """An integer search dimension: one of `choices`."""

    choices: list[int] = field(default_factory=list)
    search: bool = True


@dataclass
class TuneSpace:
    """What `fsad tune` searches; each knob sets the config key in TUNE_KEYS (docs/tuning.md)."""

    lam_max: FloatRange = field(default_factory=lambda: FloatRange(0.5, 2.0))  # model.lam_max (λ_max)
    lam_star: FloatRange = field(default_factory=lambda: FloatRange(0.01, 0.5, log=True))  # model.lam_star (λ*)
    tau: FloatRange = field(default_factory=lambda: FloatRange(2.0, 100.0, log=True))  # model.tau (SigShrink τ)
    step_size: FloatRange = field(default_factory=lambda: FloatRange(1.0, 100.0, log=True))  # langevin.step_size (β)
    shots: IntChoices = field(default_factory=lambda: IntChoices([1, 2, 5, 10]))  # train.shots (K)
    receptive_field: IntChoices = field(default_factory=lambda: IntChoices([1, 3, 5], False))  # model.receptive_field (l)
    langevin_steps: IntChoices = field(default_factory=lambda: IntChoices([3, 5, 10], False))  # langevin.steps (J)


TUNE_KEYS = {"lam_max": "model.lam_max", "lam_star": "model.lam_star", "tau": "model.tau",
             "step_size": "langevin.step_size", "shots": "train.shots", "receptive_field": "model.receptive_field",
             "langevin_steps": "langevin.steps"}


def validate_tune(cfg: "Config") -> None:
    """The search space: non-empty ranges, log bounds > 0, and every bound/choice valid in the config."""
    t = cfg.tune
    for name, key in TUNE_KEYS.items():
        dim, where = getattr(t.space, name), f"tune.space.{name}"
        if isinstance(dim, FloatRange):
            check_finite(f"{where}.low", dim.low)
            check_finite(f"{where}.high", dim.high)
            if dim.low > dim.high:
                raise InputError(f"{where}: low={dim.low} > high={dim.high} (inverted range)")
            if dim.low == dim.high:
                raise InputError(f"{where}: low = high = {dim.low} (empty range); set search: false to fix {key}")
            if dim.log and dim.low <= 0:
                raise InputError(f"{where}: log range needs low > 0; got low={dim.low}")
            values = [dim.low, dim.high]
        else:
            if not dim.choices or len(set(dim.choices)) != len(dim.choices):
                raise InputError(f"{where}.choices={dim.choices}: expected a non-empty list of distinct integers")
            values = list(dim.choices)
        if dim.search:
            for value in values:  # each bound or choice must make a valid config on its own
                try:
                    check_setting(cfg, key, value)
                except InputError as exc:
                    raise InputError(f"{where}: {value} is not a valid {key} ({exc})") from None
    s = t.space
    if s.lam_star.search or s.lam_max.search:  # λ* <= λ_max for every sample
        star_high = s.lam_star.high if s.lam_star.search else cfg.model.lam_star
        max_low = s.lam_max.low if s.lam_max.search else cfg.model.lam_max
        if star_high > max_low:
            raise InputError(f"tune.space: lam_star up to {star_high} can exceed lam_max from {max_low}; "
                             "expected lam_star.high <= lam_max.low")
    for key, value, low in (("eval_every", t.eval_every, 1), ("eval_shots", t.eval_shots, 1),
                            ("eval_draws", t.eval_draws, 1), ("eval_images", t.eval_images, 2),
                            ("startup_trials", t.startup_trials, 0), ("warmup_steps", t.warmup_steps, 0),
                            ("heartbeat_interval", t.heartbeat_interval, 1), ("grace_period", t.grace_period, 1),
                            ("max_retry", t.max_retry, 0)):
        if value < low:
            raise InputError(f"tune.{key}={value}: expected an integer >= {low}")
    if t.grace_period <= t.heartbeat_interval:
        raise InputError(f"tune.grace_period={t.grace_period}: expected more than tune.heartbeat_interval="
                         f"{t.heartbeat_interval}")
    if t.pruner not in ("median", "hyperband", "none"):
        raise InputError(f"tune.pruner={t.pruner!r}: expected median, hyperband or none")


def check_setting(cfg: "Config", key: str, value: Any) -> None:
    """Validate the model/langevin/train section that `key` lives in with `value` set."""
    section, _, leaf = key.partition(".")
    changed = dataclasses.replace(getattr(cfg, section), **{leaf: value})
    if leaf == "lam_max":  # the pair λ* <= λ_max is validate_tune's own check
        changed.lam_star = min(changed.lam_star, value)
    elif leaf == "lam_star":
        changed.lam_max = max(changed.lam_max, value)
    if section == "model":
        sparse_spec(changed)  # constructing the spec checks it
    elif section == "langevin":
        validate_langevin(changed.steps, changed.step_size, changed.noise_scale)
    elif value < 1:
        raise InputError(f"{key}={value}: expected an integer >= 1")
