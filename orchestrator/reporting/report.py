"""`fsad report` and the DVC stage experiments/dvc.yaml:report: docs/results.md with its figures.

Reads what the pipelines wrote under results/ (never trains or scores anything itself):

    results/metrics/<target>.json, results/eval/<target>/<method>/K<k>/metrics.json   leave-one-out table, shot sweep
    results/models/<target>/<variant>/meta.json                                      training-loss histories
    results/ablations/<target>/<name>/{metrics.json, model/meta.json}                ablations (Tables 3-4, Fig. 5)
    results/video/<scene>/{metrics.json, scores.csv}                                 video protocol (Table 2)

and writes docs/results.md plus PNGs in docs/figures/. Every table names the data hash and the command
that produced its numbers; every claim of the paper is marked reproduced / not reproduced / not testable
here, decided from the numbers by the rules in `claims()` (claims.py).

Modules: results.py reads results/ (and the numbers of its records), figures.py draws the PNGs,
claims.py judges the paper's claims, this module writes the Markdown.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.methods import OURS
from orchestrator.config import ABLATIONS, PROFILES, Config, describe
from orchestrator.evaluation.evaluate import METRIC_NAMES
from orchestrator.reporting.claims import PAPER_VIDEO, claims
from orchestrator.reporting.figures import fig_bars, fig_loss_curves, fig_overlay_grid, fig_shot_sweep, fig_video
from orchestrator.reporting.results import (
    METHOD_LABELS,
    PIPELINE_COMMAND,
    kept_episode,
    late_loss,
    load_results,
    mean_of,
    mean_std,
    metric_mean,
    variant_label,
)
from workers.episodes import crop_applies
from workers.files import atomic_write_text


def _test_set_words(data: dict[str, Any]) -> str:
    """'its whole test set', or which targets scored a stratified subset (pipeline.max_test_images)."""
    cut = {}
    for target, methods in data["industrial"].items():
        for by_k in methods.values():
            for record in by_k.values():
                if record and record.get("n_test_all") and record.get("n_test") < record["n_test_all"]:
                    cut[target] = (record["n_test"], record["n_test_all"])
    if not cut:
        return "its whole test set"
    return ("its whole test set, except " + ", ".join(f"{t}: {n} of its {total} test images" for t, (n, total) in cut.items())
            + " (`pipeline.max_test_images`: a class-stratified subset fixed by the seed, the same for every method "
              "and K; the full profile scores all)")


def _cell(summary: dict | None) -> str:
    p = mean_std(summary)
    return "n/a" if p is None else f"{p[0]:.3f} ± {p[1]:.3f}"


def _hashes(data: dict) -> tuple[str, str]:
    manifests = {r.get("manifest_sha256") for r in data["metrics_files"].values()}
    splits = {r.get("splits_sha256") for r in data["metrics_files"].values()}
    return ", ".join(sorted(m for m in manifests if m)), ", ".join(sorted(s for s in splits if s))


def render(data: dict, cfg: Config, figures: dict[str, str], command: str) -> str:
    manifest, splits = _hashes(data)
    top = data["shots"][-1]
    profile = cfg.experiments.profile
    lines = [
        "# Results: reproducing Few-Shot Fast-Adaptive Anomaly Detection (Wang et al., NeurIPS 2022)", "",
        f"Written by `{command}` (orchestrator/reporting/report.py) from the outputs of `{PIPELINE_COMMAND}`. "
        f"**Profile: `{profile}`** (`experiments.profile` in params.yaml"
        + (f"; overrides {PROFILES[profile]}" if PROFILES[profile] else "; the defaults of params.yaml") + "). ",
        f"Budget: {cfg.train.episodes} meta-training episodes per model"
        + (f" on {cfg.train.crop}×{cfg.train.crop}-px crops (`train.crop`)"
           if crop_applies(cfg.train.crop, cfg.data.image_size) else "")
        + f", {cfg.data.image_size}×{cfg.data.image_size} px images, "
        f"K ∈ {{{', '.join(map(str, data['shots']))}}}, {cfg.eval.draws} support draws per K (the DVC splits), "
        f"features learnt from scratch (no pretrained weights), device `{cfg.train.device}`. "
        + (f"Each fold keeps the checkpoint (episode 0, the initial Ψ, included) that scores best on the validation "
           f"categories {', '.join(cfg.pipeline.val_categories)} (`pipeline.val_categories`), the target excepted; "
           "those categories are never trained on in that fold." if cfg.pipeline.val_categories else
           "No checkpoint selection (`pipeline.val_categories` is empty): each fold keeps its last weights."), "",
        f"Data: {cfg.pipeline.name} (`{cfg.pipeline.source}`) manifest sha256 `{manifest}`, splits sha256 `{splits}`"
        + "".join(f"; {s} frames sha256 `{v['metrics'].get('data_sha256', '?')}`" for s, v in data["video"].items())
        + ".", "",
        "All numbers are on real images. With the quick profile's small budget they say how the method behaves at "
        "that budget, not what it can reach; the full profile (same commands, `-S experiments.profile=full`) is the "
        "one to compare with the paper. The full profile's 1000 episodes were measured on a GPU for two folds at "
        "the earlier 64-px defaults (docs/benchmarks.md, \"On a GPU\"): there more training raised image AUROC and "
        "lowered localisation.", "",
        *_summary(data, cfg), "",
        "## The paper's claims", "",
        "A claim tested on several targets counts as reproduced when it holds on more than half of them.", "",
        "| claim | status | evidence |", "|---|---|---|",
    ]
    for claim, status, evidence in claims(data, cfg):
        lines.append(f"| {claim} | **{status}** | {evidence} |")
    lines += [
        "", "## Industrial inspection: leave-one-category-out (Section 4.1)", "",
        f"Source: stages `train@<target>` and `evaluate@<target>` of dvc.yaml (`{PIPELINE_COMMAND}`); files "
        "results/eval/<target>/<method>/K<k>/metrics.json. Each target category is held out of meta-training; "
        f"the model adapts with K normal training images of it and scores {_test_set_words(data)}. Mean ± std over "
        f"the support draws. mIoU uses the best threshold over a quantile grid (an oracle upper bound). Manifest "
        f"`{manifest[:12]}…`, splits `{splits[:12]}…`.", "",
        "| target | method | K | image AUROC | pixel AUROC | PRO | mIoU |", "|---|---|---|---|---|---|---|",
    ]
    for target, methods in data["industrial"].items():
        for method, by_k in methods.items():
            for k in by_k:  # the K values this method was evaluated at (pipeline.sweep_methods)
                lines.append(f"| {target} | {METHOD_LABELS.get(method, method)} | {k} | "
                             + " | ".join(_cell(by_k[k].get(n)) for n in METRIC_NAMES) + " |")
    lines += ["", f"Mean over the {len(data['industrial'])} targets (of the per-target means):", "",
              "| method | K | image AUROC | pixel AUROC | PRO | mIoU |", "|---|---|---|---|---|---|"]
    for method in cfg.pipeline.methods:
        for k in cfg.pipeline.shots_of(method):
            cells = [mean_of([metric_mean(data["industrial"][t][method][k], n) for t in data["industrial"]]) for n in METRIC_NAMES]
            lines.append(f"| {METHOD_LABELS.get(method, method)} | {k} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    for key, caption in (("shot_sweep", "Shot sweep per category (mean ± std over draws)"),
                         ("bars", f"Per-category comparison at K={top}"),
                         ("overlays", f"Anomaly maps of ours at K={top} (first support draw) with ground-truth contours")):
        if key in figures:
            lines += ["", f"![{caption}]({figures[key]})", "", f"*{caption}.*"]
    lines += _training_section(data)
    lines += _ablation_section(data, cfg, figures)
    lines += _video_section(data, cfg, figures)
    lines += ["", "## How to rebuild", "",
              "```sh", "source .venv/bin/activate        # make test or make demo builds it",
              f"{PIPELINE_COMMAND}     # quick profile: ingest, split, train/evaluate per target, ablations, video, report",
              "dvc exp run experiments/dvc.yaml -S experiments.profile=full   # the full budget (GPU or cluster)",
              "fsad report                      # this file again from results/, without rerunning anything", "```", "",
              f"Machine of this run: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
              f"Python {platform.python_version()}."]
    return "\n".join(lines) + "\n"


def _late_share(history: list[dict], key: str) -> float:
    """Share of the second half of the episodes whose `key` is > 0 (nan when it was not logged)."""
    late = [h[key] for h in history[len(history) // 2:] if key in h]
    return sum(v > 0 for v in late) / len(late) if late else float("nan")


def _edge_mean(history: list[dict], key: str, last: bool, n: int = 5) -> float:
    values = [h[key] for h in history if key in h]
    return mean_of(values[-n:] if last else values[:n])


def _training_section(data: dict) -> list[str]:
    """What meta-training did in each fold: the checkpoint selection, the support features' effective
    rank and whether the Langevin chains lowered the corrupted queries' energy (issue 10's diagnostics)."""
    models = data.get("models", {})
    if not models:
        return []
    lines = ["", "## What meta-training did, per fold", "",
             "Source: results/models/<target>/<variant>/meta.json. *Selected*: the checkpoint kept, scored on the "
             "validation categories every `train.val_every` episodes (episode 0 is the initial Ψ: selecting it "
             "means training did not help on validation). *Support rank*: participation ratio of the centred "
             "support features (effective rank), mean of the first and of the last 5 episodes: a fall means the "
             "features collapse. *Chain lowers E*: share of the second half of the episodes in which the "
             "Langevin chain lowered the energy of the corrupted query it started from (issue 10 asks ≥ 80 %). "
             "*Chain inpaints*: share of them in which it moved the corrupted pixels towards the query's "
             "(`inpaint_gain_patch` > 0); the whole-image gain is no measure of that, because the chain's noise "
             "adds J·s²·β of squared error to every pixel (docs/benchmarks.md, \"Does the chain inpaint\").", "",
             "| target | model | trained on | validation | selected episode | val score: initial → selected "
             "| support rank: first → last | chain lowers E | chain inpaints |", "|---|---|---|---|---|---|---|---|---|"]
    for (target, variant), meta in models.items():
        history, selection = meta.get("history", []), meta.get("selection") or {}
        scores = {h["episode"]: h["val_score"] for h in selection.get("history", [])}
        chosen = selection.get("best_episode")
        val = (f"{scores[0]:.3f} → {scores[chosen]:.3f}" if scores and 0 in scores and chosen in scores else "–")
        rank = (f"{_edge_mean(history, 'support_rank', False):.1f} → {_edge_mean(history, 'support_rank', True):.1f}"
                if any("support_rank" in h for h in history) else "–")
        shares = [_late_share(history, key) for key in ("chain_energy_drop", "inpaint_gain_patch")]
        lines.append(f"| {target} | {METHOD_LABELS.get(variant, variant)} | {', '.join(meta.get('train_categories', []))} | "
                     f"{', '.join(meta.get('val_categories', [])) or '–'} | "
                     + (f"{chosen} of {len(history)}" if chosen is not None else f"{len(history)} (the last; no selection)")
                     + f" | {val} | {rank} | "
                     + " | ".join("–" if share != share else f"{100 * share:.0f} %" for share in shares) + " |")
    return lines


def _summary(data: dict, cfg: Config) -> list[str]:
    """Two sentences a reader wants first: where the method stands at this budget, from the numbers."""
    top = data["shots"][-1]
    ind = data["industrial"]
    means = {m: {n: mean_of([metric_mean(ind[t][m][top], n) for t in ind]) for n in ("image_auroc", "pixel_auroc", "pro")}
             for m in cfg.pipeline.methods}
    best = {m: max(ind, key=lambda t: metric_mean(ind[t][m][top], "pixel_auroc")) for m in means}
    lines = ["**In short** (K=" + str(top) + ", mean over the held-out categories): " + "; ".join(
        f"{METHOD_LABELS.get(m, m)} image AUROC {v['image_auroc']:.3f}, pixel AUROC {v['pixel_auroc']:.3f}, "
        f"PRO {v['pro']:.3f} (best localisation on {best[m]}: "
        f"{metric_mean(ind[best[m]][m][top], 'pixel_auroc'):.3f})" for m, v in means.items()) + "."]
    if data["video"]:
        lines[0] += " Video frame AUROC at the largest K: " + ", ".join(
            f"{s} {100 * v['metrics']['shots'][max(v['metrics']['shots'], key=lambda k: int(k[1:]))]['frame_auroc']:.1f} %"
            for s, v in data["video"].items()) + "."
    if OURS.name in means and means[OURS.name]["image_auroc"] < 0.6:
        lines[0] += (" Image-level AUROC near 0.5 means the image score barely separates normal from anomalous "
                     "images at this budget, while the anomaly maps can still localise defects (pixel AUROC, PRO).")
    return lines


def _kept(episode: int | None) -> str:
    return "–" if episode is None else ("0 (initial Ψ)" if episode == 0 else str(episode))


def _ablation_section(data: dict, cfg: Config, figures: dict[str, str]) -> list[str]:
    if not data["ablations"]:
        return ["", "## Ablations", "", "Not run (experiments.ablation_targets is empty or the stage has not run)."]
    top = data["shots"][-1]
    lines = ["", "## Ablations (Section 4.3: Tables 3-4, Fig. 5; Section 3.3)", "",
             "Source: stage `ablations` of experiments/dvc.yaml; files results/ablations/<target>/<name>/metrics.json. "
             "Each variant is `ours` retrained on the same fold with one change and scored on the same support "
             f"draws (the splits) at K={top}; the default row is the `evaluate@<target>` stage's model. Energy gap = "
             "mean anomalous − mean normal image energy (Table 4's third column).", "",
             "| target | variant | change | image AUROC | pixel AUROC | PRO | mIoU | energy gap | final loss | kept episode |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for target, variants in data["ablations"].items():
        default = data["industrial"][target][OURS.name][top]
        history = data["histories"].get((target, OURS.model), [])
        lines.append(f"| {target} | default | {variant_label(cfg, None)} | "
                     + " | ".join(_cell(default.get(n)) for n in METRIC_NAMES)
                     + f" | {metric_mean(default, 'score_gap'):.2e} | {late_loss(history):.4f} | "
                     f"{_kept(kept_episode(data['models'].get((target, OURS.model), {})))} |")
        for name, v in variants.items():
            lines.append(f"| {target} | {name} | `{' '.join(describe(ABLATIONS[name]))}` | "
                         + " | ".join(_cell(v["metrics"].get(n)) for n in METRIC_NAMES)
                         + f" | {metric_mean(v['metrics'], 'score_gap'):.2e} | {late_loss(v['history']):.4f} | "
                         f"{_kept(v.get('kept_episode'))} |")
    lines.append("")
    lines.append("Final loss: mean training loss over the last fifth of the episodes. Kept episode: the checkpoint "
                 "selection kept on the validation categories (0 = the initial Ψ, so the row's training changed "
                 "nothing it scores with; – = no selection).")
    if "loss_curves" in figures:
        lines += ["", f"![Training-loss curves]({figures['loss_curves']})", "",
                  "*Training loss (moving mean) of the default model against the loss-relevant ablations: Fig. 5's "
                  "SigShrink vs hard shrink, Langevin steps J, inpainting vs noise-initialised negatives.*"]
    return lines


def _video_section(data: dict, cfg: Config, figures: dict[str, str]) -> list[str]:
    e = cfg.experiments
    lines = ["", "## Video: scene-adaptive anomaly detection (Section 4.2, Table 2)", "",
             "Source: stage `video` of experiments/dvc.yaml; files results/video/<scene>/metrics.json. Scenes are "
             "tasks: the model is meta-trained on the other scene's normal frames and every image category of the "
             "manifest (none held out), "
             "then adapts to the target scene from K normal training frames; every test frame is scored on its own "
             f"(every {e.video_test_every}. frame) and the frame AUROC is pooled over all scored test frames of the "
             f"scene; mean ± std over {e.video_draws} draws. Temporal cue (App. B.4): "
             f"{'on' if e.video_temporal else 'off'}.", ""]
    if not data["video"]:
        return lines + ["Not run (experiments.video_targets is empty or the stage has not run)."]
    shots = sorted({int(k[1:]) for v in data["video"].values() for k in v["metrics"]["shots"]})
    lines += ["| scene | method | " + " | ".join(f"{k}-shot" for k in shots) + " |",
              "|---|---|" + "---|" * len(shots)]
    for scene, record in data["video"].items():
        runs = {"ours": record["metrics"]["shots"], **record["metrics"].get("baselines", {})}
        for method, by_k in runs.items():
            lines.append(f"| {scene} | {METHOD_LABELS.get(method, method)} (here) | " + " | ".join(
                f"{100 * by_k[f'K{k}']['frame_auroc']:.2f} ± {100 * by_k[f'K{k}'].get('frame_auroc_std', 0.0):.2f}"
                if f"K{k}" in by_k else "n/a" for k in shots) + " |")
        for method, values in PAPER_VIDEO.get(scene, {}).items():
            paper = dict(zip((1, 5, 10), values))
            lines.append(f"| {scene} | {METHOD_LABELS.get(method, method)} (paper) | "
                         + " | ".join(f"{paper[k]:.2f}" if k in paper else "–" for k in shots) + " |")
    lines += ["", "Frame AUROC in %. What differs from the paper: it meta-trains on ShanghaiTech's 13 scenes (not "
              "available here) and uses a larger backbone and budget; here the features are learnt from scratch "
              f"on one other scene plus the image categories, at {cfg.data.image_size} px, on CPU. Two Avenue test clips are "
              "anomalous in every frame, so pooled AUROC mostly ranks frames across clips."]
    for scene in data["video"]:
        if f"video_{scene}" in figures:
            lines += ["", f"![{scene} frame scores]({figures[f'video_{scene}']})", "",
                      f"*{scene}: anomaly score per test frame (first draw, largest K); red: labelled anomalous.*"]
    return lines


def build_report(cfg: Config, results: str | Path = "results", out: str | Path = "docs/results.md",
                 command: str = "fsad report") -> dict[str, Any]:
    """Read results/, draw the figures beside `out` (figures/), write `out`; returns what was written."""
    results, out = Path(results), Path(out)
    if not results.is_dir():
        raise InputError(f"--results {results} does not exist; expected the pipelines' output (run `{PIPELINE_COMMAND}`)")
    data = load_results(cfg, results)
    fig_dir = out.parent / "figures"
    figures: dict[str, str] = {}

    def rel(name: str) -> str:
        return f"figures/{name}"

    fig_shot_sweep(data, cfg, fig_dir / "shot_sweep.png")
    figures["shot_sweep"] = rel("shot_sweep.png")
    fig_bars(data, cfg, fig_dir / "bars.png")
    figures["bars"] = rel("bars.png")
    if fig_overlay_grid(results, cfg, data["shots"][-1], fig_dir / "overlays.png"):
        figures["overlays"] = rel("overlays.png")
    if fig_loss_curves(data, cfg, fig_dir / "loss_curves.png"):
        figures["loss_curves"] = rel("loss_curves.png")
    for scene, record in data["video"].items():
        if fig_video(scene, record, fig_dir / f"video_{scene}.png"):
            figures[f"video_{scene}"] = rel(f"video_{scene}.png")
    text = render(data, cfg, figures, command)
    atomic_write_text(out, text)
    return {"report": str(out), "figures": [str(fig_dir / Path(f).name) for f in figures.values()],
            "claims": claims(data, cfg)}
