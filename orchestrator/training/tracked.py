"""`train` inside an MLflow training run (the commands and `run_loo` call this).

Here rather than in tracking/ so that tracking never imports training: the run's callbacks are
orchestrator.tracking.tracked.TrainingTracker; the loop they are plugged into is training/loop.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.tracking.tracked import TrainingTracker
from orchestrator.training.loop import train


def tracked_train(cfg: Config, data_root, out, resume: bool = False, progress: bool = True,
                  uri: str | None = None, manifest=None, **kwargs) -> dict[str, Any]:
    """`train` inside a training run (plain `train` when uri is None); kwargs go to `train`."""
    if manifest is not None:
        kwargs["manifest"] = manifest
    if uri is None or (isinstance(data_root, (str, Path)) and not Path(data_root).exists()):
        # bad input fails in train() before any run exists
        return train(cfg, data_root, out, resume=resume, progress=progress, **kwargs)
    tracker = TrainingTracker(uri, cfg, data_root, out, resume, manifest)
    try:
        summary = train(cfg, data_root, out, resume=resume, progress=progress, on_log=tracker.on_log,
                        on_checkpoint=tracker.on_checkpoint, **kwargs)
    except KeyboardInterrupt:
        tracker.finish(None, "KILLED")
        raise
    except BaseException:
        tracker.finish(None, "FAILED")
        raise
    tracker.finish(summary)
    summary["run_id"] = tracker.run.run_id
    return summary
