"""TrackedRun, the API the commands use: one MLflow run, journaled, that never stops training."""
from __future__ import annotations

import re
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable

from orchestrator.tracking.server import client_for, error_line, fast_fail, redact, runs_page_url, warn
from orchestrator.tracking.spool import Journal, Replayer, spool_root, synced_run_id

FLUSH_EVERY_S = 2.0  # replay pending events at most this often while a run is healthy ...
FLUSH_EVERY_EVENTS = 200  # ... or as soon as this many are pending
RETRY_AFTER_S = 5.0  # after a failed replay, wait this long before trying again


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
        event: dict[str, Any] = {"type": "create", "name": name, "experiment": experiment, "ts": now_ms(),
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
            self._run_id = synced_run_id(self.root, self.local_id)
        return self._run_id

    # -- logging ---------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._append({"type": "params", "values": {k: redact(v)[:6000] for k, v in params.items()}})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._append({"type": "tags", "values": {k: redact(v)[:8000] for k, v in tags.items()}})

    def log_metrics(self, values: dict[str, Any], step: int = 0) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if clean:
            self._append({"type": "metrics", "values": clean, "step": int(step), "ts": now_ms()})
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
        self._append({"type": "end", "status": status, "ts": now_ms()})
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


def now_ms() -> int:
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
                client.set_terminated(run.info.run_id, status, now_ms())
                ended.append(run.info.run_id)
            return ended
    except Exception as exc:  # noqa: BLE001 - the server's trouble is not the caller's
        warn(f"could not end the RUNNING runs tagged {tags} ({error_line(exc)})")
        return None

