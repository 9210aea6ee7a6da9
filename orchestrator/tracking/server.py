"""Which tracking server, secrets kept out of everything written or printed, and the MLflow client
(orchestrator/tracking/__init__.py describes the whole room)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from model.errors import InputError

DEFAULT_URI = "sqlite:///mlflow.db"
SWITCH_ENV = "FSAD_TRACKING"
# While replaying, a dead server must fail fast (mlflow's defaults retry 7 times with backoff, ~2 min).
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
SECRET_ENV_WORDS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL")

# ---------------------------------------------------------------------------------------------
# URIs and secrets


def resolve_tracking_uri(cli_uri: str | None = None, no_track: bool = False) -> str | None:
    """The tracking URI to use, or None when tracking is off. Relative sqlite paths become absolute."""
    if no_track:
        return None
    if cli_uri:
        uri = cli_uri
    elif os.environ.get(SWITCH_ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    else:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if not re.match(r"^[a-zA-Z][\w+.-]*:", uri):
        raise InputError(f"--tracking-uri {redact(uri)!r}: expected a URI such as sqlite:///mlflow.db or http://host:5000")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    _check_store_outlives_run(uri, cli_uri)
    return uri


def _check_store_outlives_run(uri: str, cli_uri: str | None) -> None:
    """A Ray job runs in a temporary copy of its working directory: a sqlite file there (the default
    sqlite:///mlflow.db included) vanishes with it, and nobody could browse the run."""
    from workers.files import temporary_workdir

    temp = temporary_workdir()
    path = local_store_path(uri)
    if temp is None or path is None or not path.is_relative_to(temp):
        return
    given = "--tracking-uri" if cli_uri else ("MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else
                                              "the default tracking store")
    raise InputError(f"{given} {redact(uri)} lies in Ray's temporary copy of the working directory ({temp}), which "
                     "is deleted after the job; pass --tracking-uri http://HOST:5000 (a tracking server) or an "
                     "absolute sqlite:////PATH/mlflow.db the user can browse, or --no-track (docs/cluster.md)")


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local tracking store (sqlite:///..., file:...), None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        from urllib.parse import urlsplit

        return Path(os.path.abspath(urlsplit(uri).path or "."))
    return None


# Query or fragment parameters whose name says it carries a secret: ?token=..., &password=...,
# &X-Amz-Signature=... (presigned URLs), &sig=... (SAS), &api_key=..., &access_token=..., &client_secret=...
_SECRET_PARAM = re.compile(
    r"([?&#;](?:[\w.-]*(?:token|password|passwd|pwd|secret|signature|credential|api[_-]?key|apikey|access[_-]?key|"
    r"auth|session)[\w.-]*|sig|key|code)=)[^&#;\s'\"]+", re.IGNORECASE)


def redact(text: Any) -> str:
    """`text` with URI passwords (scheme://user:PASSWORD@host), secret query parameters (?token=...,
    &password=..., presigned-URL signatures) and secret environment values masked."""
    text = re.sub(r"([a-zA-Z][\w+.-]*://[^:/@\s]*):[^@/\s]*@", r"\1:***@", str(text))
    text = _SECRET_PARAM.sub(r"\1***", text)
    for value in _secret_values():
        text = text.replace(value, "***")
    return text


def _secret_values() -> list[str]:
    """Values of environment variables whose names say secret/password/token/key."""
    for _ in range(5):  # other threads (mlflow telemetry) may change os.environ while we iterate
        try:
            env = dict(os.environ)
            break
        except (KeyError, RuntimeError):
            continue
    else:
        env = {}
    return [v for k, v in env.items() if v and len(v) >= 6 and any(w in k.upper() for w in SECRET_ENV_WORDS)]


def uri_key(uri: str) -> str:
    """A stable, non-reversible name for a tracking URI (journals remember it instead of the URI)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def error_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {message[:300]}")


@contextlib.contextmanager
def fast_fail(retries: int = 0):
    """Temporarily make mlflow's HTTP client give up soon (unless the user configured it)."""
    wanted = {**FAST_FAIL_ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    changed = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(changed)
    try:
        yield
    finally:
        for key in changed:
            os.environ.pop(key, None)


def check_database_reachable(uri: str, timeout: float = 3.0) -> None:
    """A database URI whose host does not answer fails here at once (mlflow itself retries creating
    the engine for about 100 s); http and sqlite URIs pass through."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    defaults = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
    if scheme not in defaults:
        return
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or defaults[scheme]), timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"database {parts.hostname}:{parts.port or defaults[scheme]} unreachable ({exc.strerror or exc})") from None


def client_for(uri: str):
    check_database_reachable(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in our logs
    # mlflow prints "View run at <tracking URI>" when a run ends: the URI may hold a password
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    import warnings

    warnings.filterwarnings("ignore", message=r".*type hints to the .predict. method", category=UserWarning)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_permanent(exc: BaseException) -> bool:
    """Errors the server will give again for the same event (bad value, duplicate): skip the event."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code in (
        "INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST", "MALFORMED_REQUEST",
    )


def warn(message: str) -> None:
    print(f"fsad: tracking: {redact(message)}", file=sys.stderr)


# MLflow 3.x before 3.17 picked an experiment's landing page from this tag (runs table, not the GenAI
# overview). 3.17's UI ignores it: the view follows its "GenAI / Model training" switch, which a browser
# keeps in localStorage (default GenAI) and a URL can set. Links fsad prints carry RUNS_VIEW_QUERY, which
# opens the runs table in any browser (measured by benchmarks/mlflow_screenshots.py); the tag stays for
# the releases that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
RUNS_VIEW_QUERY = "workflowType=machine_learning"


def runs_page_url(server: str, experiment_id: str) -> str | None:
    """The UI page that lists the experiment's runs, for an http(s) tracking server (credentials dropped);
    None for other stores (sqlite: the user starts `mlflow ui` and picks the port)."""
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment_id}?{RUNS_VIEW_QUERY}"


def ensure_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing (artifacts under `artifact_location` when given),
    tagged as machine-learning development (an experiment someone tagged otherwise keeps their tag)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by another process
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in (found.tags or {}):
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id

