"""Small range checks shared by validation.py and search_space.py; each failure is a one-line InputError."""
from __future__ import annotations

import math

from model.errors import InputError


def check_finite(key: str, value: float, low: float | None = None, strict: bool = True) -> None:
    """`value` is finite and, when `low` is given, above it (`strict`) or at least it."""
    if not math.isfinite(value):
        raise InputError(f"{key}={value}: expected a finite number")
    if low is not None and (value <= low if strict else value < low):
        raise InputError(f"{key}={value}: expected a value {'>' if strict else '>='} {low}")
