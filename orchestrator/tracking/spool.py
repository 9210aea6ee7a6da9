"""The spool: every run is first a journal on local disk, replayed to the tracking server as it goes
(the layout is in orchestrator/tracking/__init__.py)."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from orchestrator.tracking.server import (client_for, ensure_experiment, error_line, fast_fail, is_permanent,
                                          local_store_path, redact, uri_key, warn)
from workers.files import atomic_write_text

SPOOL_ENV = "FSAD_SPOOL_DIR"
DEFAULT_SPOOL = "mlflow-spool"


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


def record_synced(root: Path, local_id: str, run_id: str) -> None:
    with open(root / "synced.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"local_id": local_id, "run_id": run_id}) + "\n")


def synced_run_id(root: Path, local_id: str) -> str | None:
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
                    if event["type"] != "create" and is_permanent(exc):
                        warn(f"run {state['run_id']}: the server refused a {event['type']} event ({error_line(exc)}); skipped")
                    else:
                        journal.save_state(state)
                        raise
                state["sent"] = i + n
                journal.save_state(state)
        if state["sent"] >= len(events) and events and events[-1]["type"] == "end":
            record_synced(self.root, journal.local_id, state["run_id"])
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
            parent = synced_run_id(self.root, event["parent_local_id"])
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

