"""The layer rule pipelines -> orchestrator -> workers -> model, checked two ways: by reading every
module's imports with ast (including imports inside functions), and with import-linter."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LAYERS = ("pipelines", "orchestrator", "workers", "model")  # each may import only those to its right
FORBIDDEN_IN_MODEL = {"ray", "mlflow", "optuna", "dvc", "boto3"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None, members: bool = False) -> set[str]:
    """Absolute names of every module imported anywhere in the file (relative imports resolved
    against its module name, by default derived from its path under the repository). With `members`,
    every `from M import n` also yields `M.n` (n may be a submodule: tests/test_dvc_deps.py)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
                found.add(target)
                if not node.module or members:
                    found.update(f"{target}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                if members:
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module", "__import__"
        ):
            # importlib.import_module("orchestrator.commands.train") and friends: literal names only
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def python_files(layer: str) -> list[Path]:
    return sorted((REPO / layer).rglob("*.py"))


def test_every_layer_has_files():
    for layer in LAYERS:
        assert (REPO / layer / "__init__.py").is_file(), layer
    assert python_files("model") and python_files("workers") and python_files("orchestrator")


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_rule(layer):
    above = set(LAYERS[: LAYERS.index(layer)])  # the layers this one must not import
    violations = []
    for path in python_files(layer):
        for imported in imported_modules(path):
            top = imported.split(".")[0]
            if top in above:
                violations.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not violations, "\n".join(violations)


def test_model_is_pure_torch_math():
    violations = []
    for path in python_files("model"):
        for imported in imported_modules(path):
            if imported.split(".")[0] in FORBIDDEN_IN_MODEL:
                violations.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not violations, "\n".join(violations)


def test_every_file_parses():
    for layer in LAYERS:
        for path in python_files(layer):
            ast.parse(path.read_text(), filename=str(path))


def test_checker_sees_violations(tmp_path):
    """The ast checker itself: relative and absolute imports, inside functions too."""
    path = tmp_path / "fake.py"
    path.write_text(
        "import os\n"
        "from . import energy\n"
        "from .sparse import istc\n"
        "def f():\n"
        "    import workers.data\n"
        "    from orchestrator import config\n"
        "    import importlib; importlib.import_module('pipelines')\n"
    )
    names = imported_modules(path, "model.fake")
    assert {"os", "model", "model.energy", "model.sparse", "workers.data", "orchestrator", "pipelines"} <= names
    assert module_name(REPO / "model" / "sparse.py") == "model.sparse"
    assert module_name(REPO / "orchestrator" / "commands" / "__init__.py") == "orchestrator.commands"


def test_import_linter_contracts():
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.is_file():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.skip("import-linter is not installed")
        exe = Path(found)
    proc = subprocess.run([str(exe)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and "0 broken" in proc.stdout


def test_data_imports_no_worker_code():
    """workers/data/ sits below the worker code: within workers/ it imports only itself and workers.files."""
    violations = []
    for path in sorted((REPO / "workers" / "data").rglob("*.py")):
        for imported in imported_modules(path):
            inside = imported == "workers.data" or imported.startswith("workers.data.")
            if imported.split(".")[0] == "workers" and not inside and imported != "workers.files":
                violations.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not violations, "\n".join(violations)
