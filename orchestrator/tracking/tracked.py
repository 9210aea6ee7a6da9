"""MLflow runs around training (TrainingTracker: orchestrator/training/tracked.py and the Ray path feed it),
`evaluate` and `video` (the commands and `run_loo` call these).

Training run (one per `fsad train`, named "train METHOD held-out CATS K=k"): params = the resolved config flattened (+ data.root); tags =
method, held-out categories, data hash; input = the data manifest (digest) when there is one; metrics
per update (loss terms, energies, inpaint gain, staleness, throughput), step = episode; artifacts =
checkpoints/episode_NNNNNN/ at every checkpoint and model/ (weights, config, meta) at the end. The
run's ids are written to <model dir>/tracking.json so that evaluations and registrations nest under it.

Evaluation (one per `fsad evaluate`): a summary run "eval CAT K=k METHOD" under the training run
(mean/std metrics, realised false-alarm rate and recall at the calibrated threshold, overlays, ROC and
PRO curves of every draw, the first draw's score histogram with its threshold, metrics.json, and with
--report index.html) and one child run per support draw (its metrics, its support indices, its ROC and
PRO curves, its score histogram with the threshold line).
"""
from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

from model import metrics
from model.methods import OURS
from orchestrator.config import Config
from orchestrator.evaluation.evaluate import CALIBRATION_NAMES, METRIC_NAMES, evaluate, prepare_evaluation
from orchestrator.tracking.artifacts import CONFIG, MANIFEST, META, STATE, WEIGHTS
from orchestrator.tracking.data_version import data_version
from orchestrator.tracking.runs import TrackedRun
from orchestrator.tracking.server import uri_key
from orchestrator.tracking.spool import spool_root, synced_run_id
from workers.files import atomic_write_text

TRACKING_FILE = "tracking.json"


def param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


class TrainingTracker:
    """Callbacks for `train(on_log=..., on_checkpoint=...)` that feed one MLflow run."""

    def __init__(self, uri: str, cfg: Config, data_root: str | Path, out: str | Path, resume: bool = False,
                 manifest: str | Path | None = None):
        self.out = Path(out)
        held_out = ",".join(cfg.data.exclude) or "none"
        previous = read_tracking_file(self.out) if resume else {}
        version = data_version(data_root, manifest)
        tags = {"fsad.kind": "train", "fsad.method": cfg.train.method, "fsad.held_out": held_out,
                "data.hash": version["hash"], "data.hash_kind": version["kind"]}
        if previous.get("run_id"):
            tags["fsad.resumed_from"] = previous["run_id"]
        # the name says what a person scans the runs table for: method, held-out categories, K
        self.run = TrackedRun(uri, f"train {cfg.train.method} held-out {held_out} K={cfg.train.shots}",
                              cfg.tracking.experiment, tags)
        params = {k: param_value(v) for k, v in cfg.flatten().items()}
        params["data.root"] = str(Path(data_root).resolve()) if isinstance(data_root, (str, Path)) else str(data_root)
        self.run.log_params(params)
        if "dataset" in version:
            self.run.log_input(version["dataset"], "training")
        self.uri, self.experiment = uri, cfg.tracking.experiment
        self._last: float | None = None

    def on_log(self, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        step = int(record.get("update", record["episode"]))  # Ray records: update count; in-process: episode
        values = {k: v for k, v in record.items() if k not in ("episode", "update")}
        # The in-process learner makes its negatives with the current weights: staleness 0 updates.
        values.setdefault("staleness", 0.0)
        if self._last is not None and now > self._last:
            values["throughput_episodes_per_s"] = 1.0 / (now - self._last)
        self._last = now
        self.run.log_metrics(values, step=step)

    def on_checkpoint(self, episode: int, out: Path) -> None:
        files = [out / WEIGHTS, out / CONFIG, out / META, out / STATE, out / MANIFEST]
        self.run.log_artifacts(files, f"checkpoints/episode_{episode:06d}")

    def finish(self, summary: dict[str, Any] | None, status: str = "FINISHED") -> bool:
        if summary is not None:
            self.run.log_metrics({"train_seconds": summary["seconds"]}, step=int(summary["episodes"]))
            self.run.log_artifacts([self.out / WEIGHTS, self.out / CONFIG, self.out / META], "model")
        done = self.run.end(status)
        if self.out.is_dir():
            write_tracking_file(self.out, self.run, self.uri, self.experiment)
        return done


def write_tracking_file(out: Path, run: TrackedRun, uri: str, experiment: str) -> None:
    atomic_write_text(out / TRACKING_FILE, json.dumps(
        {"run_id": run.run_id, "local_id": run.local_id, "uri_key": uri_key(uri), "experiment": experiment,
         "spool": str(run.root)}, indent=2))


def read_tracking_file(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / TRACKING_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def training_parent(model_dir: str | Path, uri: str) -> str | None:
    """The training run of a model directory on this tracking server, if it was tracked there."""
    info = read_tracking_file(model_dir)
    if not info or info.get("uri_key") != uri_key(uri):
        return None
    if info.get("run_id"):
        return info["run_id"]
    return synced_run_id(spool_root(info.get("spool")), info.get("local_id", ""))


class EvaluationRuns:
    """The summary run of one `fsad evaluate` and, through `on_draw`, one child run per support draw."""

    def __init__(self, uri: str, prepared, model_dir, data_root, category: str, shots: int, draws: int,
                 method: str, seed: int | None, out: Path, options: dict[str, Any]):
        cfg = prepared.cfg
        self.uri, self.experiment, self.out = uri, cfg.tracking.experiment, out
        self.category, self.shots, self.method = category, shots, method
        parent = training_parent(model_dir, uri)
        self.base_tags = {"fsad.category": category, "fsad.shots": shots, "fsad.method": method,
                          "fsad.model_dir": str(Path(model_dir).resolve())}
        if parent:
            self.base_tags["fsad.train_run_id"] = parent
        self.summary = TrackedRun(uri, f"eval {category} K={shots} {method}", self.experiment,
                                  {**self.base_tags, "fsad.kind": "eval"}, parent=parent)
        version = data_version(options.get("manifest") or data_root)
        self.summary.set_tags({"data.hash": version["hash"], "data.hash_kind": version["kind"]})
        if "dataset" in version:
            self.summary.log_input(version["dataset"], "evaluation")
        self.target_fpr = options.get("fpr") if options.get("fpr") is not None else cfg.eval.fpr
        self.summary.log_params({"category": category, "shots": shots, "draws": draws, "method": method,
                                 "seed": cfg.eval.seed if seed is None else seed, "data.root": str(data_root),
                                 "target_fpr": self.target_fpr, "calibration": cfg.eval.calibration,
                                 "calibration_augment": ",".join(cfg.eval.calibration_augment),
                                 "calibration_size_correction": cfg.eval.calibration_size_correction})
        self.rocs: list = []
        self.pros: list = []
        self.first_hist: list[Path] = []

    def on_draw(self, record: dict[str, Any], scores, maps, test) -> None:
        from orchestrator.reporting.plots import histogram_png, pro_png, roc_png

        draw, category, shots, method, plots = record["draw"], self.category, self.shots, self.method, self.out / "plots"
        child = TrackedRun(self.uri, f"eval {category} K={shots} {method} draw {draw}", self.experiment,
                           {**self.base_tags, "fsad.kind": "eval_draw", "fsad.draw": draw}, parent=self.summary)
        child.log_params({"category": category, "shots": shots, "draw": draw, "method": method,
                          "support": json.dumps(record["support"])})
        child.log_metrics({k: v for k, v in record.items()
                           if k in METRIC_NAMES + CALIBRATION_NAMES + ("score_gap",) and v is not None})
        pictures = []
        histogram_png(plots / f"scores_draw{draw}.png", scores.numpy(), test.labels.numpy(),
                      record.get("threshold"), f"{category} K={shots} {method} draw {draw}: image scores",
                      record.get("calibration_samples"), self.target_fpr)
        pictures.append(plots / f"scores_draw{draw}.png")
        if draw == 0:
            self.first_hist.append(plots / f"scores_draw{draw}.png")
        fpr, tpr = metrics.roc_curve_points(scores, test.labels)
        self.rocs.append((f"draw {draw}", fpr, tpr))
        roc_png(plots / f"roc_draw{draw}.png", [self.rocs[-1]], f"{category} K={shots} draw {draw}: image ROC")
        pictures.append(plots / f"roc_draw{draw}.png")
        curve = metrics.pro_curve(maps, test.masks) if test.masks is not None else None
        if curve is not None:
            self.pros.append((f"draw {draw}", *curve))
            pro_png(plots / f"pro_draw{draw}.png", [self.pros[-1]], f"{category} K={shots} draw {draw}: PRO")
            pictures.append(plots / f"pro_draw{draw}.png")
        child.log_artifacts(pictures, "plots")
        child.end()

    def finish(self, record: dict[str, Any]) -> None:
        """The summary's mean/std metrics, every draw's curves in one picture, the report files; then end."""
        from orchestrator.reporting.plots import pro_png, roc_png

        out, title = self.out, f"{self.category} K={self.shots} {self.method}"
        values: dict[str, float] = {"adapt_seconds": record["adapt_seconds"]}
        for name in METRIC_NAMES + CALIBRATION_NAMES + ("score_gap",):
            if record.get(name):
                values[f"{name}_mean"] = record[name]["mean"]
                values[f"{name}_std"] = record[name]["std"]
        self.summary.log_metrics({k: v for k, v in values.items() if v is not None})
        roc_png(out / "plots" / "roc.png", self.rocs, f"{title}: image ROC, every draw")
        pictures = [out / "plots" / "roc.png"]
        if self.pros:
            pro_png(out / "plots" / "pro.png", self.pros, f"{title}: PRO, every draw")
            pictures.append(out / "plots" / "pro.png")
        self.summary.log_artifacts(pictures + self.first_hist, "plots")
        self.summary.log_artifacts([out / "overlays"], "")
        # the gallery links overlays/ relatively: beside them it opens from the artifact store too
        self.summary.log_artifacts([out / "metrics.json"] + ([Path(record["report"])] if record.get("report") else []), "")
        self.summary.end()


def tracked_evaluate(model_dir, data_root, category: str, shots: int, draws: int, out, method: str = OURS.name,
                     seed: int | None = None, progress: bool = True, overlays: int | None = None,
                     uri: str | None = None, **kwargs) -> dict[str, Any]:
    """`evaluate` inside an evaluation summary run with one child run per support draw; kwargs (e.g.
    manifest, splits) go to `evaluate`."""
    if uri is None:
        return evaluate(model_dir, data_root, category, shots, draws, out, method=method, seed=seed,
                        progress=progress, overlays=overlays, **kwargs)
    # every input check (model, data, category, K, draws) before the run exists: bad input leaves no FAILED run
    # the options evaluate hands to prepare_evaluation, whichever they are (the rest are evaluate's own)
    takes = inspect.signature(prepare_evaluation).parameters
    prepared = prepare_evaluation(model_dir, data_root, category, shots, draws, method, seed,
                                  **{k: v for k, v in kwargs.items() if k in takes})
    out = Path(out)
    runs = EvaluationRuns(uri, prepared, model_dir, data_root, category, shots, draws, method, seed, out, kwargs)
    try:
        record = evaluate(model_dir, data_root, category, shots, draws, out, method=method, seed=seed,
                          progress=progress, overlays=overlays, on_draw=runs.on_draw, prepared=prepared, **kwargs)
    except BaseException:
        runs.summary.end("FAILED")
        raise
    runs.finish(record)
    record["run_id"] = runs.summary.run_id
    return record


def tracked_video(cfg: Config, target: str, out, image_source=None, progress: bool = True,
                  uri: str | None = None) -> dict[str, Any]:
    """`run_video` inside one MLflow run "video <scene>": the resolved config as params, the training loss
    per episode, frame AUROC mean/std per K, the frames' data hash as a tag, and metrics.json, scores.csv,
    the score-over-time picture and the model directory as artifacts."""
    from orchestrator.reporting.figures import fig_video
    from orchestrator.reporting.results import read_scores
    from orchestrator.evaluation.video import load_target, run_video

    if uri is None:
        return run_video(cfg, target, out, image_source=image_source, progress=progress)
    load_target(cfg, target)  # bad scene, K or video root: one-line error before any run exists
    out = Path(out)
    run = TrackedRun(uri, f"video {target}", cfg.tracking.experiment,
                     {"fsad.kind": "video", "fsad.scene": target, "fsad.temporal": cfg.experiments.video_temporal})
    run.log_params({k: param_value(v) for k, v in cfg.flatten().items()})
    try:
        record = run_video(cfg, target, out, image_source=image_source, progress=progress)
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.set_tags({"data.hash": record["data_sha256"], "data.hash_kind": "video frames sha256",
                  "data.image_hash": record["image_data_sha256"]})
    history = json.loads((out / "model" / META).read_text()).get("history", [])
    for row in history:
        run.log_metrics({k: v for k, v in row.items() if k not in ("episode", "category")}, step=int(row["episode"]))
    for k, values in record["shots"].items():
        run.log_metrics({f"frame_auroc_{k}": values["frame_auroc"], f"frame_auroc_std_{k}": values["frame_auroc_std"]})
    fig_video(target, {"metrics": record, "scores": read_scores(out / "scores.csv")},
              out / "plots" / "scores_over_time.png")
    run.log_artifacts([out / "metrics.json", out / "scores.csv"], "")
    run.log_artifacts([out / "plots" / "scores_over_time.png"], "plots")
    run.log_artifacts([out / "model"], "")
    run.end()
    record["run_id"] = run.run_id
    return record
