"""No module imports another module's private (`_name`) names, and benchmarks do not import tests (issue 13).

A static scan of every import statement (those inside functions included) in the code packages and
benchmarks/. A name another module needs is public API: give it a public name where it is defined.
"""
from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SCANNED = ("model", "workers", "orchestrator", "pipelines", "benchmarks")
REPO_MODULES = (*SCANNED, "tests")



def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, name: str, is_package: bool = False) -> list[tuple[str, str]]:
    """(module, imported name) of every `from M import N` in source (module `name`), relative ones resolved."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return found


def private_imports(source: str, name: str, is_package: bool = False) -> list[tuple[str, str]]:
    """(module, name) pairs where module `name` imports a `_private` name of another repo module."""
    return [(module, imported) for module, imported in imports(source, name, is_package)
            if module.split(".")[0] in REPO_MODULES and module != name
            and imported.startswith("_") and not imported.startswith("__")]


def scanned_files() -> list[Path]:
    return sorted(f for package in SCANNED for f in (REPO / package).rglob("*.py") if "__pycache__" not in f.parts)


def offenders() -> set[tuple[str, str, str]]:
    out = set()
    for path in scanned_files():
        name = module_name(path)
        for module, imported in private_imports(path.read_text(), name, path.name == "__init__.py"):
            out.add((str(path.relative_to(REPO)), module, imported))
    return out


def test_no_module_imports_another_modules_private_names():
    found = offenders()
    assert not found, f"make these names public where they are defined: {sorted(found)}"


def test_benchmarks_do_not_import_tests():
    """Shared helpers (the real data root, small copies, moto_server) live in benchmarks/fixtures.py."""
    bad = []
    for path in sorted((REPO / "benchmarks").rglob("*.py")):
        for module, _ in imports(path.read_text(), module_name(path), path.name == "__init__.py"):
            if module.split(".")[0] == "tests":
                bad.append(f"{path.relative_to(REPO)}: {module}")
    assert not bad, bad


def test_the_scan_sees_private_imports_inside_functions_and_relative_ones():
    source = ("from orchestrator.train import _prepare_out, train\n"
              "def f():\n    from .data import _load_image\n    from model.energy import __doc__\n"
              "from workers.video import _own_helper\n")
    assert private_imports(source, "workers.video") == [("orchestrator.train", "_prepare_out"),
                                                        ("workers.data", "_load_image")]
    assert private_imports("from numpy import _core\n", "model.x") == []  # not a repo module
