"""The paper's claims and what our numbers say about them: each is reproduced / not reproduced / not
testable here, decided from the results by the rules below (a claim tested on several targets holds when
it holds on more than half of them)."""
from __future__ import annotations

from model.methods import MAML_AE, OURS
from orchestrator.config import ABLATIONS, Config, describe
from orchestrator.evaluation.evaluate import METRIC_NAMES
from orchestrator.reporting.results import (METHOD_LABELS, METRIC_LABELS, early_loss, kept_episode, late_loss, loss_margin, mean_of,
                                           mean_std, metric_mean)

# Paper, Table 2: frame-level AUROC (%) with 1 / 5 / 10 shots, trained on ShanghaiTech's 13 scenes.
PAPER_VIDEO = {
    "ucsd_ped2": {OURS.name: (91.22, 92.00, 92.45), MAML_AE.name: (78.24, 82.04, 83.30),
                  "r-GAN MAML": (91.19, 91.80, 92.80)},
    "avenue": {OURS.name: (80.68, 83.41, 84.46), MAML_AE.name: (68.72, 69.67, 70.01), "r-GAN MAML": (76.58, 77.10, 78.79)},
}


def claims(data: dict, cfg: Config) -> list[tuple[str, str, str]]:
    """(claim, status, evidence) with status reproduced | not reproduced | not testable here."""
    out: list[tuple[str, str, str]] = []
    top = data["shots"][-1]
    ind = data["industrial"]
    mean = {m: {n: mean_of([metric_mean(ind[t][m][top], n) for t in ind]) for n in METRIC_NAMES} for m in cfg.pipeline.methods}

    # Table 1: few-shot localisation, ours vs few-shot baselines
    if {OURS.name, MAML_AE.name} <= set(mean):
        wins = [n for n in ("pixel_auroc", "miou")
                if mean[OURS.name][n] > max(mean[m][n] for m in mean if m != OURS.name)]
        status = "reproduced" if len(wins) == 2 else "not reproduced"
        evidence = ", ".join(f"{METRIC_LABELS[n]}: " + " / ".join(f"{METHOD_LABELS[m]} {mean[m][n]:.3f}" for m in mean)
                             for n in ("pixel_auroc", "miou"))
        out.append((f"Table 1: with K={top} shots, ours localises anomalies better (pixel AUROC and mIoU) than "
                    "the few-shot baselines (MAML-AE; kNN on the same features added here)", status,
                    f"mean over {len(ind)} held-out categories at K={top}: {evidence}. The paper's numbers are on "
                    "MVTec-AD, which is not available here; only the ranking is compared."))
    # More shots help (Table 2, and the few-shot premise)
    ours_shots = cfg.pipeline.shots_of(OURS.name)  # only the largest K where ours is not in pipeline.sweep_methods
    if OURS.name in mean and len(ours_shots) > 1:
        lo, hi = ours_shots[0], top
        gains = {t: metric_mean(ind[t][OURS.name][hi], "image_auroc") - metric_mean(ind[t][OURS.name][lo], "image_auroc")
                 for t in ind}
        up = sum(g > 0 for g in gains.values())
        out.append((f"More shots help: ours improves from K={lo} to K={hi} (industrial, image AUROC)",
                    "reproduced" if up > len(gains) / 2 else "not reproduced",
                    f"image AUROC gain K={lo}→{hi} per category: " + ", ".join(f"{t} {g:+.3f}" for t, g in gains.items())))
    out += baseline_claims(data, cfg)
    out += screw_claims(data, cfg)
    # Ablations
    out += ablation_claims(data, cfg)
    # Video, Table 2
    out += video_claims(data)
    return out


# Paper, Table 1, screw (MVTec AD; the one category of Table 1 that is here): ours pixel AUROC and mIoU,
# MAML-AE pixel AUROC, as the issue tracker read them from the paper's table.
PAPER_SCREW = {"ours_pixel_auroc": 0.86, "ours_miou": 0.08, "maml_ae_pixel_auroc": 0.55}
# ours' image AUROC must beat these (no learning: untrained Ψ; no sparse coding: kNN on either Ψ), and its
# pixel AUROC the map computed without a support set
IMAGE_RIVALS, NO_SUPPORT = ("untrained", "knn", "knn_untrained"), "nosupport"
LEVEL = {"image": 0, "pixel": 1}  # where each metric sits in failed_rivals' (image AUROC, pixel AUROC) pairs


def failed_rivals(scores: dict[str, tuple[float, float]]) -> list[tuple[str, str]]:
    """One target's (image AUROC, pixel AUROC) per method -> the criteria of `baseline_claims` that fail, as
    (metric, rival) pairs: ("image", m) for each image rival m at or above ours, ("pixel", NO_SUPPORT) when the
    support-free map is at or above ours' maps. A tie is no win; a rival that was not run is no failure."""
    ours_image, ours_pixel = scores[OURS.name]
    failed = [("image", m) for m in IMAGE_RIVALS if m in scores and ours_image <= scores[m][0]]
    if NO_SUPPORT in scores and ours_pixel <= scores[NO_SUPPORT][1]:
        failed.append(("pixel", NO_SUPPORT))
    return failed


def baseline_claims(data: dict, cfg: Config) -> list[tuple[str, str, str]]:
    """The premise behind every table: meta-learning and the support set must earn their place. On every
    target at the largest K, ours' image AUROC is above the same model with an untrained Ψ and above kNN
    (trained and untrained features), and ours' pixel AUROC is above the support-free map."""
    top, ind = data["shots"][-1], data["industrial"]
    present = set(cfg.pipeline.methods)
    if OURS.name not in present or not (set(IMAGE_RIVALS) | {NO_SUPPORT}) & present:
        return [("Meta-learning and the support set earn their place (ours above the no-learning and no-support "
                 "baselines on every target)", "not testable here", "the baselines are not in pipeline.methods")]
    failures = []
    for target, methods in ind.items():
        scores = {m: (metric_mean(methods[m][top], "image_auroc"), metric_mean(methods[m][top], "pixel_auroc"))
                  for m in (OURS.name, *IMAGE_RIVALS, NO_SUPPORT) if m in methods}
        lost = [f"{metric} AUROC {scores[OURS.name][LEVEL[metric]]:.3f} ≤ {METHOD_LABELS[m]} "
                f"{scores[m][LEVEL[metric]]:.3f}" for metric, m in failed_rivals(scores)]
        if lost:
            failures.append(f"{target}: " + ", ".join(lost))
    evidence = (f"holds on {len(ind) - len(failures)} of {len(ind)} targets at K={top}"
                + (". Where it does not: " + "; ".join(failures) if failures else ""))
    return [(f"Meta-learning and the support set earn their place: at K={top} ours' image AUROC beats the "
             "untrained Ψ and kNN (trained and untrained features), and its pixel AUROC beats the support-free "
             "map, on every target (this project's bar; the paper reports no such baselines)",
             "reproduced" if not failures else "not reproduced", evidence)]


def screw_claims(data: dict, cfg: Config) -> list[tuple[str, str, str]]:
    """Table 1's screw row beside ours here (same category, MVTec AD's own images; the training tasks
    differ: the screw fold's training categories here, the other 14 MVTec categories in the paper)."""
    top, ind = data["shots"][-1], data["industrial"]
    if "screw" not in ind or OURS.name not in ind["screw"]:
        return []
    here = ind["screw"]
    pixel, miou = metric_mean(here[OURS.name][top], "pixel_auroc"), metric_mean(here[OURS.name][top], "miou")
    others = ", ".join(f"{METHOD_LABELS[m]} {metric_mean(here[m][top], 'pixel_auroc'):.3f}"
                       for m in here if m != OURS.name)
    fold = data.get("models", {}).get(("screw", OURS.model), {})
    trained_on = ", ".join(fold.get("train_categories", [])) or "the other categories here"
    reached = pixel >= PAPER_SCREW["ours_pixel_auroc"] - 0.02 and miou >= PAPER_SCREW["ours_miou"] - 0.02
    return [(f"Table 1, screw (K=10 in the paper): ours pixel AUROC {PAPER_SCREW['ours_pixel_auroc']:.2f}, "
             f"mIoU {PAPER_SCREW['ours_miou']:.2f}; MAML-AE pixel AUROC {PAPER_SCREW['maml_ae_pixel_auroc']:.2f}",
             "reproduced" if reached else "not reproduced",
             f"ours here at K={top}: pixel AUROC {pixel:.3f}, mIoU {miou:.3f} (reproduced = each at least the "
             f"paper's figure less 0.02); pixel AUROC of the others here: {others}. Meta-trained on {trained_on}, not MVTec's other "
             f"14; features from scratch at {cfg.data.image_size} px.")]


TRAINING_SECTIONS = ("train.", "langevin.", "inpaint.")  # config keys that change how Ψ is trained, not how it scores


def changes_training_only(name: str) -> bool:
    """Whether ablation `name` changes only training (noise_init, j1, ...): with the initial Ψ kept at
    selection, its model is the default's network."""
    return all(key.startswith(TRAINING_SECTIONS) for key in ABLATIONS[name])


# Smallest difference of an ablation metric that counts, besides the draws' spread (the larger std of the two rows)
MIN_DIFFERENCE = 1e-3


def ablation_claims(data: dict, cfg: Config) -> list[tuple[str, str, str]]:
    out = []

    def default_kept(target: str) -> int | None:
        return kept_episode(data.get("models", {}).get((target, OURS.model), {}))

    top = f"K{data['shots'][-1]}"
    rows = []
    for target, variants in data["ablations"].items():
        default = data["industrial"][target][OURS.name][data["shots"][-1]]
        rows.append((target, default, variants, data["histories"].get((target, OURS.model), [])))
    if not rows:
        return [("Tables 3-4, Fig. 5 (ablations)", "not testable here", "the ablation stage has not run")]

    def compare(name: str, claim: str, metric_names=("pixel_auroc", "miou"), variant_wins: bool = False):
        """The claim holds on a target when the default beats the variant on every metric by more than the
        draws' spread (the larger std of the two rows, at least MIN_DIFFERENCE), or, with variant_wins, the
        variant beats the default so (the paper's choice is the ablation row)."""
        better, evidence = 0, []
        tested = [(t, d, v[name]) for t, d, v, _ in rows if name in v]
        if not tested:
            why = (f"the {name} ablation is listed in experiments.ablations but has no results (results/ablations/"
                   f"<target>/{name}/metrics.json)" if name in cfg.experiments.ablations else
                   f"the {name} ablation is not in experiments.ablations of this run "
                   f"({', '.join(cfg.experiments.ablations)}; the full profile runs it)")
            out.append((claim, "not testable here", why))
            return
        both_initial = [t for t, _, variant in tested if default_kept(t) == 0 and variant.get("kept_episode") == 0]
        if changes_training_only(name) and len(both_initial) == len(tested):
            out.append((claim, "not testable here",
                        f"{name} changes training only, and on {', '.join(both_initial)} both the default and the "
                        f"variant kept the initial Ψ at checkpoint selection: the two models are the same network"))
            return
        for target, default, variant in tested:
            diffs, margins = {}, {}
            for n in metric_names:
                (d_mean, d_std), (v_mean, v_std) = (mean_std(default.get(n)) or (float("nan"), 0.0),
                                                    mean_std(variant["metrics"].get(n)) or (float("nan"), 0.0))
                diffs[n] = (v_mean - d_mean) if variant_wins else (d_mean - v_mean)
                # a difference inside the support draws' spread is no evidence either way
                margins[n] = max(MIN_DIFFERENCE, d_std, v_std)
            better += all(diffs[n] > margins[n] for n in metric_names)
            within = [METRIC_LABELS[n] for n in metric_names if abs(diffs[n]) <= margins[n]]
            evidence.append(f"{target}: " + ", ".join(f"{METRIC_LABELS[n]} {metric_mean(default, n):.3f} vs "
                                                      f"{metric_mean(variant['metrics'], n):.3f}" for n in metric_names)
                            + (f" ({', '.join(within)} within the draws' spread)" if within else "")
                            + (" (both kept the initial Ψ at selection: this compares the coding settings on "
                               "untrained features)" if target in both_initial else ""))
        out.append((claim, "reproduced" if better > len(tested) / 2 else "not reproduced",
                    f"holds on {better} of {len(tested)} targets. Default vs {name} ({' '.join(describe(ABLATIONS[name]))}), "
                    f"{top}: " + "; ".join(evidence)))

    # The default is l = 1 (measured on validation categories); the paper's l = 3 is the ablation row.
    compare("l3", "Table 3: sparse coding over l×l = 3×3 feature volumes beats l = 1 (mIoU and AUROC)",
            variant_wins=True)
    compare("nosparsity", "Table 4: removing the sparsity constraint lowers mIoU and AUROC")
    gap_rows = [(t, d, v["nosparsity"]) for t, d, v, _ in rows if "nosparsity" in v]
    if gap_rows:
        wider = sum(metric_mean(d, "score_gap") > metric_mean(v["metrics"], "score_gap") for _, d, v in gap_rows)
        out.append(("Table 4: with sparsity, the gap between mean abnormal and mean normal energy is larger",
                    "reproduced" if wider > len(gap_rows) / 2 else "not reproduced",
                    f"holds on {wider} of {len(gap_rows)} targets (default vs nosparsity): " + "; ".join(f"{t}: {metric_mean(d, 'score_gap'):.2e} vs {metric_mean(v['metrics'], 'score_gap'):.2e}"
                              for t, d, v in gap_rows)))
    # The default shrink is Eq. 7 (exact Lasso under FISTA); the sigshrink row trains with Eq. 9.
    pairs = [(t, v["sigshrink"]["history"], h) for t, _, v, h in rows if "sigshrink" in v and h]
    if pairs:
        def fig5(sig: list[dict], hard: list[dict]) -> tuple[bool, str]:
            """SigShrink's first- and last-fifth mean losses both below hard shrink's by more than the
            episodes' spread (loss_margin)."""
            early, late = loss_margin(sig, hard, last=False), loss_margin(sig, hard, last=True)
            sig_early, hard_early, sig_late, hard_late = early_loss(sig), early_loss(hard), late_loss(sig), late_loss(hard)
            holds = sig_early < hard_early - early and sig_late < hard_late - late
            within = [name for name, margin, a, b in (("first", early, sig_early, hard_early),
                                                      ("last", late, sig_late, hard_late))
                      if abs(a - b) <= margin]
            return holds, (f"first-fifth mean loss {sig_early:.4f} vs {hard_early:.4f} (± {early:.4f}), "
                           f"last-fifth {sig_late:.4f} vs {hard_late:.4f} (± {late:.4f})"
                           + (f"; the {' and '.join(within)} fifth's difference is within the episodes' spread"
                              if within else ""))
        judged = [(t, *fig5(sig, hard)) for t, sig, hard in pairs]
        ok = sum(holds for _, holds, _ in judged)
        out.append(("Fig. 5: training with SigShrink converges faster early on and reaches a lower loss than hard shrink",
                    "reproduced" if ok > len(judged) / 2 else "not reproduced",
                    f"holds on {ok} of {len(judged)} targets (SigShrink vs hard; ± two standard errors of the "
                    "mean per-episode difference over the fifth: both trainings draw the same episodes). " + "; ".join(f"{t}: {text}" for t, _, text in judged)
                    + ". Losses of different shrink functions are on the same scale (energies in [0, 1])."))
    # judged, like Tables 3-4, on the paper's localisation metrics (pixel AUROC, mIoU)
    compare("noise_init", "Section 3.3: starting Langevin from inpainted normals (not noise) trains faster — "
            "at the same episode budget the inpainting model localises better (pixel AUROC and mIoU)")
    for name in ("j1", "j10"):
        tested = [(t, d, v[name]) for t, d, v, _ in rows if name in v]
        if tested:
            out.append((f"Langevin steps J={ABLATIONS[name]['langevin.steps']} vs the default J={cfg.langevin.steps} "
                        "(a design choice the paper fixes, not a claim)", "measured",
                        "; ".join(f"{t}: pixel AUROC {metric_mean(d, 'pixel_auroc'):.3f} (default) vs "
                                  f"{metric_mean(v['metrics'], 'pixel_auroc'):.3f}" for t, d, v in tested)))
    return out


def video_claims(data: dict) -> list[tuple[str, str, str]]:
    out = []
    for scene, paper in PAPER_VIDEO.items():
        record = data["video"].get(scene)
        if not record:
            out.append((f"Table 2: {scene} frame AUROC {paper[OURS.name]}", "not testable here",
                        "the video stage has not run for this scene"))
            continue
        ours = {int(k[1:]): v["frame_auroc"] for k, v in record["metrics"]["shots"].items()}
        ks = sorted(ours)
        paper_at = dict(zip((1, 5, 10), paper[OURS.name]))
        compared = [k for k in ks if k in paper_at]
        within = all(ours[k] * 100 >= paper_at[k] - 2.0 for k in compared)
        out.append((f"Table 2: {scene} frame AUROC " + " / ".join(f"{paper_at[k]:.2f}" for k in compared)
                    + f" with {'/'.join(map(str, compared))} shots", "reproduced" if within else "not reproduced",
                    "ours here: " + " / ".join(f"{100 * ours[k]:.2f}" for k in compared)
                    + " (reproduced = within 2 points). Set-up differs: meta-trained on "
                    + (", ".join(record["metrics"]["train_tasks"]) if record["metrics"].get("train_tasks")
                       else "the other scene and the image categories")
                    + ", not ShanghaiTech's 13 scenes; features learnt from scratch at "
                    f"{record['metrics'].get('params', {}).get('data.image_size', '?')} px on a small budget."))
        if len(ks) > 1:
            out.append((f"Video, {scene}: more shots help (K={ks[0]} → {ks[-1]})",
                        "reproduced" if ours[ks[-1]] > ours[ks[0]] else "not reproduced",
                        " → ".join(f"K={k}: {ours[k]:.3f}" for k in ks)))
    return out
