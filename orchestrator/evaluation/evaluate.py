"""Evaluation (Alg. 2 and the Section 4.1 protocol): adapt to the target category with K random normal
training images, score the whole test set, repeat for S support draws, report mean ± std.

Every method is a scorer with `adapt(support) -> state` and `score(images, state) -> (scores (B,),
maps (B, H, W))`; `make_scorer` builds any registered method (model/methods/) from a model directory.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from model import metrics
from model.calibration import check_fpr
from model.errors import InputError
from orchestrator.tracking.artifacts import load_model_dir, resolve_device
from model.methods import OURS, Scorer, ScoringOptions, get_method
from orchestrator.evaluation.calibration import CalibrationSpec, calibrate
from orchestrator.config import Config, with_values
from workers.data.images import set_max_pixels, stack_items
from workers.data.sources import as_source, open_source
from workers.files import atomic_write_text
from workers.data.paths import category_key, plain_name

METRIC_NAMES = ("image_auroc", "pixel_auroc", "pro", "miou")
# At each draw's calibrated threshold: normal test images flagged, anomalous test images flagged.
CALIBRATION_NAMES = ("false_alarm_rate", "recall", "threshold")


def untrained_model(cfg: Config) -> torch.nn.Module:
    """The same network as cfg's `ours` model at its initialisation (the seed training starts from)."""
    from orchestrator.tracking.artifacts import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg).eval()


def scoring_options(cfg: Config, augment_support: bool | None = None) -> ScoringOptions:
    """What the scorers read from a model's config; augment_support, if given, replaces eval.augment_support."""
    augment = cfg.eval.augment_support if augment_support is None else augment_support
    return ScoringOptions(smooth_sigma=cfg.model.map_smooth_sigma, augment_support=augment,
                          anomaly_map=cfg.model.anomaly_map, top_frac=cfg.model.top_frac,
                          inner_steps=cfg.maml.inner_steps, inner_lr=cfg.maml.inner_lr)


def scoring_network(method: str, model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """The network the method scores with: `model`, or for the untrained baselines the network cfg's training
    starts from; InputError when the model directory is not the kind the method reads."""
    chosen = get_method(method)
    trained = cfg.train.method
    if trained != chosen.model:
        raise InputError(f"--method {chosen.name} {chosen.model_use}; this one is {trained}")
    return untrained_model(cfg).to(next(model.parameters()).device) if chosen.untrained else model


def make_scorer(method: str, model: torch.nn.Module, cfg: Config, augment_support: bool | None = None) -> Scorer:
    """The registered method's scorer on `model` (or, for the untrained baselines, on the network cfg's
    training starts from); InputError when the model directory is not the kind the method reads."""
    network = scoring_network(method, model, cfg)
    return get_method(method).build(network, scoring_options(cfg, augment_support))


def scorer_identity(method: str, network: torch.nn.Module, cfg: Config, test: "TestSet",
                    draw_index: list[list[int]]) -> str:
    """sha256 of everything an evaluation's scores and maps depend on: the method's scorer function, the
    network's class, settings and weights, the scoring options, the test images and the support draws. Two
    evaluations with the same identity give the same numbers (untrained when selection kept the initial Ψ is
    ours again; knn_untrained is knn again), so a ScoreCache can hand the first one's outputs to the second."""
    build = get_method(method).build
    digest = hashlib.sha256()
    for part in (f"{build.__module__}.{build.__qualname__}", type(network).__qualname__,
                 repr(getattr(network, "spec", None)), repr(getattr(getattr(network, "backbone", None), "spec", None)),
                 repr(scoring_options(cfg)), repr(cfg.model), json.dumps(draw_index), json.dumps(test.paths)):
        digest.update(part.encode())
        digest.update(b"\0")
    _hash_weights_and_images(digest, network, test.images)
    return digest.hexdigest()


def _hash_weights_and_images(digest, module: torch.nn.Module, images: torch.Tensor) -> None:
    """Add every weight of `module` (by name) and the bytes of `images` to a hashlib digest."""
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(_tensor_bytes(tensor))
    digest.update(_tensor_bytes(images))


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's values (on the CPU, in row-major order)."""
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@dataclass
class DrawOutputs:
    """One support draw's results, as a ScoreCache keeps them."""

    scores: torch.Tensor  # (N,)
    maps: torch.Tensor  # (N, H, W)
    metrics: dict[str, float | None]
    adapt_seconds: float


class ScoreCache:
    """The per-draw outputs of the evaluations already run (in one process), by scorer_identity.

    An evaluation whose identity is here reuses them instead of adapting and scoring again: the numbers are
    the same by construction, only the time differs (in the DVC pipeline, a fold whose selection kept the
    initial Ψ scores `untrained` and `knn_untrained` for free). Only the methods whose scorer function another
    listed method shares are kept (`methods`), so that memory holds no outputs nobody can reuse."""

    def __init__(self, methods: list[str] | tuple[str, ...]):
        builds = [get_method(m).build for m in methods]
        self._sharable = {m for m, b in zip(methods, builds) if builds.count(b) > 1}
        self._entries: dict[str, tuple[str, list[DrawOutputs]]] = {}
        # besides whole outputs, what every method of one target reads alike: the test set (loaded once, not
        # once per method and K) and Ψ's features of it (ours and kNN on one Ψ compute the same backbone pass)
        self._tests: dict[tuple, tuple[TestSet, int]] = {}
        self._features: dict[str, list[torch.Tensor]] = {}
        # and each draw's nearest-atom candidates of every test position, from ours for kNN (CandidateShare)
        self._candidates: dict[tuple, list[torch.Tensor]] = {}

    def shares(self, method: str) -> bool:
        """Whether another listed method has the same scorer function: only then is there anything to reuse."""
        return method in self._sharable

    def get(self, identity: str) -> tuple[str, list[DrawOutputs]] | None:
        """(the method that computed them, its per-draw outputs), or None."""
        return self._entries.get(identity)

    def put(self, identity: str, method: str, outputs: list[DrawOutputs]) -> None:
        if method in self._sharable and identity not in self._entries:
            self._entries[identity] = (method, outputs)

    def test_set(self, key: tuple, load: Callable[[], tuple["TestSet", int]]) -> tuple["TestSet", int]:
        """(test set, test images before any subset) for `key` (data, category, size, subset): loaded once."""
        if key not in self._tests:
            self._tests[key] = load()
        return self._tests[key]

    def backbone_features(self, key: str, compute: Callable[[], list[torch.Tensor] | None]) -> list[torch.Tensor] | None:
        """Ψ's per-batch features of a test set for `key` (backbone_key): computed once, kept if not None."""
        if key not in self._features:
            found = compute()
            if found is None:
                return None
            self._features[key] = found
        return self._features[key]

    def put_candidates(self, key: tuple, per_batch: list[torch.Tensor]) -> None:
        """One draw's candidates (per test batch, (B, h'w', c) each) for `key` (CandidateShare.draw_key)."""
        self._candidates[key] = per_batch

    def take_candidates(self, key: tuple) -> list[torch.Tensor] | None:
        """The candidates put for `key`, handed over once (None if none were put)."""
        return self._candidates.pop(key, None)


@dataclass
class CandidateShare:
    """How one evaluation takes part in sharing nearest-atom candidates through a ScoreCache
    (docs/benchmarks.md, "kNN from ours' top-k").

    Ours codes every test position over its top-k atoms, the shots' unit volumes; kNN's memory bank holds the same
    volumes in the same order when both score with one Ψ (ours and knn, or untrained and knn_untrained), so kNN's
    nearest row is one of ours' most similar atoms. A scorer with `score_and_atoms` gives its candidates for every
    draw (int32, about 25 MB for five draws of 300 images at 32×32 positions); a kNN scorer on the same backbone
    pass (`backbone_key`: weights, test images, batch size, device), receptive field and shots takes them and
    skips its search over the whole bank (model.methods.knn.nearest_among). Either may run without the other."""

    cache: ScoreCache
    features_key: str  # backbone_key of the test images' Ψ pass
    receptive_field: int  # the unit volumes' l (Scorer.unit_volume_field)
    gives: bool  # True: the scorer has score_and_atoms and keeps its candidates; False: it takes them

    def draw_key(self, support: torch.Tensor) -> tuple:
        """The key of one draw: the backbone pass, l and the bytes of the shots (K, C, H, W)."""
        return self.features_key, self.receptive_field, hashlib.sha256(_tensor_bytes(support)).hexdigest()


def candidate_share(scorer: Scorer, reuse: ScoreCache, features_key: str | None) -> CandidateShare | None:
    """The scorer's part in sharing nearest-atom candidates, or None where it has none."""
    field = getattr(scorer, "unit_volume_field", lambda: None)()
    if features_key is None or field is None:
        return None
    return CandidateShare(reuse, features_key, field, gives=hasattr(scorer, "score_and_atoms"))


def takes_features(scorer: Scorer, probe: torch.Tensor) -> bool:
    """Whether `scorer.score` takes precomputed Ψ features (its `features` gives some for a probe batch)."""
    compute = getattr(scorer, "features", None)
    return compute is not None and compute(probe) is not None


def backbone_key(network: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> str | None:
    """sha256 of what Ψ(images) in batches depends on: the backbone's class, settings and weights, the images, the
    batch size and the device; None for a network without a backbone (maml_ae)."""
    backbone = getattr(network, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        return None
    digest = hashlib.sha256()
    for part in (type(backbone).__qualname__, repr(getattr(backbone, "spec", None)), str(backbone.training),
                 str(batch_size), str(device)):
        digest.update(part.encode())
        digest.update(b"\0")
    _hash_weights_and_images(digest, backbone, images)
    return digest.hexdigest()


# Ψ's features of a test set kept across support draws up to this size; a larger set is scored as before
FEATURE_CACHE_BYTES = 2 * 2**30


def draw_free_features(scorer: Scorer, images: torch.Tensor, batch_size: int, device: torch.device,
                       progress: bool = False, desc: str = "features") -> list[torch.Tensor] | None:
    """Per batch of `batch_size` images, what `scorer.score` computes from the images alone (Ψ's features), so
    that several support draws score the same test set with one backbone pass; the scores are the same as
    without them. None: the scorer has no such part (`features`, or it returns None), or the features of
    all the images would exceed FEATURE_CACHE_BYTES (judged from the first batch)."""
    compute = getattr(scorer, "features", None)
    if compute is None or images.shape[0] == 0:
        return None
    out = []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        found = compute(images[start : start + batch_size].to(device))
        if found is None:
            return None
        if not out and found.element_size() * found.nelement() / found.shape[0] * images.shape[0] > FEATURE_CACHE_BYTES:
            return None
        out.append(found.detach())
    return out


def score_batches(scorer: Scorer, state: Any, images: torch.Tensor, batch_size: int, device: torch.device,
                  progress: bool = False, desc: str = "score",
                  features: list[torch.Tensor] | None = None, candidates: list[torch.Tensor] | None = None,
                  keep_candidates: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, C, H, W) -> scores (N,), maps (N, H, W) in batches; features: draw_free_features of these
    images with this batch size, when the caller has them. candidates: per batch, what a giving scorer's
    score_and_atoms kept (for a kNN scorer); keep_candidates: a list that collects this scorer's, per batch."""
    scores, maps = [], []
    starts = range(0, images.shape[0], batch_size)
    for name, given in (("features", features), ("candidates", candidates)):
        if given is not None and len(given) != len(starts):
            raise ValueError(f"score_batches: {name} of {len(given)} batches for {len(starts)} batches of images")
    for i, start in enumerate(tqdm(starts, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)):
        batch = images[start : start + batch_size].to(device)
        extra = {} if features is None else {"features": features[i]}
        if keep_candidates is not None:
            s, m, found = scorer.score_and_atoms(batch, state, **extra)
            keep_candidates.append(found.to(device="cpu", dtype=torch.int32))  # (B, h'w', c): rows < 2³¹
        elif candidates is not None:
            s, m = scorer.score(batch, state, candidates=candidates[i].to(device), **extra)
        else:
            s, m = scorer.score(batch, state, **extra)
        scores.append(s.detach().cpu())
        maps.append(m.detach().cpu())
    return torch.cat(scores), torch.cat(maps)


@dataclass
class TestSet:
    category: str
    support_pool: torch.Tensor  # (N_train, 3, S, S) normal training images
    images: torch.Tensor  # (N_test, 3, S, S)
    masks: torch.Tensor | None  # (N_test, S, S)
    labels: torch.Tensor  # (N_test,)
    paths: list[str]


def stratified_subset(labels: torch.Tensor, size: int, seed: int, category: str) -> list[int]:
    """At most `size` test indices, sorted, with each class in proportion (at least one of each): the
    same subset for every method and K, fixed by the seed and the category's name. size 0: all."""
    n = int(labels.numel())
    if size <= 0 or size >= n:
        return list(range(n))
    anomalous = int(labels.sum())
    keep_anomalous = min(max(1, round(size * anomalous / n)), anomalous, size - 1)
    g = torch.Generator().manual_seed(seed * 1000 + zlib.crc32(category.encode()) % 1000)
    chosen = []
    for value, keep in ((0, size - keep_anomalous), (1, keep_anomalous)):
        members = torch.nonzero(labels == value).flatten()  # (n_class,)
        chosen += members[torch.randperm(members.numel(), generator=g)[:keep]].tolist()
    return sorted(chosen)


def subset_test_set(test: "TestSet", index: list[int]) -> "TestSet":
    """The test set restricted to `index` (the support pool unchanged)."""
    if len(index) == test.labels.numel():
        return test
    at = torch.tensor(index)
    return TestSet(test.category, test.support_pool, test.images[at], None if test.masks is None else test.masks[at],
                   test.labels[at], [test.paths[i] for i in index])


def load_test_set(root, category: str, image_size: int) -> TestSet:
    """root: a folder or a workers.data.sources source (support pool = train/good sorted by path)."""
    source = as_source(root)
    train_items = source.load(category, image_size, split="train")
    test_items = source.load(category, image_size, split="test")
    images, masks, labels = stack_items(test_items)
    if labels.min() == labels.max():
        raise InputError(f"category {category!r} test set has only {'anomalous' if labels[0] else 'normal'} images; "
                         "expected both normal and anomalous test images")
    return TestSet(category, torch.stack([it.image for it in train_items]), images, masks, labels,
                   [it.path for it in test_items])


def support_draws(pool_size: int, shots: int, draws: int, seed: int, category: str) -> list[list[int]]:
    """The S support draws: K distinct indices into train/good each, reproducible from the seed."""
    if shots < 1:
        raise InputError(f"--shots {shots}: expected K >= 1")
    if draws < 1:
        raise InputError(f"--draws {draws}: expected at least one support draw")
    if shots > pool_size:
        raise InputError(f"--shots {shots} is larger than the {pool_size} normal training images of {category!r}")
    out = []
    for draw in range(draws):
        g = torch.Generator().manual_seed(seed * 1000 + draw)
        out.append(sorted(torch.randperm(pool_size, generator=g)[:shots].tolist()))
    return out


def draw_metrics(scores: torch.Tensor, maps: torch.Tensor, test: TestSet) -> dict[str, float | None]:
    anomalous = test.labels.bool()
    result: dict[str, float | None] = {
        "image_auroc": metrics.image_auroc(scores, test.labels),
        # Table 4's third column: mean anomalous minus mean normal image energy
        "score_gap": float(scores[anomalous].mean() - scores[~anomalous].mean()),
    }
    has_pixels = test.masks is not None and bool(test.masks.any())
    if has_pixels:
        result["pixel_auroc"] = metrics.pixel_auroc(maps, test.masks)
        result["pro"] = metrics.pro_score(maps, test.masks)
        best = metrics.miou(maps, test.masks)
        result["miou"] = best[0] if best else None
    else:
        result.update(pixel_auroc=None, pro=None, miou=None)
    return result


def calibrated_rates(scorer: Scorer, support: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                     spec: CalibrationSpec, batch_size: int, device: torch.device, state=None):
    """The draw's calibration from its shots alone, and the realised false-alarm rate on the normal test
    images and the recall on the anomalous ones at its threshold. (None, {}) when K < 2."""
    from model.calibration import rates
    if support.shape[0] < 2:
        return None, {}
    cal = calibrate(scorer, support, spec, batch_size, device, state)
    found = rates(scores.numpy(), labels.numpy(), cal.threshold)
    return cal, {"threshold": cal.threshold, "pixel_threshold": cal.pixel_threshold, "target_fpr": spec.fpr,
                 "false_alarm_rate": found["realised_fpr"], "recall": found["recall"],
                 "calibration_seconds": cal.seconds}


def evaluate_scorer(scorer: Scorer, test: TestSet, shots: int, draws: int, seed: int, batch_size: int,
                    device: torch.device, progress: bool = True, on_draw=None,
                    draw_index: list[list[int]] | None = None,
                    calibration: CalibrationSpec | None = None,
                    cached: list[DrawOutputs] | None = None, keep_outputs: bool = False,
                    test_features: Callable[[], list[torch.Tensor] | None] | None = None,
                    share: CandidateShare | None = None) -> dict[str, Any]:
    """Run the protocol; returns summaries, per-draw metrics, timings, the first draw's outputs and, with
    keep_outputs, every draw's ("outputs", DrawOutputs: a ScoreCache's entry).

    on_draw(record, scores (N,), maps (N, H, W), test), if given, sees every draw as it finishes.
    draw_index, if given (a splits file's draws), replaces the seeded support draws.
    calibration, if given: every draw also calibrates a threshold from its shots (K >= 2) and records
    the realised false-alarm rate and recall at it (CALIBRATION_NAMES).
    cached, if given: the draws' outputs of an evaluation with the same scorer_identity, used instead of
    adapting and scoring (not with calibration, which needs the adapted state).
    test_features, if given: returns draw_free_features of the test images (e.g. from a ScoreCache), called
    once, before the first draw is scored.
    share, if given: every draw gives its nearest-atom candidates to the share's ScoreCache or takes them from it
    (CandidateShare; test_features must then come from that cache's pass of the same key).
    """
    if cached is not None and calibration is not None:
        raise ValueError("evaluate_scorer: cached outputs carry no adapted state to calibrate with")
    per_draw, first, outputs = [], None, []
    adapt_seconds = []
    # a scorer that ignores its shots (nosupport) gives every draw the same scores: score the test set once
    support_free, unchanged = not getattr(scorer, "uses_support", True), None
    features, features_pending = None, not support_free  # Ψ of the test images: one pass for every draw
    if draw_index is None:
        draw_index = support_draws(test.support_pool.shape[0], shots, draws, seed, test.category)
    if cached is not None and len(cached) != len(draw_index):
        raise ValueError(f"evaluate_scorer: {len(cached)} cached draws for {len(draw_index)} support draws")
    for draw, index in enumerate(draw_index):
        support = test.support_pool[index]
        if cached is not None:  # an identical evaluation's outputs (scorer_identity)
            scores, maps, found_metrics = cached[draw].scores, cached[draw].maps, cached[draw].metrics
            adapt_seconds.append(cached[draw].adapt_seconds)
        else:
            t0 = time.perf_counter()
            state = scorer.adapt(support.to(device))
            adapt_seconds.append(time.perf_counter() - t0)
            if support_free and unchanged is not None:  # the same scores whatever the shots: computed once
                scores, maps, found_metrics = unchanged
            else:
                if features_pending:
                    features = test_features() if test_features is not None else draw_free_features(
                        scorer, test.images, batch_size, device, progress, desc=f"{test.category} features")
                    features_pending = False
                draw_key = share.draw_key(support) if share is not None else None
                given = share.cache.take_candidates(draw_key) if share is not None and not share.gives else None
                kept = [] if share is not None and share.gives else None
                scores, maps = score_batches(scorer, state, test.images, batch_size, device, progress,
                                             desc=f"{test.category} K={shots} draw {draw + 1}/{draws}",
                                             features=features, candidates=given, keep_candidates=kept)
                if kept is not None:
                    share.cache.put_candidates(draw_key, kept)
                if not (torch.isfinite(scores).all() and torch.isfinite(maps).all()):
                    raise RuntimeError(f"non-finite anomaly scores on {test.category} draw {draw}")
                found_metrics = draw_metrics(scores, maps, test)
                unchanged = (scores, maps, found_metrics)
        per_draw.append({"draw": draw, "support": index, **found_metrics})
        if keep_outputs:
            outputs.append(DrawOutputs(scores, maps, found_metrics, adapt_seconds[-1]))
        cal = None
        if calibration is not None:
            cal, found = calibrated_rates(scorer, support, scores, test.labels, calibration, batch_size, device, state)
            per_draw[-1].update(found)
            per_draw[-1]["calibration_samples"] = cal.samples if cal else None
        if on_draw:
            on_draw(per_draw[-1], scores, maps, test)
        if first is None:
            first = {"scores": scores, "maps": maps, "support": index, "calibration": cal}
    names = METRIC_NAMES + ("score_gap",) + (CALIBRATION_NAMES if calibration is not None else ())
    summary = {name: metrics.summarize([d.get(name) for d in per_draw]) for name in names}
    return {**summary, "draws": per_draw, "adapt_seconds": float(np.mean(adapt_seconds)), "first": first,
            "outputs": outputs}


def _check_not_an_alias(source, category: str, trained_on, model_dir) -> None:
    """A folder that is a training category under another name (a symlink, a case-insensitive
    filesystem) is no held-out category either."""
    root = getattr(source, "root", None)  # a folder source; a manifest names its categories exactly
    if root is None or not (Path(root) / category).exists():
        return
    target = (Path(root) / category).resolve()
    for name in trained_on:
        if (Path(root) / name).exists() and (Path(root) / name).resolve() == target:
            raise InputError(f"category {category!r} under {root} is the training category {name!r} of {model_dir} "
                             "under another name; leave-one-out evaluation needs a held-out category")


@dataclass
class PreparedEvaluation:
    """Everything `evaluate` checked and loaded before scoring (so a tracked evaluation of bad input fails
    before its MLflow run exists)."""

    scorer: Any
    cfg: Config
    meta: dict[str, Any]
    source: Any
    test: TestSet
    draw_index: list[list[int]]
    seed: int
    device: torch.device
    partial: bool
    n_test_all: int  # test images of the category before any subset
    network: torch.nn.Module  # what the scorer scores with (scoring_network)


def prepare_evaluation(model_dir: str | Path, data_root: str | Path, category: str, shots: int, draws: int,
                       method: str = OURS.name, seed: int | None = None, manifest: str | Path | None = None,
                       splits: str | Path | None = None, allow_partial: bool = False,
                       settings: dict[str, Any] | None = None, fpr: float | None = None,
                       max_test_images: int = 0, reuse: ScoreCache | None = None) -> PreparedEvaluation:
    """Load the model and the test set and check every input (InputError, one line) without scoring.
    max_test_images > 0 keeps a class-stratified subset of that many test images (stratified_subset).
    reuse: a ScoreCache holding the test set of an earlier evaluation of the same data, used instead of loading."""
    if fpr is not None:
        check_fpr(fpr)
    model, cfg, meta = load_model_dir(model_dir)
    if settings:
        cfg = with_values(cfg, settings)
    set_max_pixels(cfg.data.max_pixels)
    done, planned = meta.get("episodes_done"), cfg.train.episodes
    # the baselines use no trained weights: how far training got does not change their numbers
    partial = isinstance(done, int) and done < planned and not get_method(method).baseline
    if partial and not allow_partial:
        raise InputError(f"model {model_dir} is unfinished: {done} of {planned} training episodes done; "
                         f"finish it with `fsad train --resume --out {model_dir}` or pass --allow-partial")
    device = resolve_device(cfg.train.device)
    model.to(device)
    plain_name(category, "--target")  # kolektor/ or ../../elsewhere/tire are no held-out category
    # validation categories chose the checkpoint: as good as seen in training
    seen = {category_key(c): c for c in meta.get("train_categories", []) + meta.get("val_categories", [])}
    if category_key(category) in seen:
        raise InputError(f"category {category!r} was seen in training by {model_dir} (as {seen[category_key(category)]!r}); "
                         "leave-one-out evaluation needs a held-out category")
    source = open_source(data_root, manifest, splits)
    _check_not_an_alias(source, category, seen.values(), model_dir)
    draw_index = source.support_index(category, shots, draws) if splits is not None else None
    seed = cfg.eval.seed if seed is None else seed

    def load() -> tuple[TestSet, int]:
        whole = load_test_set(source, category, cfg.data.image_size)
        n_all = int(whole.labels.numel())
        return subset_test_set(whole, stratified_subset(whole.labels, max_test_images, seed, category)), n_all

    data_key = (str(data_root), source.content_sha256, category, cfg.data.image_size, max_test_images, seed)
    test, n_all = reuse.test_set(data_key, load) if reuse is not None else load()
    if draw_index is None:  # K against the support pool, the draw count: checked here, not mid-scoring
        draw_index = support_draws(test.support_pool.shape[0], shots, draws, seed, test.category)
    network = scoring_network(method, model, cfg)
    scorer = get_method(method).build(network, scoring_options(cfg))
    return PreparedEvaluation(scorer, cfg, meta, source, test, draw_index, seed, device, partial, n_all, network)


def evaluate(model_dir: str | Path, data_root: str | Path, category: str, shots: int, draws: int, out: str | Path,
             method: str = OURS.name, seed: int | None = None, progress: bool = True,
             overlays: int | None = None, on_draw=None, manifest: str | Path | None = None,
             splits: str | Path | None = None, allow_partial: bool = False,
             settings: dict[str, Any] | None = None, prepared: PreparedEvaluation | None = None,
             fpr: float | None = None, report: bool = False, calibrate: bool = True,
             max_test_images: int = 0, reuse: ScoreCache | None = None) -> dict[str, Any]:
    """`fsad evaluate`: writes out/metrics.json and overlay PNGs; returns the metrics dict.

    With `manifest` the test set and support pool are the manifest's; with `splits` too, the
    support draws are the splits file's (the same images for every method). A model whose training
    stopped early (episodes done < train.episodes) is refused unless `allow_partial`, and then its
    metrics.json says so ("partial": true, episodes done and planned). `settings` ({dotted key: value},
    run-time keys only: eval.*, tracking.*, data.max_pixels, train.device) go over the model's config.
    `prepared`: the result of prepare_evaluation with these arguments (else it is called here).

    Every draw with K >= 2 also calibrates a threshold from its shots for the target false-alarm rate
    `fpr` (default eval.fpr) and records the realised false-alarm rate and recall at it; `calibrate=False`
    skips that (about half of a draw's cost; the pipeline calibrates only pipeline.calibrate). `report`: an
    overlay for every test image of the first draw and out/index.html, the gallery of them.
    `max_test_images` > 0: score a class-stratified subset of that many test images (metrics.json records
    n_test and n_test_all). `reuse`: a ScoreCache of this process's earlier evaluations; one with the same
    scorer_identity hands over its scores and maps instead of this one adapting and scoring (not when this one
    calibrates), and metrics.json names it ("scores_reused_from")."""
    from orchestrator.reporting.plots import write_overlays

    p = prepared or prepare_evaluation(model_dir, data_root, category, shots, draws, method, seed, manifest, splits,
                                       allow_partial, settings, fpr, max_test_images, reuse)
    cfg, meta, source, test, seed = p.cfg, p.meta, p.source, p.test, p.seed
    set_max_pixels(cfg.data.max_pixels)
    spec = CalibrationSpec.from_config(cfg, method, fpr)
    # hashing weights and test images is only worth it where another listed method could share the outputs
    identity = (scorer_identity(method, p.network, cfg, test, p.draw_index)
                if reuse is not None and reuse.shares(method) else None)
    found = reuse.get(identity) if identity is not None and not calibrate else None
    test_features = None  # Ψ(test images) shared with the other methods of this process on the same Ψ
    # (the probe keeps them from a scorer that takes none, e.g. ours with the gradient map)
    share = None  # and ours' nearest-atom candidates, given to kNN on that Ψ
    if reuse is not None and found is None and takes_features(p.scorer, test.images[:1].to(p.device)):
        features_key = backbone_key(p.network, test.images, cfg.eval.batch_size, p.device)
        if features_key is not None:
            def test_features():
                return reuse.backbone_features(features_key, lambda: draw_free_features(
                    p.scorer, test.images, cfg.eval.batch_size, p.device, progress, desc=f"{test.category} features"))
            share = candidate_share(p.scorer, reuse, features_key)
    result = evaluate_scorer(p.scorer, test, shots, draws, seed, cfg.eval.batch_size, p.device, progress, on_draw,
                             p.draw_index, spec if calibrate else None, cached=found[1] if found else None,
                             keep_outputs=identity is not None and found is None, test_features=test_features,
                             share=share)
    if identity is not None and found is None:
        reuse.put(identity, method, result.pop("outputs"))
    first = result.pop("first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        **{name: result[name] for name in METRIC_NAMES}, "score_gap": result["score_gap"],
        "method": method, "category": category, "shots": shots, "draws": draws, "seed": seed,
        "per_draw": result["draws"], "adapt_seconds": result["adapt_seconds"],
        "model": str(model_dir), "n_test": int(test.labels.numel()), "n_test_all": p.n_test_all,
        "n_anomalous": int(test.labels.sum()),
        # traceability: the data evaluated on, the draws used, the data the model was trained on
        "manifest_sha256": source.content_sha256,
        "splits_sha256": source.splits.content_sha256 if splits is not None else None,
        "train_manifest_sha256": meta.get("manifest_sha256"),
    }
    if found:
        record["scores_reused_from"] = found[0]  # the same scorer on the same weights: its outputs, not rescored
    if p.partial:  # only then: finished models keep their metrics.json as before
        record.update({"partial": True, "episodes_done": meta.get("episodes_done"),
                       "episodes_planned": cfg.train.episodes})
    cal = first["calibration"]
    if calibrate:
        record.update({"target_fpr": spec.fpr, "calibration_estimator": spec.estimator,
                       "calibration_augment": list(spec.augment), "calibration_size_correction": spec.size_correction,
                       **{name: result[name] for name in CALIBRATION_NAMES}})
    n_overlays = test.labels.numel() if report else (cfg.eval.overlays if overlays is None else overlays)
    record["overlays"] = write_overlays(out / "overlays", test, first["maps"], first["scores"], n_overlays,
                                        cal.threshold if cal else None)
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2))
    if report:
        record["report"] = str(write_evaluation_gallery(out, record, test, first))
    return record


def write_evaluation_gallery(out: Path, record: dict[str, Any], test: TestSet, first: dict[str, Any]) -> Path:
    """out/index.html: every test image of the first draw, by score, with its verdict and true label."""
    from orchestrator.reporting.gallery import write_gallery
    from orchestrator.reporting.plots import overlay_name

    cal = first["calibration"]
    cards = []
    for i, path in enumerate(test.paths):
        score = float(first["scores"][i])
        cards.append({"name": f"{Path(path).parent.name}/{Path(path).name}", "score": score,
                      "verdict": cal.verdict(score) if cal else None,
                      "label": "true: " + ("anomalous" if int(test.labels[i]) else "normal"),
                      "overlay": out / "overlays" / overlay_name(path)})
    facts = [("method", record["method"]), ("category", record["category"]),
             ("support draw", f"0 of {record['draws']}: images {first['support']}")]
    if cal:
        normal = test.labels == 0
        flagged = first["scores"] > cal.threshold
        facts += [("threshold", f"{cal.threshold:.6g}, calibrated on K={cal.shots} normal shots "
                                f"(leave-one-out, {cal.n_samples} samples, {cal.estimator})"),
                  ("target false-alarm rate", f"{cal.target_fpr:g}"),
                  ("realised on this draw", f"false alarms {int((flagged & normal).sum())} of {int(normal.sum())} "
                                            f"normal images, recall {int((flagged & ~normal).sum())} of "
                                            f"{int((~normal).sum())} anomalous images")]
    elif "target_fpr" not in record:
        facts.append(("threshold", "none: this evaluation was run without calibration"))
    else:
        facts.append(("threshold", f"none: K={len(first['support'])} (calibration needs K >= 2)"))
    return write_gallery(out, f"fsad evaluate: {record['category']} K={record['shots']} {record['method']}",
                         cards, facts)


def format_metric(summary: dict | None) -> str:
    if not summary or summary.get("mean") is None or (isinstance(summary["mean"], float) and math.isnan(summary["mean"])):
        return "n/a"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"
