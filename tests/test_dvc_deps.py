"""DVC deps that cannot drift: every repo module a stage's `python -m pipelines.X` imports, directly or
through other modules (a static walk of every import statement, those inside functions included), lies
under one of the stage's deps, so `dvc repro` reruns the stage when that code changes.

Fast (no DVC run): it reads dvc.yaml and experiments/dvc.yaml and parses source files.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tests.test_imports import imported_modules

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "workers", "orchestrator", "pipelines")  # the repository's importable packages
DVC_FILES = ("dvc.yaml", "experiments/dvc.yaml")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The source file of repo module `name` (a.b -> a/b.py or a/b/__init__.py), None when not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path, name: str) -> set[str]:
    """Module names an import statement anywhere in `path` (module `name`) may load, parents included."""
    found = imported_modules(path, name, members=True)
    with_parents = set(found)
    for module in found:  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        parts = module.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return with_parents


def transitive_files(entry: str, root: Path = REPO) -> set[Path]:
    """Every repo source file that importing module `entry` can load (static, over-approximating)."""
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(imported_names(path, name))
    return set(seen.values())


def stages(dvc_file: str) -> dict[str, dict]:
    """{stage name: {"cmd", "deps", "wdir"}} of a dvc.yaml, foreach stages taken by their `do` body."""
    doc = yaml.safe_load((REPO / dvc_file).read_text())
    out = {}
    for name, stage in doc["stages"].items():
        body = stage.get("do", stage)
        out[name] = {"cmd": body["cmd"], "deps": body.get("deps", []),
                     "wdir": (REPO / dvc_file).parent / body.get("wdir", stage.get("wdir", "."))}
    return out


def stage_entry(cmd: str) -> str:
    match = re.match(r"python -m (pipelines\.\w+)\b", cmd)
    assert match, f"stage command {cmd!r} is not `python -m pipelines.X`: this test cannot read its imports"
    return match.group(1)


def missing_deps(stage: dict, root: Path = REPO) -> list[str]:
    """Repo files the stage's command imports that lie under none of its deps (paths relative to root)."""
    wdir = Path(stage["wdir"]).resolve()
    deps = [(wdir / dep).resolve() for dep in stage["deps"] if "${" not in dep]  # ${...}: data, not code
    files = transitive_files(stage_entry(stage["cmd"]), root)
    return sorted(str(f.relative_to(root)) for f in files
                  if not any(f.resolve() == d or d in f.resolve().parents for d in deps))


ALL_STAGES = [(f, name) for f in DVC_FILES for name in stages(f)]


@pytest.mark.parametrize("dvc_file,stage", ALL_STAGES, ids=[f"{f}:{s}" for f, s in ALL_STAGES])
def test_every_module_a_stage_imports_is_under_its_deps(dvc_file, stage):
    missing = missing_deps(stages(dvc_file)[stage])
    assert not missing, f"{dvc_file} stage {stage}: add deps covering {missing}"


def test_the_walk_follows_imports_inside_functions_and_from_package_imports():
    files = {str(f.relative_to(REPO)) for f in transitive_files("pipelines.train")}
    # pipelines/train.py imports orchestrator only inside run(); the loss lives in workers/, the math in model/
    assert "pipelines/_entry.py" in files and "orchestrator/__init__.py" in files
    assert any(f.startswith("workers/") for f in files) and any(f.startswith("model/") for f in files)


@pytest.mark.parametrize("package", ["model", "workers", "orchestrator", "pipelines"])
def test_a_stage_with_a_package_removed_from_its_deps_fails(package):
    """The check bites: train@<target> without one of its code packages is reported, naming that package."""
    doctored = copy.deepcopy(stages("dvc.yaml")["train"])
    assert package in doctored["deps"]
    doctored["deps"].remove(package)
    missing = missing_deps(doctored)
    assert missing and all(m.startswith(f"{package}/") for m in missing), missing


def test_a_stage_of_experiments_dvc_yaml_with_its_entry_point_removed_fails():
    """experiments/dvc.yaml's stages run at wdir ..: deps resolve there, and the check still bites."""
    doctored = copy.deepcopy(stages("experiments/dvc.yaml")["report"])
    doctored["deps"] = [d for d in doctored["deps"] if d != "pipelines"] + ["pipelines/_entry.py"]
    assert "pipelines/results.py" in missing_deps(doctored) and "pipelines/_entry.py" not in missing_deps(doctored)
