"""The method registry (model/methods/): one entry per method in table order, each builds a scorer that
adapts to a tiny synthetic task and scores it; an unknown name or a model of the wrong kind is a
one-line InputError."""
from __future__ import annotations

import pytest
import torch

from model.ebm.backbone import BackboneSpec, build_backbone
from model.ebm.energy import AdaptiveEBM, SparseSpec
from model.maml_ae import AESpec, ConvAutoencoder
from model.methods import (BASELINES, BY_NAME, LEARNT, METHOD_MODEL, METHODS, MODEL_KINDS, REGISTRY, ScoringOptions,
                           get_method)
from tests.conftest import expect_error

SIZE = 32
TINY = ["data.image_size=32", "model.backbone.width=8", "model.backbone.out_dim=8", "maml.width=4",
        "maml.latent=4"]


def _task(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 3, SIZE, SIZE, generator=g), torch.rand(2, 3, SIZE, SIZE, generator=g)  # support, queries


def _network(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "maml_ae":
        return ConvAutoencoder(AESpec(width=4, latent=4, depth=2)).eval()
    backbone = build_backbone(BackboneSpec(name="conv", width=8, depth=2, stride=4, out_dim=8, max_width=128, input_norm="none", hypercolumn=False))
    return AdaptiveEBM(backbone, SparseSpec.paper()).eval()


def _check_scores(scorer, support, queries) -> None:
    scores, maps = scorer.score(queries, scorer.adapt(support))
    assert scores.shape == (queries.shape[0],) and maps.shape == (queries.shape[0], SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()


def test_the_method_list_is_the_registration_order():
    assert METHODS == ("ours", "knn", "maml_ae", "untrained", "knn_untrained", "nosupport")
    assert BASELINES == ("untrained", "knn_untrained", "nosupport") and LEARNT == ("ours", "knn", "maml_ae")
    assert MODEL_KINDS == ("ours", "maml_ae")
    assert METHOD_MODEL == {m.name: m.model for m in REGISTRY} and set(METHOD_MODEL.values()) == set(MODEL_KINDS)
    assert all(BY_NAME[m].baseline for m in BASELINES) and all(BY_NAME[m].untrained for m in BASELINES[:2])


@pytest.mark.parametrize("name", METHODS)
def test_every_registered_method_builds_and_scores_a_tiny_task(name):
    method = get_method(name)
    support, queries = _task()
    scorer = method.build(_network(method.model), ScoringOptions(smooth_sigma=1.0, inner_steps=1))
    _check_scores(scorer, support, queries)


@pytest.mark.parametrize("name", METHODS)
def test_make_scorer_builds_every_method_from_a_model_config(name):
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model

    cfg = load_config(None, parse_overrides(TINY + [f"train.method={get_method(name).model}", "maml.inner_steps=1"]))
    _check_scores(make_scorer(name, untrained_model(cfg), cfg), *_task(1))


def test_unknown_method_and_wrong_model_kind_are_one_line_errors():
    from orchestrator.config import load_config, parse_overrides
    from orchestrator.evaluation.evaluate import make_scorer, untrained_model

    expect_error(lambda: get_method("lof"), "--method 'lof'", "expected one of", *METHODS)
    cfg = load_config(None, parse_overrides(TINY))
    model = untrained_model(cfg)
    expect_error(lambda: make_scorer("lof", model, cfg), "--method 'lof'", *METHODS)
    expect_error(lambda: make_scorer("maml_ae", model, cfg), "--method maml_ae needs a model trained with --method "
                 "maml_ae; this one is ours")
    maml_cfg = load_config(None, parse_overrides(TINY + ["train.method=maml_ae"]))
    maml = untrained_model(maml_cfg)
    expect_error(lambda: make_scorer("knn", maml, maml_cfg), "--method knn uses the backbone of an `ours` model")
    expect_error(lambda: make_scorer("nosupport", maml, maml_cfg), "reads the config of an `ours` model")


def test_pipeline_methods_default_to_the_registry():
    from orchestrator.config import load_config

    assert load_config().pipeline.methods == list(METHODS)


@pytest.mark.parametrize("name", ["ours", "knn"])
def test_features_computed_once_give_the_same_scores_and_maps(name):
    """An evaluation scores one test set under several support draws with Ψ(images) computed once: the
    scores and maps must be those of scoring the images themselves, for every draw."""
    method = get_method(name)
    scorer = method.build(_network(method.model), ScoringOptions(smooth_sigma=1.0, anomaly_map="energy"))
    _, queries = _task()
    features = scorer.features(queries)
    assert features is not None and features.shape[0] == queries.shape[0]
    for seed in (1, 2):  # two support draws, one feature pass
        support, _ = _task(seed)
        state = scorer.adapt(support)
        plain, plain_maps = scorer.score(queries, state)
        reused, reused_maps = scorer.score(queries, state, features=features)
        assert torch.equal(plain, reused) and torch.equal(plain_maps, reused_maps)
    expect_error(lambda: scorer.score(queries, state, features=features[:1]), "features for 1 images, 2 images given")


def test_ours_has_no_draw_free_features_where_the_shots_or_the_gradient_enter_psi():
    from dataclasses import replace

    options = ScoringOptions(anomaly_map="energy")
    network = _network("ours")
    _, queries = _task()
    assert get_method("ours").build(network, ScoringOptions(anomaly_map="gradient")).features(queries) is None
    network.sparse = replace(network.sparse, exposure="support")
    scorer = get_method("ours").build(network, options)
    assert scorer.features(queries) is None
    state = scorer.adapt(_task(1)[0])
    # features of the unaligned images would be the wrong ones
    expect_error(lambda: scorer.score(queries, state, features=torch.zeros(2, 8, 8, 8)), "exposure alignment")
    network.sparse = replace(network.sparse, exposure="none")
    state = scorer.adapt(_task(1)[0])
    expect_error(lambda: network.score_and_map(queries, state, mode="gradient", features=network.backbone(queries)),
                 "mode 'energy' only")


def test_an_evaluation_passes_the_test_images_through_psi_once_for_all_draws():
    from orchestrator.evaluation.evaluate import FEATURE_CACHE_BYTES, TestSet, draw_free_features, evaluate_scorer
    import orchestrator.evaluation.evaluate as evaluation

    network = _network("ours")
    scorer = get_method("ours").build(network, ScoringOptions(anomaly_map="energy"))
    g = torch.Generator().manual_seed(3)
    test = TestSet("tiny", torch.rand(6, 3, SIZE, SIZE, generator=g), torch.rand(5, 3, SIZE, SIZE, generator=g),
                   None, torch.tensor([0, 0, 1, 1, 0]), [f"{i}.png" for i in range(5)])
    seen = []
    network.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    kept = evaluate_scorer(scorer, test, shots=2, draws=3, seed=0, batch_size=2, device=torch.device("cpu"),
                           progress=False)
    assert sum(seen) == 5 + 3 * 2  # the test images once, then each draw's two shots
    seen.clear()
    evaluation.FEATURE_CACHE_BYTES = 1  # too small to keep: every draw passes the test images through Ψ
    try:
        assert draw_free_features(scorer, test.images, 2, torch.device("cpu")) is None
        seen.clear()
        again = evaluate_scorer(scorer, test, shots=2, draws=3, seed=0, batch_size=2, device=torch.device("cpu"),
                                progress=False)
    finally:
        evaluation.FEATURE_CACHE_BYTES = FEATURE_CACHE_BYTES
    assert sum(seen) == 2 + 3 * (5 + 2)  # the first batch that showed the size, then as without the cache
    assert [d["image_auroc"] for d in again["draws"]] == [d["image_auroc"] for d in kept["draws"]]
