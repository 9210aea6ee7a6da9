"""What a study leaves: best_params.yaml (params.yaml-shaped), best.json and plots, logged to the parent run."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.config import Config, save_config
from orchestrator.tracking.runs import TrackedRun
from orchestrator.tuning.objective import Plan, apply_params
from workers.files import atomic_write_text

BEST_PARAMS = "best_params.yaml"
BEST_JSON = "best.json"


def finish(study: optuna.Study, cfg: Config, plan: Plan, out: Path, parent: TrackedRun | None) -> dict[str, Any]:
    """best_params.yaml (params.yaml-shaped), best.json, plots/; all of them logged to the parent run."""
    trials = study.get_trials(deepcopy=False)
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(trials), "states": states,
                               "target": plan.target, "validation": plan.validation, "train": plan.train}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    files = []
    if complete:
        best = study.best_trial
        best_cfg = apply_params(cfg, best.params)
        save_config(best_cfg, out / BEST_PARAMS)
        record = {"value": best.value, "trial": best.number, "params": best.params, **set_arguments(best.params)}
        atomic_write_text(out / BEST_JSON, json.dumps(record, indent=2))
        summary.update(best_value=best.value, best_trial=best.number, best_params=best.params,
                       best_params_file=str(out / BEST_PARAMS))
        files += [out / BEST_PARAMS, out / BEST_JSON]
    plots = write_plots(study, out / "plots")
    summary["plots"] = [str(p) for p in plots]
    if parent is not None:
        step = len(trials)  # a resumed study's parent gets one point per invocation
        if complete:
            parent.log_metrics({"best_objective": study.best_value}, step=step)
        parent.log_metrics({f"trials_{k}": v for k, v in states.items()}, step=step)
        parent.log_artifacts(files, "")
        parent.log_artifacts(plots, "plots")
        summary["run_id"] = parent.run_id
    return summary


def set_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """best.json's command-line forms of {config key: value}: `set` (k=v), `fsad_train` (--set k=v ...),
    `dvc_exp_run` (-S k=v ...)."""
    sets = [f"{k}={v}" for k, v in params.items()]
    return {"set": sets, "fsad_train": " ".join(f"--set {s}" for s in sets),
            "dvc_exp_run": " ".join(f"-S {s}" for s in sets)}


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """History, parameter importances, parallel coordinates as PNG; a plot the study cannot have yet
    (importances need two completed trials with varied parameters) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("history", vis.plot_optimization_history), ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.savefig(folder / f"{name}.png", dpi=80, bbox_inches="tight")
            plt.close(figure)
            written.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
            plt.close("all")
    return written
