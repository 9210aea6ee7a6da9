"""Hyperparameter search with Optuna: the objective, the storage, and the study runner (trials as Ray tasks).

Protocol (no leakage into the leave-one-out numbers): the final `target` category is never loaded; the
validation categories (tune.validation, default the last remaining category) are held out of every
trial's training; a trial meta-trains on the rest and, every tune.eval_every episodes, adapts to each
validation category with tune.eval_shots normal images and reports

    objective = mean over validation categories of mean(image AUROC, pixel AUROC where masks exist)

to the pruner (MedianPruner by default, HyperbandPruner or none). Trial parameters are named by the
config key they set (`model.tau`, ...), so the best ones are `fsad train --set` arguments as they stand.

Storage: an RDB URL (sqlite:///…, postgresql+psycopg2://…) uses Optuna's heartbeat; a file path (or
journal:PATH) is a JournalFileBackend log, given the same heartbeat here (`JournalHeartbeatStorage`).
A trial whose process died is failed once its heartbeat is tune.grace_period seconds old and re-enqueued
with the same parameters (RetryHeartbeatStaleTrialCallback), so a killed study resumes without
duplicate or lost trials. Parallel trials are Ray tasks (`run_trials`, a plain function made remote
only in `_run_round`) that all open the same storage.

Modules:
    storage.py    the study storage (journal file with a heartbeat, or an RDB URL)
    objective.py  one trial: the plan of categories, its config, training, validation, pruning
    sampler.py    the trial-seeded TPE sampler and the pruner
    runner.py     the study loop: rounds of trials in process or as Ray tasks, kill-and-resume
    results.py    best_params.yaml, best.json and the plots of a study
"""
