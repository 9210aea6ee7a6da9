"""Every hostile case of benchmarks/hostile.py (the cases docs/reliability.md tabulates) meets the rules:
bad input exits 2 with one `fsad: error:` line naming the file or value, nothing is written outside the
output folder or left half-written, nothing already written is lost, no secret is printed. Each case
runs the real `fsad` command in a subprocess."""
from __future__ import annotations

import pytest

from benchmarks.hostile import CASES  # every case module registered, in the table's order
from benchmarks.hostile_harness import Workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(real_root, tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("hostile"), real_root)


@pytest.mark.parametrize("case", [c for c in CASES if c.in_suite], ids=lambda c: c.__name__)
def test_hostile_case(case, workspace):
    result = case(workspace)
    assert not result.problems(), f"{result.name}: {result.problems()}\nstderr: {result.stderr[-3000:]}"
