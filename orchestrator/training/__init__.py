"""Training: one loop (loop.py) feeding one learner (learner.py) from a worker set, in-process
(local.py) or on Ray (remote.py, scheduler.py, cluster.py); checkpoints (checkpoint.py), checkpoint
selection (selection.py) and the run's inputs (inputs.py).

No re-exports here: orchestrator.tracking.artifacts imports training.checkpoint, and training.loop imports
orchestrator.tracking.artifacts, so a package-level import of the loop would be circular."""
