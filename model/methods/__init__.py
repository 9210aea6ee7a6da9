"""The method registry: every evaluation method, once, in the order tables list them.

Each method lives in its own module (ours, knn, maml_ae, baselines) and registers a Method there: its
name, the trained model kind it reads, whether it is a no-training baseline, whether it scores with the
untrained network, and its scorer factory. Callers look methods up here rather than comparing names.
"""
from __future__ import annotations

from model.errors import InputError
from model.methods import baselines, knn, maml_ae, ours
from model.methods.base import Method, Scorer, ScorerFactory, ScoringOptions

REGISTRY: tuple[Method, ...] = (ours.METHOD, knn.METHOD, maml_ae.METHOD, *baselines.METHODS)
BY_NAME: dict[str, Method] = {m.name: m for m in REGISTRY}

METHODS: tuple[str, ...] = tuple(BY_NAME)
BASELINES: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.baseline)
LEARNT: tuple[str, ...] = tuple(m.name for m in REGISTRY if not m.baseline)
# The trained model directory each method reads (baselines read only its config, never its weights).
METHOD_MODEL: dict[str, str] = {m.name: m.model for m in REGISTRY}
# The kinds of model that `fsad train --method` trains: the ones some method reads.
MODEL_KINDS: tuple[str, ...] = tuple(dict.fromkeys(m.model for m in REGISTRY))

OURS, KNN, MAML_AE = ours.METHOD, knn.METHOD, maml_ae.METHOD


def get_method(name: str, flag: str = "--method") -> Method:
    """The registered method called `name`; InputError (one line, naming `flag`) for any other name."""
    try:
        return BY_NAME[name]
    except (KeyError, TypeError):
        raise InputError(f"{flag} {name!r}: expected one of {', '.join(METHODS)}") from None


__all__ = ["BASELINES", "BY_NAME", "KNN", "LEARNT", "MAML_AE", "METHODS", "METHOD_MODEL", "MODEL_KINDS", "Method", "OURS",
           "REGISTRY", "Scorer", "ScorerFactory", "ScoringOptions", "get_method"]
