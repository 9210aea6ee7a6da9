"""The model a registration adapts: a registered version (models:/NAME@ALIAS, models:/NAME/N), a training
run's model/ artifact, a pyfunc package folder or an `fsad train` directory, fetched as a model directory.
Server trouble is a one-line InputError naming the cause."""
from __future__ import annotations

import re
from pathlib import Path

from model.errors import InputError
from orchestrator.tracking.artifacts import WEIGHTS
from orchestrator.tracking.server import client_for, error_line


def mlflow_call(what: str, fn, *args, **kwargs):
    """Run a registry call; server trouble becomes a one-line InputError without secrets."""
    try:
        return fn(*args, **kwargs)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection and database errors alike
        raise InputError(f"{what} failed: {error_line(exc)}") from None



# ---------------------------------------------------------------------------------------------
# Resolving the model to adapt


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS -> (NAME, ALIAS, None); models:/NAME/VERSION -> (NAME, None, VERSION)."""
    match = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/([^/]+))$", uri)
    if not match:
        raise InputError(f"model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return match.group(1), match.group(2), match.group(3)


def resolve_model_version(client, uri: str):
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(uri)
    try:
        client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001
        if not isinstance(exc, MlflowException) or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"looking up {uri} failed: {error_line(exc)}") from None
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise InputError(f"no registered model named {name!r}; registered: {', '.join(known) or 'none'}") from None
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise InputError(f"looking up {uri} failed: {error_line(exc)}") from None
        model = client.get_registered_model(name)
        if alias:
            aliases = sorted(getattr(model, "aliases", {}) or {})
            raise InputError(f"registered model {name!r} has no alias {alias!r}; aliases: {', '.join(aliases) or 'none'}") from None
        raise InputError(f"registered model {name!r} has no version {version!r}") from None


def _download(uri: str, artifact_uri: str, dst: Path) -> Path:
    import mlflow.artifacts

    return Path(mlflow_call(f"downloading {artifact_uri}", mlflow.artifacts.download_artifacts,
                             artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=uri))


def package_weights(package: Path) -> Path | None:
    """The model directory inside a registered package: data/fsad_model/, or artifacts/weights/ of the old
    format (read here as data only, so `fsad adapt` can re-register an old version in the new format)."""
    from orchestrator.tracking.pyfunc import DATA_DIR

    for folder in (package / "data" / DATA_DIR, package / "artifacts" / "weights"):
        if (folder / WEIGHTS).is_file():
            return folder
    return None


def fetch_weights(uri: str, model: str, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A model directory (weights + config + meta) from models:/NAME@ALIAS, models:/NAME/N, a pyfunc
    directory or an `fsad train` directory; plus tags describing where it came from."""
    if model.startswith("models:/"):
        parse_models_uri(model)
        client = mlflow_call("connecting to the tracking store", client_for, uri)
        version = resolve_model_version(client, model)
        local = _download(uri, version.source, workdir / "source")
        weights = package_weights(local)
        if weights is None:
            raise InputError(f"{model} is not an fsad model (no data/fsad_model/{WEIGHTS})")
        source = {"fsad.source_model": f"models:/{version.name}/{version.version}"}
        if version.tags.get("fsad.train_run_id"):
            source["fsad.train_run_id"] = version.tags["fsad.train_run_id"]
        return weights, source
    path = Path(model)
    if package_weights(path) is not None:
        return package_weights(path), {"fsad.source_model": str(path.resolve())}
    if (path / WEIGHTS).is_file():
        return path, {"fsad.source_model": str(path.resolve())}
    if not path.exists():
        raise InputError(f"--model {model}: no such directory; expected models:/NAME@ALIAS or a model directory")
    raise InputError(f"--model {model}: no {WEIGHTS} here; expected the output of `fsad train` or a registered model")


def fetch_run_weights(uri: str, run_id: str, workdir: Path) -> Path:
    """The final model/ of a training run."""
    from mlflow.exceptions import MlflowException

    client = mlflow_call("connecting to the tracking store", client_for, uri)
    try:
        client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        if not isinstance(exc, MlflowException):
            raise InputError(f"--run {run_id}: {error_line(exc)}") from None
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise InputError(f"--run {run_id}: no such run on the tracking server") from None
        raise InputError(f"--run {run_id}: {error_line(exc)}") from None
    try:
        local = _download(uri, f"runs:/{run_id}/model", workdir / "run")
    except InputError:
        raise InputError(f"--run {run_id} has no model/ artifact; expected a training run logged by `fsad train`") from None
    if not (local / WEIGHTS).is_file():
        raise InputError(f"--run {run_id} has no model/{WEIGHTS}; expected a training run logged by `fsad train`")
    return local
