"""Training: one loop (loop.py) feeding one learner (learner.py) from a worker set, in-process
(local.py) or on Ray (remote.py, scheduler.py, cluster.py); checkpoints (checkpoint.py), checkpoint
selection (selection.py), the run's inputs (inputs.py) and `train` inside an MLflow run (tracked.py).

Training imports tracking (the model-directory format, the run's callbacks), never the reverse. No
re-exports here: importing checkpoint.py (as evaluation does) should not load the loop or Ray."""
