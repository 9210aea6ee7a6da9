"""MLflow tracking that never stops a training run: every run is first a journal on local disk (the
spool), replayed to the tracking server as it goes. If the server goes away, events wait in the journal
and the next flush (or `fsad sync-runs`) sends them; nothing is dropped and training does not notice.

Which server: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working
directory (artifacts under ./mlruns). `--no-track`, or FSAD_TRACKING=0 in the environment, turns
tracking off (the test suite's default; an explicit --tracking-uri still wins over the variable).

Spool layout (FSAD_SPOOL_DIR, default ./mlflow-spool):
    <local_id>/events.jsonl   one JSON event per line, each appended with one write; a torn last line
                              (a crash mid-write) is ignored on replay
    <local_id>/state.json     {"uri_key", "uri", "run_id", "sent"}, rewritten atomically after each replay
    <local_id>/files/<n>/     artifact snapshots waiting for upload (deleted once uploaded)
    synced.jsonl              {"local_id", "run_id"} of journals fully replayed (their folders are removed)

Secrets: the tracking URI is never logged or written down (only a redacted form and a hash to match
journals to servers); every param and tag value and every message printed passes through `redact`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Iterable

from model.errors import InputError
from orchestrator.checkpoint import sha256_of
from workers.files import atomic_write_text

DEFAULT_URI = "sqlite:///mlflow.db"
SPOOL_ENV = "FSAD_SPOOL_DIR"
SWITCH_ENV = "FSAD_TRACKING"
DEFAULT_SPOOL = "mlflow-spool"
FLUSH_EVERY_S = 2.0  # replay pending events at most this often while a run is healthy ...
FLUSH_EVERY_EVENTS = 200  # ... or as soon as this many are pending
RETRY_AFTER_S = 5.0  # after a failed replay, wait this long before trying again
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


def _is_permanent(exc: BaseException) -> bool:
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


# ---------------------------------------------------------------------------------------------
# Journal: one run's events on disk


def spool_root(root: str | Path | None = None) -> Path:
    """--spool, else $FSAD_SPOOL_DIR, else ./mlflow-spool; in a temporary working directory (a Ray job's)
    the default moves to ~/.cache/fsad/mlflow-spool, so journals waiting for the server outlive the job."""
    if root or os.environ.get(SPOOL_ENV):
        return Path(root or os.environ[SPOOL_ENV]).resolve()
    from workers.files import temporary_workdir

    if temporary_workdir() is not None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return (cache / "fsad" / DEFAULT_SPOOL).resolve()
    return Path(DEFAULT_SPOOL).resolve()


class Journal:
    """Append-only JSONL events + a replay cursor for one run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.events_file = folder / "events.jsonl"
        self.state_file = folder / "state.json"

    @classmethod
    def create(cls, root: Path, uri: str) -> "Journal":
        local_id = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:8]}"
        journal = cls(root / local_id)
        journal.folder.mkdir(parents=True)
        journal.save_state({"uri_key": uri_key(uri), "uri": redact(uri), "run_id": None, "sent": 0})
        return journal

    @property
    def local_id(self) -> str:
        return self.folder.name

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_file, json.dumps(state))

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, allow_nan=True) + "\n"
        with open(self.events_file, "a", encoding="utf-8") as handle:
            handle.write(line)  # one write per event; a crash can only tear the last line
            handle.flush()

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.is_file():
            return []
        out = []
        for line in self.events_file.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # torn last line
        return out

    def snapshot(self, paths: Iterable[Path], seq: int) -> str:
        """Copy files/folders into files/<seq>/ (so later checkpoints cannot change what is uploaded)."""
        target = self.folder / "files" / str(seq)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.is_dir():
                shutil.copytree(path, target / path.name, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target / path.name)
        return str(target.relative_to(self.folder))


def _record_synced(root: Path, local_id: str, run_id: str) -> None:
    with open(root / "synced.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"local_id": local_id, "run_id": run_id}) + "\n")


def _synced_run_id(root: Path, local_id: str) -> str | None:
    journal = Journal(root / local_id)
    if journal.state_file.is_file():
        return journal.state().get("run_id")
    path = root / "synced.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("local_id") == local_id:
                return row.get("run_id")
    return None


# ---------------------------------------------------------------------------------------------
# Replay: journal events -> MlflowClient calls


class Replayer:
    """Sends a journal's unsent events to the server; stops at the first transient failure."""

    def __init__(self, uri: str, root: Path):
        self.uri, self.root = uri, root
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.uri)
        return self._client

    def replay(self, journal: Journal) -> bool:
        """True when every event has been sent (the journal is then removed)."""
        from mlflow.entities import Metric, Param, RunTag

        state = journal.state()
        events = journal.events()
        with fast_fail():
            while state["sent"] < len(events):
                i = state["sent"]
                event = events[i]
                n = 1
                try:
                    if event["type"] == "create":
                        state["run_id"] = self._create(event, journal.local_id)
                    elif event["type"] == "metrics":
                        # one log_batch for a run of consecutive metric events (at most 1000 values)
                        batch = []
                        while i + n - 1 < len(events) and events[i + n - 1]["type"] == "metrics" and len(batch) < 900:
                            e = events[i + n - 1]
                            batch += [Metric(k, float(v), e["ts"], e["step"]) for k, v in e["values"].items()]
                            n += 1
                        n -= 1
                        self.client.log_batch(state["run_id"], metrics=batch)
                    elif event["type"] == "params":
                        items = [Param(k, v) for k, v in event["values"].items()]
                        for start in range(0, len(items), 100):
                            self.client.log_batch(state["run_id"], params=items[start : start + 100])
                    elif event["type"] == "tags":
                        self.client.log_batch(state["run_id"], tags=[RunTag(k, v) for k, v in event["values"].items()])
                    elif event["type"] == "artifact":
                        folder = journal.folder / event["files"]
                        if folder.is_dir():
                            self.client.log_artifacts(state["run_id"], str(folder), event["artifact_path"] or None)
                            shutil.rmtree(folder, ignore_errors=True)
                    elif event["type"] == "input":
                        self._log_input(state["run_id"], event)
                    elif event["type"] == "end":
                        self.client.set_terminated(state["run_id"], event["status"], event["ts"])
                except Exception as exc:  # noqa: BLE001 - the server's problem must not stop training
                    if event["type"] != "create" and _is_permanent(exc):
                        warn(f"run {state['run_id']}: the server refused a {event['type']} event ({error_line(exc)}); skipped")
                    else:
                        journal.save_state(state)
                        raise
                state["sent"] = i + n
                journal.save_state(state)
        if state["sent"] >= len(events) and events and events[-1]["type"] == "end":
            _record_synced(self.root, journal.local_id, state["run_id"])
            shutil.rmtree(journal.folder, ignore_errors=True)
        return state["sent"] >= len(events)

    def _experiment_id(self, name: str) -> str:
        location = None
        if self.uri.startswith("sqlite:"):
            from workers.files import temporary_workdir

            if temporary_workdir() is not None:  # mlflow's default, ./mlruns, would vanish with the job
                location = (local_store_path(self.uri).parent / "mlruns").as_uri()
        return ensure_experiment(self.client, name, artifact_location=location)

    def _create(self, event: dict[str, Any], local_id: str) -> str:
        experiment_id = self._experiment_id(event["experiment"])
        if event.get("reopen"):  # the oldest live run with this tag, RUNNING again (a resumed study's parent)
            key, value = event["reopen"]
            found = self.client.search_runs([experiment_id], f"tags.`{key}` = '{value}'", max_results=1,
                                            order_by=["attributes.start_time ASC"])
            if found:
                self.client.update_run(found[0].info.run_id, status="RUNNING")
                return found[0].info.run_id
        # Idempotent: a crash between create_run and saving the cursor must not make a second run.
        existing = self.client.search_runs([experiment_id], f"tags.`fsad.local_id` = '{local_id}'", max_results=1)
        if existing:
            return existing[0].info.run_id
        tags = dict(event["tags"])
        tags["fsad.local_id"] = local_id
        parent = event.get("parent_run_id")
        if not parent and event.get("parent_local_id"):
            parent = _synced_run_id(self.root, event["parent_local_id"])
            if not parent:
                raise RuntimeError(f"parent run {event['parent_local_id']} is not on the server yet")
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, start_time=event["ts"], tags=tags, run_name=event["name"])
        return run.info.run_id

    def _log_input(self, run_id: str, event: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        d = event["dataset"]
        dataset = Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"), d.get("profile"))
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", event["context"])])])


# ---------------------------------------------------------------------------------------------
# The API used by the commands


class TrackedRun:
    """One MLflow run, journaled. All methods return quickly and never raise for server trouble.

    reopen=(tag, value): continue the oldest run of the experiment tagged tag=value (status RUNNING again)
    instead of creating one; decided when the journal reaches the server, so it holds offline too."""

    def __init__(self, uri: str, name: str, experiment: str, tags: dict[str, Any] | None = None,
                 parent: "TrackedRun | str | None" = None, root: str | Path | None = None,
                 reopen: tuple[str, str] | None = None):
        self.uri = uri
        self.root = spool_root(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal = Journal.create(self.root, uri)
        self.replayer = Replayer(uri, self.root)
        self.name = name
        self._pending = 0
        self._seq = 0
        self._last_attempt = 0.0
        self._last_failure = -1e9
        self._warned = False
        self._run_id: str | None = None
        self._top_level = parent is None  # only these say where to browse when they end
        event: dict[str, Any] = {"type": "create", "name": name, "experiment": experiment, "ts": _now_ms(),
                                 "tags": {k: redact(v) for k, v in (tags or {}).items()}}
        if reopen is not None:
            if not re.fullmatch(r"[\w.-]+", f"{reopen[0]}{reopen[1]}"):
                raise ValueError(f"reopen tag {reopen!r}: letters, digits, '_', '.', '-' only")
            event["reopen"] = list(reopen)
            event["tags"][reopen[0]] = reopen[1]
        if isinstance(parent, TrackedRun):
            if parent.run_id:
                event["parent_run_id"] = parent.run_id
            else:
                event["parent_local_id"] = parent.local_id
        elif parent:
            event["parent_run_id"] = parent
        self._append(event)
        self.flush(force=True)

    @property
    def local_id(self) -> str:
        return self.journal.local_id

    @property
    def run_id(self) -> str | None:
        if self._run_id is None and self.journal.state_file.is_file():
            self._run_id = self.journal.state().get("run_id")
        elif self._run_id is None:
            self._run_id = _synced_run_id(self.root, self.local_id)
        return self._run_id

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"type": "params", "values": {k: redact(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._append({"type": "tags", "values": {k: redact(v)[:8000] for k, v in tags.items()}})

    def log_metrics(self, values: dict[str, Any], step: int = 0) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self._append({"type": "metrics", "values": clean, "step": int(step), "ts": _now_ms()})
        self.flush()

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str = "") -> None:
        """Files or folders (a folder's contents go under artifact_path/<folder name>)."""
        paths = [Path(p) for p in paths if Path(p).exists()]
        if not paths:
            return
        self._seq += 1
        files = self.journal.snapshot(paths, self._seq)
        self._append({"type": "artifact", "files": files, "artifact_path": artifact_path})
        self.flush()

    def log_input(self, dataset: dict[str, Any], context: str = "training") -> None:
        self._append({"type": "input", "dataset": dataset, "context": context})

    def end(self, status: str = "FINISHED") -> bool:
        """Close the run; True when everything reached the server (else it waits in the spool)."""
        self._append({"type": "end", "status": status, "ts": _now_ms()})
        done = self.flush(force=True)
        if not done:
            time.sleep(1.0)
            done = self.flush(force=True)
        if not done:
            warn(f"run {self.name!r}: {self._pending} events wait in {self.journal.folder}; "
                 "upload them with `fsad sync-runs` once the tracking server is back")
        elif self._top_level and self.run_id and urllib.parse.urlsplit(self.uri).scheme in ("http", "https"):
            self._say_where()
        return done

    def _say_where(self) -> None:
        try:
            experiment_id = self.replayer.client.get_run(self.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a hint only; the run itself reached the server
            return
        url = runs_page_url(self.uri, experiment_id)
        if url:
            print(f"fsad: tracking: run {self.name!r} is in the runs table at {redact(url)}", file=sys.stderr)

    # -- replay ----------------------------------------------------------------------------
    def _append(self, event: dict[str, Any]) -> None:
        self.journal.append(event)
        self._pending += 1

    def flush(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force:
            if now - self._last_failure < RETRY_AFTER_S:
                return False
            if self._pending < FLUSH_EVERY_EVENTS and now - self._last_attempt < FLUSH_EVERY_S:
                return False
        self._last_attempt = now
        try:
            done = self.replayer.replay(self.journal)
        except Exception as exc:  # noqa: BLE001 - an outage is not the training run's problem
            self._last_failure = time.monotonic()
            if not self._warned:
                warn(f"server unreachable ({error_line(exc)}); buffering run {self.name!r} in {self.journal.folder}")
                self._warned = True
            return False
        if self._warned:
            warn(f"server back; run {self.name!r} caught up")
            self._warned = False
        self._pending = 0
        return done


def _now_ms() -> int:
    return int(time.time() * 1000)


def end_running_runs(uri: str, experiment: str, tags: dict[str, str], status: str = "KILLED",
                     select=None, set_tags: dict[str, Any] | None = None) -> list[str] | None:
    """End the RUNNING runs of `experiment` tagged with every item of `tags` and accepted by
    select(run tags) (all when None): `set_tags` added, then `status` with end time now. For runs whose
    process died and cannot end them itself (a killed `fsad tune` trial).

    -> the ids of the runs ended, or None when the server could not be asked (warned, never raised: the
    caller goes on, and calling again later is safe)."""
    from mlflow.entities import RunTag

    for key, value in tags.items():
        if not re.fullmatch(r"[\w.-]+", f"{key}{value}"):
            raise ValueError(f"tag {key}={value!r}: letters, digits, '_', '.', '-' only")
    query = " AND ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'RUNNING'"])
    try:
        with fast_fail():
            client = client_for(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                return []
            ended = []
            for run in client.search_runs([found.experiment_id], query, max_results=1000):
                if select is not None and not select(run.data.tags):
                    continue
                if set_tags:
                    client.log_batch(run.info.run_id, tags=[RunTag(k, redact(v)) for k, v in set_tags.items()])
                client.set_terminated(run.info.run_id, status, _now_ms())
                ended.append(run.info.run_id)
            return ended
    except Exception as exc:  # noqa: BLE001 - the server's trouble is not the caller's
        warn(f"could not end the RUNNING runs tagged {tags} ({error_line(exc)})")
        return None


def sync_runs(uri: str, root: str | Path | None = None) -> dict[str, int]:
    """`fsad sync-runs`: replay every journal recorded for this tracking URI (oldest first)."""
    root = spool_root(root)
    counts = {"synced": 0, "pending": 0, "other_server": 0}
    if not root.is_dir():
        return counts
    replayer = Replayer(uri, root)
    key = uri_key(uri)
    for folder in sorted(p for p in root.iterdir() if (p / "state.json").is_file()):
        journal = Journal(folder)
        if journal.state().get("uri_key") != key:
            counts["other_server"] += 1
            continue
        try:
            done = replayer.replay(journal)
        except Exception as exc:  # noqa: BLE001
            warn(f"{folder.name}: {error_line(exc)}")
            done = False
        counts["synced" if done else "pending"] += 1
    return counts


# ---------------------------------------------------------------------------------------------
# Data version


sha256_file = sha256_of  # one streaming sha256 for checkpoints and data versions


def find_manifest(data_root: str | Path) -> Path | None:
    path = Path(data_root) / "manifest.parquet"
    return path if path.is_file() else None


def data_version(data_root: Any, manifest: str | Path | None = None) -> dict[str, Any]:
    """{"hash", "kind", "dataset"?}: the manifest's sha256 when there is one (kind=manifest), else a
    listing hash of the relative paths and sizes of every file under the root (kind=listing).

    data_root: a folder, a manifest .parquet file, or a workers.manifest source (folder or manifest)."""
    if data_root is None and manifest is not None:  # images named by the manifest alone
        data_root = Path(manifest)
    if not isinstance(data_root, (str, Path)):
        source_manifest = getattr(data_root, "manifest", None)
        if source_manifest is not None:  # a workers.manifest.ManifestSource
            data_root, manifest = source_manifest.root, source_manifest.path
        else:  # a workers.manifest.FolderSource
            data_root = data_root.root
    root = Path(data_root)
    if root.suffix == ".parquet" and root.is_file():
        root, manifest = root.parent, root
    manifest = Path(manifest) if manifest else find_manifest(root)
    if manifest and manifest.is_file():
        sha = sha256_file(manifest)
        profile = None
        with contextlib.suppress(Exception):
            import pyarrow.parquet as pq

            profile = json.dumps({"num_rows": pq.read_metadata(manifest).num_rows})
        dataset = {"name": root.resolve().name, "digest": sha[:16], "source_type": "local",
                   "source": json.dumps({"uri": str(manifest.resolve())}), "schema": None, "profile": profile}
        return {"hash": sha, "kind": "manifest", "dataset": dataset}
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return {"hash": digest.hexdigest(), "kind": "listing"}
