"""MLflow tracking and the per-category registry against the embedded default (a sqlite file, local
artifacts): training/evaluation runs, nesting, pictures, data version, registry aliases, the pyfunc
round trip, loading without unpickling, `fsad adapt` in under a second, bad input.

One sqlite database per module (creating its tables takes seconds); tiny budgets throughout.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import HELD_OUT, image_files, tiny_sets

pytestmark = pytest.mark.slow
SHOTS = 2


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite tracking store + spool in a temporary folder, used as the working directory."""
    root = tmp_path_factory.mktemp("tracking")
    saved = {k: os.environ.get(k) for k in ("FSAD_SPOOL_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["FSAD_SPOOL_DIR"] = str(root / "spool")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield {"root": root, "uri": f"sqlite:///{root}/mlflow.db"}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def client(store):
    from orchestrator.tracking.server import client_for

    return client_for(store["uri"])


@pytest.fixture(scope="module")
def data_with_manifest(small_real_root, tmp_path_factory):
    """The small copy plus a manifest.parquet at its root (the data version the training run logs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("manifest_data") / "root"
    shutil.copytree(small_real_root, root)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    pq.write_table(pa.table({"image_path": files}), root / "manifest.parquet")
    return root


@pytest.fixture(scope="module")
def trained(store, data_with_manifest, tmp_path_factory):
    """A tracked tiny training run: (model dir, run id)."""
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("tracked_model") / "model"
    code = main(["train", "--data", str(data_with_manifest), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 "--tracking-uri", store["uri"], *tiny_sets(train__episodes=4)])
    assert code == 0
    info = json.loads((out / "tracking.json").read_text())
    assert info["run_id"]
    return out, info["run_id"]


@pytest.fixture(scope="module")
def evaluated(store, trained, data_with_manifest, tmp_path_factory):
    from orchestrator.cli import main

    out = tmp_path_factory.mktemp("tracked_eval") / "eval"
    code = main(["evaluate", "--model", str(trained[0]), "--data", str(data_with_manifest), "--target", HELD_OUT,
                 "--shots", str(SHOTS), "--draws", "2", "--out", str(out), "--quiet", "--tracking-uri", store["uri"]])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def registered(store, trained, data_with_manifest):
    """fsad register --run RUN --target tire --draw 0: the first version, so @champion."""
    from orchestrator.cli import main

    code = main(["register", "--run", trained[1], "--target", HELD_OUT, "--draw", "0", "--shots", str(SHOTS),
                 "--data", str(data_with_manifest), "--tracking-uri", store["uri"]])
    assert code == 0
    return f"models:/fsad-{HELD_OUT}@champion"


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


# ---------------------------------------------------------------------------------------------
# URIs and secrets (no server needed)


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    from orchestrator.tracking.server import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FSAD_TRACKING", "1")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"  # the embedded default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://10.0.0.1:80") == "http://10.0.0.1:80"  # the flag wins
    assert resolve_tracking_uri("http://10.0.0.1:80", no_track=True) is None
    monkeypatch.setenv("FSAD_TRACKING", "0")
    assert resolve_tracking_uri() is None
    assert resolve_tracking_uri("http://10.0.0.1:80") == "http://10.0.0.1:80"  # explicit beats the switch


def test_redact_masks_uri_passwords_and_secret_environment(monkeypatch):
    from orchestrator.tracking.server import redact

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY")
    text = redact("postgresql://postgres:hunter2pw@db:5432/x and wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY")
    assert "hunter2pw" not in text and "SECRETKEY" not in text
    assert "postgresql://postgres:***@db:5432/x" in text


def test_untracked_by_default_in_tests_leaves_no_database(small_real_root, tmp_path, monkeypatch):
    """FSAD_TRACKING=0 (set by conftest) keeps `fsad train` away from ./mlflow.db."""
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert os.environ.get("FSAD_TRACKING") == "0"
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", "m", "--quiet",
                 *tiny_sets(train__episodes=1)])
    assert code == 0
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow-spool").exists()
    assert not (tmp_path / "m" / "tracking.json").exists()


def test_a_ray_jobs_temporary_working_directory_is_no_place_for_runs(small_real_root, tmp_path, monkeypatch, capsys):
    """Ray unpacks a job's --working-dir under runtime_resources/working_dir_files/_ray_pkg_<hash>/ and
    deletes it later: the default sqlite:///mlflow.db, any relative sqlite path, and a relative --out there
    are refused with one line naming the way out; an absolute store elsewhere is accepted, and the spool
    moves out of the copy. (tests/test_ray_cluster.py submits real jobs.)"""
    from orchestrator.cli import main
    from orchestrator.tracking.server import resolve_tracking_uri
    from orchestrator.tracking.spool import spool_root

    job_dir = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FSAD_SPOOL_DIR", raising=False)
    monkeypatch.setenv("FSAD_TRACKING", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "model"
    for given in ([], ["--tracking-uri", "sqlite:///runs.db"]):
        code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", str(out), "--quiet",
                     *given, *tiny_sets(train__episodes=1)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("fsad: error: "), err
        assert "--tracking-uri" in lines[0] and "temporary copy" in lines[0] and "_ray_pkg_0123abcd" in lines[0]
    assert not out.exists() and sorted(p.name for p in job_dir.iterdir()) == []
    code = main(["train", "--data", str(small_real_root), "--target", HELD_OUT, "--out", "model", "--quiet",
                 "--no-track", *tiny_sets(train__episodes=1)])
    err = capsys.readouterr().err
    assert code == 2 and "--out model" in err and "temporary copy" in err and not (job_dir / "model").exists()
    absolute = f"sqlite:///{tmp_path}/browse/mlflow.db"
    assert resolve_tracking_uri(absolute) == absolute  # a store the user chose, outside the copy
    assert spool_root() == tmp_path / "cache" / "fsad" / "mlflow-spool"
    monkeypatch.chdir(tmp_path)  # an ordinary working directory: the defaults as before
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert spool_root() == tmp_path.resolve() / "mlflow-spool"


# ---------------------------------------------------------------------------------------------
# Training and evaluation runs


def test_training_run_logs_config_data_metrics_checkpoints(client, trained, data_with_manifest):
    from orchestrator.config import load_config
    from orchestrator.tracking.data_version import sha256_file

    out, run_id = trained
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    cfg = load_config(out / "config.yaml")
    for key, value in cfg.flatten().items():
        expected = json.dumps(value) if isinstance(value, list) else str(value)
        assert run.data.params[key] == expected, key
    manifest_sha = sha256_file(data_with_manifest / "manifest.parquet")
    assert run.data.tags["data.hash"] == manifest_sha and run.data.tags["data.hash_kind"] == "manifest"
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest_sha[:16]
    for name in ("loss", "l_rec", "l_cd", "pos_energy", "neg_energy", "staleness"):
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == [0, 1, 2, 3], name  # one value per update
    assert len(client.get_metric_history(run_id, "throughput_episodes_per_s")) == 3
    files = artifact_paths(client, run_id)
    for episode in (2, 4):  # checkpoint_every=2
        for name in ("model.safetensors", "config.yaml", "meta.json", "state.pt"):
            assert f"checkpoints/episode_{episode:06d}/{name}" in files
    assert {"model/model.safetensors", "model/config.yaml", "model/meta.json"} <= files


def test_evaluation_runs_nest_under_training_with_pictures(client, store, trained, evaluated):
    _, train_id = trained
    experiment = client.get_experiment_by_name("fsad")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{train_id}'")
    (summary,) = [r for r in children if r.data.tags.get("fsad.kind") == "eval"]
    assert summary.info.status == "FINISHED"
    for name in ("image_auroc", "pixel_auroc", "pro", "miou"):
        assert f"{name}_mean" in summary.data.metrics and f"{name}_std" in summary.data.metrics
    files = artifact_paths(client, summary.info.run_id)
    assert {"plots/roc.png", "plots/pro.png", "metrics.json"} <= files
    assert any(f.startswith("overlays/") and f.endswith(".png") for f in files)
    draws = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{summary.info.run_id}'")
    assert sorted(int(r.data.tags["fsad.draw"]) for r in draws) == [0, 1]  # one run per category × K × draw
    for run in draws:
        assert {"image_auroc", "pixel_auroc", "pro", "miou"} <= set(run.data.metrics)
        assert len(json.loads(run.data.params["support"])) == SHOTS
        draw = run.data.tags["fsad.draw"]
        assert {f"plots/roc_draw{draw}.png", f"plots/pro_draw{draw}.png"} <= artifact_paths(client, run.info.run_id)
    recorded = json.loads((evaluated / "metrics.json").read_text())
    assert summary.data.metrics["image_auroc_mean"] == pytest.approx(recorded["image_auroc"]["mean"])
    # what a person needs to act on the run: the realised false-alarm rate and recall at the calibrated
    # threshold beside the target, the score histogram with the threshold line, a name saying what ran
    assert summary.data.params["target_fpr"] == "0.01"
    assert summary.data.metrics["false_alarm_rate_mean"] == pytest.approx(recorded["false_alarm_rate"]["mean"])
    assert summary.data.metrics["recall_mean"] == pytest.approx(recorded["recall"]["mean"])
    assert "plots/scores_draw0.png" in files
    assert summary.info.run_name == f"eval {HELD_OUT} K={SHOTS} ours"
    for run in draws:
        assert {"false_alarm_rate", "recall", "threshold"} <= set(run.data.metrics)
        assert f"plots/scores_draw{run.data.tags['fsad.draw']}.png" in artifact_paths(client, run.info.run_id)
    train_run = client.get_run(train_id)
    assert train_run.info.run_name == f"train ours held-out {HELD_OUT} K=2"
    # MLflow 3 before 3.17 lands an untagged experiment on its GenAI overview; tagged, on the runs table
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not list(Path(os.environ["FSAD_SPOOL_DIR"]).glob("*/events.jsonl"))  # everything reached the store


# ---------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("args,needle", [
    (["--target", "no_such_category"], "no_such_category"),
    (["--target", HELD_OUT, "--shots", "999"], "--shots 999"),
    (["--target", HELD_OUT, "--draws", "0"], "--draws 0"),
    (["--target", "kolektor"], "seen in training"),
    (["--target", HELD_OUT, "--set", "eval.batch_size=0"], "eval.batch_size"),
])
def test_bad_input_evaluate_leaves_no_run_behind(args, needle, client, store, trained, data_with_manifest, tmp_path,
                                                capsys):
    """Every input check runs before the evaluation's MLflow run exists: no FAILED (or any) run is left."""
    from orchestrator.cli import main

    experiments = [e.experiment_id for e in client.search_experiments()]
    before = {r.info.run_id for r in client.search_runs(experiments)}
    capsys.readouterr()
    code = main(["evaluate", "--model", str(trained[0]), "--data", str(data_with_manifest), *args,
                 "--out", str(tmp_path / "e"), "--quiet", "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    after = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in after if r.info.run_id not in before] == []
    assert not (tmp_path / "e").exists()


def test_register_creates_champion_version_with_tags(client, trained, registered):
    version = client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion")
    tags = version.tags
    assert tags["fsad.shots"] == str(SHOTS) and tags["fsad.support_draw"] == "0"
    assert len(json.loads(tags["fsad.support_indices"])) == SHOTS
    assert tags["data.hash_kind"] == "manifest" and len(tags["data.hash"]) == 64
    assert tags["fsad.train_run_id"] == trained[1]
    for name in ("image_auroc", "pixel_auroc", "pro", "miou"):
        assert f"metric.{name}" in tags
    reg_run = client.get_run(version.run_id)
    assert reg_run.data.tags["mlflow.parentRunId"] == trained[1]
    # the version says K, the support images' hashes, the threshold and its target
    threshold = float(tags["fsad.threshold"])
    assert tags["fsad.target_fpr"] == "0.01" and threshold > 0
    hashes = json.loads(tags["fsad.support_image_sha256"])
    assert len(hashes) == SHOTS
    description = version.description
    assert f"K={SHOTS}" in description and all(h in description for h in hashes)
    assert tags["fsad.threshold"] in description and "false-alarm rate of 0.01" in description
    assert reg_run.data.metrics["threshold"] == pytest.approx(threshold, rel=1e-5)
    files = artifact_paths(client, version.run_id)
    assert {"model/data/fsad_model/dictionary.safetensors", "model/data/fsad_model/model.safetensors",
            "model/data/fsad_model/calibration.json"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth", ".py"))]  # no pickle, no code


def test_registered_mlmodel_names_the_installed_loader_and_no_local_path(client, store, trained, registered):
    import mlflow.artifacts
    import yaml

    version = client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion")
    text = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{version.source}/MLmodel",
                                                    tracking_uri=store["uri"])).read_text()
    flavor = yaml.safe_load(text)["flavors"]["python_function"]
    assert flavor["loader_module"] == "orchestrator.pyfunc" and flavor["data"] == "data/fsad_model"
    assert not flavor.get("code") and "model_code_path" not in flavor
    for local in (str(Path(__file__).resolve().parents[1]), str(trained[0]), str(store["root"]), "/tmp"):
        assert local not in text, local


def test_beats_rule():
    from orchestrator.tracking.registry import beats

    assert beats(None, None, has_champion=False)  # the first version is champion
    assert beats(0.7, 0.6, True) and not beats(0.6, 0.6, True) and not beats(0.5, 0.6, True)
    assert not beats(None, 0.6, True)  # no metric: cannot prove an improvement
    assert beats(0.1, None, True)  # the champion has no metric on record


def test_alias_moves_only_on_improvement(client, store, trained, registered, monkeypatch):
    import orchestrator.tracking.registry as registry

    uri = store["uri"]
    champion = client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion")
    best = float(champion.tags["metric.image_auroc"])
    support = torch.rand(SHOTS, 3, 32, 32)
    data = Path(json.loads((trained[0] / "meta.json").read_text())["data_root"])

    def register_with(value):
        monkeypatch.setattr(registry, "category_metrics", lambda *a, **k: {"image_auroc": value})
        return registry.register(uri, trained[0], HELD_OUT, support, {"files": ["x.png"]}, data)

    worse = register_with(best - 0.1)
    assert worse.alias == "challenger"
    assert client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion").version == champion.version
    tie = register_with(best)
    assert tie.alias == "challenger"
    better = register_with(best + 0.1)
    assert better.alias == "champion" and better.previous_champion == champion.version
    assert client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "champion").version == better.version
    assert client.get_model_version_by_alias(f"fsad-{HELD_OUT}", "challenger").version == tie.version


def test_pyfunc_round_trip_equals_direct_scoring(store, trained, data_with_manifest, monkeypatch):
    """models:/fsad-tire@<version> scores exactly like the evaluation scorer built from the same shots."""
    import mlflow.pyfunc

    from orchestrator.tracking.artifacts import load_model_dir
    from orchestrator.evaluation.evaluate import load_test_set, make_scorer, support_draws
    from orchestrator.tracking.registry import register

    model, cfg, _ = load_model_dir(trained[0])
    test = load_test_set(data_with_manifest, HELD_OUT, cfg.data.image_size)
    index = support_draws(test.support_pool.shape[0], SHOTS, 1, cfg.eval.seed, HELD_OUT)[0]
    support = test.support_pool[index]
    result = register(store["uri"], trained[0], HELD_OUT, support, {"draw": 0}, None)
    mlflow.set_tracking_uri(store["uri"])
    monkeypatch.setenv("FSAD_SERVE_IMAGE_ROOT", str(data_with_manifest))  # the operator allows paths under it
    loaded = mlflow.pyfunc.load_model(f"models:/fsad-{HELD_OUT}/{result.version}")
    images = test.images[:4]
    out = loaded.predict(images.numpy())
    scorer = make_scorer("ours", model, cfg)
    scores, maps = scorer.score(images, scorer.adapt(support))
    assert out["score"].shape == (4,) and out["anomaly_map"].shape == (4, cfg.data.image_size, cfg.data.image_size)
    np.testing.assert_allclose(out["score"], scores.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["anomaly_map"], maps.numpy(), rtol=1e-4, atol=1e-6)
    # the columns `fsad predict` writes: threshold, verdict, target and mask from the version's calibration
    from orchestrator.tracking.registry import calibrate_support

    expected = calibrate_support(model, cfg, support)
    # K = 2: one degree of freedom, t_{0.99,1} ≈ 32 multiplies the log-score spread, so float noise in the
    # scores shows in the threshold at ~1e-5; the version's own threshold is what the pyfunc must return
    assert result.calibration["threshold"] == pytest.approx(expected.threshold, rel=1e-3)
    np.testing.assert_allclose(out["threshold"], result.calibration["threshold"], rtol=1e-9)
    assert list(out["verdict"]) == ["anomalous" if s > result.calibration["threshold"] else "ok" for s in out["score"]]
    assert (out["target_fpr"] == 0.01).all()
    assert np.array_equal(out["mask"], (out["anomaly_map"] > result.calibration["pixel_threshold"]).astype(np.uint8))
    # file paths score like the decoded images; uint8 arrays like floats
    import pandas as pd

    by_path = loaded.predict(pd.DataFrame({"path": test.paths[:2]}))
    np.testing.assert_allclose(by_path["score"], scores[:2].numpy(), rtol=1e-5, atol=1e-6)
    as_bytes = loaded.predict((images[:1].numpy() * 255).round().astype(np.uint8))
    assert np.isfinite(as_bytes["score"]).all()


def test_loading_a_registered_model_never_unpickles(store, registered, monkeypatch):
    import cloudpickle
    import mlflow.pyfunc

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during model load")

    for module in (pickle, cloudpickle):
        monkeypatch.setattr(module, "load", refuse)
        monkeypatch.setattr(module, "loads", refuse)
    real_load = torch.load

    def guarded(*args, **kwargs):
        assert kwargs.get("weights_only", True) is not False, "torch.load without weights_only"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)
    mlflow.set_tracking_uri(store["uri"])
    loaded = mlflow.pyfunc.load_model(registered)
    out = loaded.predict(np.random.default_rng(0).random((1, 1, 40, 40)))  # grey, another size
    assert out["score"].shape == (1,) and np.isfinite(out["score"]).all()


def test_adapt_registers_a_new_category_and_records_its_adaptation_time(client, store, registered, small_real_root, tmp_path, capsys):
    """A category the model never saw (tire was held out) from K images, registered in one call."""
    from orchestrator.cli import main

    support = tmp_path / "support"
    support.mkdir()
    for f in image_files(small_real_root / HELD_OUT / "train" / "good")[:5]:
        shutil.copy2(f, support / f.name)
    code = main(["adapt", "--model", registered, "--support", str(support), "--name", "tire_line2",
                 "--tracking-uri", store["uri"]])
    assert code == 0
    assert "registered fsad-tire_line2 version 1 as @champion" in capsys.readouterr().out
    version = client.get_model_version_by_alias("fsad-tire_line2", "champion")
    assert version.tags["fsad.shots"] == "5" and version.tags["fsad.source_model"].startswith(f"models:/fsad-{HELD_OUT}/")
    run = client.get_run(version.run_id)
    # the time itself is a benchmark figure (docs/benchmarks.md), not a test: it depends on the machine's load
    assert run.data.metrics["adapt_seconds"] > 0


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("model_uri, needle", [
    ("models:/fsad-nope@champion", "no registered model named 'fsad-nope'"),
    (f"models:/fsad-{HELD_OUT}@nope", "has no alias 'nope'"),
    (f"models:/fsad-{HELD_OUT}/999", "has no version '999'"),
    ("models:/bad uri", "expected models:/NAME@ALIAS"),
])
def test_adapt_unknown_model_or_alias_is_one_line_error(store, registered, tmp_path, capsys, model_uri, needle):
    from orchestrator.cli import main

    (tmp_path / "s").mkdir()
    code = main(["adapt", "--model", model_uri, "--support", str(tmp_path / "s"), "--name", "x",
                 "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_register_unknown_run_is_one_line_error(store, capsys):
    from orchestrator.cli import main

    code = main(["register", "--run", "0" * 32, "--target", HELD_OUT, "--draw", "0", "--tracking-uri", store["uri"]])
    err = capsys.readouterr().err
    assert code == 2 and "no such run" in err and len(err.strip().splitlines()) == 1, err


def test_pyfunc_wrong_channels_and_unknown_alias_are_clear_errors(store, registered):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(store["uri"])
    loaded = mlflow.pyfunc.load_model(registered)
    with pytest.raises(MlflowException, match="4 channels"):
        loaded.predict(np.zeros((1, 4, 32, 32), dtype=np.float32))
    with pytest.raises(MlflowException, match=r"\[0, 1\]"):
        loaded.predict(np.full((1, 3, 32, 32), 7.5))
    with pytest.raises(MlflowException, match="fsad-nope"):
        mlflow.pyfunc.load_model("models:/fsad-nope@champion")
    with pytest.raises(MlflowException, match="nope"):
        mlflow.pyfunc.load_model(f"models:/fsad-{HELD_OUT}@nope")


def test_distributed_training_is_tracked_with_staleness_and_throughput(client, store, data_with_manifest,
                                                                        tmp_path):
    """`fsad train --workers 1` (Ray in-process) logs its per-update metrics into one training run."""
    from orchestrator.cli import main

    out = tmp_path / "ray_model"
    code = main(["train", "--data", str(data_with_manifest), "--target", HELD_OUT, "--out", str(out), "--quiet",
                 "--workers", "1", "--tracking-uri", store["uri"], *tiny_sets(train__episodes=3),
                 "--set", "distributed.start_timeout_s=600"])  # actor start-up is slow on a busy 2-core machine
    assert code == 0
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["distributed.workers"] == "1"
    for key in ("loss", "l_rec", "l_cd", "pos_energy", "neg_energy", "staleness", "learner_idle_frac",
                "episodes_per_s.0"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_fsad_video_is_one_tracked_run_with_frame_auroc_and_pictures(client, store, small_real_root, tmp_path, capsys):
    from orchestrator.cli import main
    from tests.test_video import VIDEO, video_sets

    out = tmp_path / "ped2"
    code = main(["video", "--target", "ucsd_ped2", "--out", str(out), "--video-root", str(VIDEO), "--data",
                 str(small_real_root), "--quiet", "--tracking-uri", store["uri"], *video_sets()])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text())
    experiment = client.get_experiment_by_name("fsad")
    runs = client.search_runs([experiment.experiment_id], "tags.`fsad.kind` = 'video'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["fsad.scene"] == "ucsd_ped2"
    assert run.data.tags["data.hash"] == record["data_sha256"]
    assert run.data.params["train.episodes"] == str(record["params"]["train.episodes"])
    for k, values in record["shots"].items():
        assert run.data.metrics[f"frame_auroc_{k}"] == pytest.approx(values["frame_auroc"])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(int(run.data.params["train.episodes"])))
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "scores.csv", "plots", "model"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/scores_over_time.png"]
    # bad input: one line, exit 2, and no run left behind
    assert main(["video", "--target", "nope", "--out", str(tmp_path / "x"), "--video-root", str(VIDEO),
                 "--tracking-uri", store["uri"], *video_sets()]) == 2
    assert "nope" in capsys.readouterr().err
    assert len(client.search_runs([experiment.experiment_id], "tags.`fsad.kind` = 'video'")) == 1


def test_runs_page_url_opens_the_model_training_view_and_drops_credentials():
    from orchestrator.tracking.server import runs_page_url

    assert runs_page_url("http://fsad:s3cret@127.0.0.1:5000/", "4") == \
        "http://127.0.0.1:5000/#/experiments/4?workflowType=machine_learning"
    assert runs_page_url("https://mlflow.example.org/team", "7") == \
        "https://mlflow.example.org/team/#/experiments/7?workflowType=machine_learning"
    assert runs_page_url("sqlite:///mlflow.db", "1") is None
