"""The loader module that every registered fsad model names in its MLmodel (`loader_module:
orchestrator.pyfunc`). It stays at this path because versions already on tracking servers name it, and
`mlflow models serve` imports it by that name; the loader itself is orchestrator/tracking/pyfunc.py."""
from __future__ import annotations

from orchestrator.tracking.pyfunc import OLD_FORMAT, FsadPyfunc, load_data_folder


def _load_pyfunc(data_path: str) -> FsadPyfunc:
    """MLflow's entry point: the name its pyfunc flavor calls on the loader module."""
    return load_data_folder(data_path)


def __getattr__(name: str):
    # Old-format versions run their stored pyfunc_entry.py, which imports FsadModel from here.
    if name == "FsadModel":
        raise ImportError(OLD_FORMAT)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
