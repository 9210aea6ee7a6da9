"""Optuna study storage for `fsad tune`: a journal file given a heartbeat, or an RDB URL with Optuna's."""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials() looks for
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from model.errors import InputError
from orchestrator.config import Config
from orchestrator.tracking.server import check_database_reachable, redact

HEARTBEAT_ATTR = "fsad:heartbeat"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """A journal log with Optuna's heartbeat protocol: the heartbeat is a trial system attribute."""

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int, callback=None):
        super().__init__(JournalFileBackend(path))
        self.path, self.heartbeat_interval, self.grace_period, self.callback = path, heartbeat_interval, grace_period, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.system_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp() if trial.datetime_start else now)
            if now - last > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.callback


def storage_kind(url: str) -> str:
    """rdb | journal; anything else is bad input."""
    scheme = re.match(r"^([a-zA-Z][\w+.-]*)://", url)
    if scheme:
        if scheme.group(1).split("+")[0] in RDB_SCHEMES:
            return "rdb"
        raise InputError(f"--storage {redact(url)!r}: expected sqlite:///FILE, postgresql+psycopg2://…, "
                         "mysql://… or a journal file path")
    return "journal"


def open_storage(url: str, cfg: Config) -> BaseStorage:
    """The Optuna storage behind `url`, heartbeat on; an unreachable one is a one-line InputError."""
    t = cfg.tune
    retry = RetryHeartbeatStaleTrialCallback(max_retry=t.max_retry)
    if not url.strip():
        raise InputError("--storage is empty: expected a journal file path or a database URL")
    if storage_kind(url) == "journal":
        path = Path(url[len("journal:"):] if url.startswith("journal:") else url)
        if path.is_dir():
            raise InputError(f"--storage {url} is a directory; expected a journal file path")
        _make_folder(path.parent, url)
        return JournalHeartbeatStorage(str(path), t.heartbeat_interval, t.grace_period, retry)
    if url.startswith("sqlite:///"):
        _make_folder(Path(url[len("sqlite:///"):]).parent, url)
    try:
        check_database_reachable(url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=t.heartbeat_interval,
                              grace_period=t.grace_period, heartbeat_stale_trial_callback=retry)
    except ImportError as exc:
        raise InputError(f"--storage {redact(url)}: no database driver ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - connection refused, unknown database, bad credentials ...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"--storage {redact(url)}: unreachable ({redact(first)})") from None


def _make_folder(folder: Path, url: str) -> None:
    """The storage file's folder, created when missing (docs/tuning.md's tune/journal.log on a fresh clone)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--storage {url}: cannot create folder {folder} ({exc.strerror or type(exc).__name__}); "
                         "expected a path in a folder you can write") from None
