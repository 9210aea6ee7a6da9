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

Modules:
    server.py        which tracking URI, secrets redacted, the MLflow client, experiments, UI links
    spool.py         the journal on disk, its replay to the server, `fsad sync-runs`
    runs.py          TrackedRun (the API the commands use), ending runs a dead process left RUNNING
    data_version.py  the data hash and dataset input of a run
    tracked.py       the training run's callbacks, `evaluate` and `video` inside MLflow runs
                     (`tracked_train` is orchestrator/training/tracked.py: tracking never imports training)
    artifacts.py     model directories (weights, config, meta) and their on-disk format
    fetch.py         the model a registration adapts: registered versions, runs, folders
    registry.py      per-category registered models and their aliases
    pyfunc.py        the registered model as an MLflow pyfunc (data only)
"""
