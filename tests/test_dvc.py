"""S3 and DVC end to end against real services: moto_server (a real S3 endpoint on 127.0.0.1), `fsad
ingest` from s3://, and the DVC pipeline in a temporary git repository on a tiny budget: `dvc repro`,
`dvc metrics show`, `dvc plots show`, `dvc push`/`dvc pull` through an S3 remote with endpointurl,
`dvc exp run -S`, and `fsad tune`'s best params (best_params.yaml as params.yaml, best.json's -S
arguments) driving `dvc exp run`.

The temporary repository holds dvc.yaml, a tiny params.yaml and copies of the four packages (the
stages run `python -m pipelines.<stage>` from it with the project's Python first on PATH).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from benchmarks.fixtures import FAKE_CREDENTIALS, MotoServerMissing, s3_client, upload_tree
from benchmarks.fixtures import start_moto as start_moto_server
from orchestrator.cli import main
from tests.conftest import REPO
from workers.data.manifest import read_manifest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TARGET = "tire"


@contextmanager
def start_moto(log_dir: Path, auth: bool = False):
    """A moto_server for the test (benchmarks/fixtures.py); the test is skipped where none is installed."""
    try:
        with start_moto_server(log_dir, auth) as endpoint:
            yield endpoint
    except MotoServerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with start_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def creds(monkeypatch):
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def cli(capsys, *args):
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code, err) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fsad: error: "), (code, err)
    return lines[0]


# --------------------------------------------------------------------------------------------------
# fsad ingest from S3
# --------------------------------------------------------------------------------------------------


def test_ingest_from_s3_equals_local_ingest(moto, creds, small_real_root, tmp_path, capsys):
    client = s3_client(moto)
    client.create_bucket(Bucket="fsad-data")
    n = upload_tree(client, small_real_root, "fsad-data", "benchmarks/small")
    assert n > 0
    s3_out, local_out = tmp_path / "s3", tmp_path / "local"
    code, stdout, err = cli(capsys, "ingest", "--source", "s3://fsad-data/benchmarks/small", "--name", "small",
                            "--out", s3_out, "--endpoint-url", moto)
    assert code == 0, err
    assert cli(capsys, "ingest", "--source", small_real_root, "--name", "small", "--out", local_out)[0] == 0
    from_s3, local = read_manifest(s3_out / "manifest.parquet"), read_manifest(local_out / "manifest.parquet")
    assert from_s3.content_sha256 == local.content_sha256  # same bytes, same hash, wherever they lived
    assert from_s3.rows == local.rows and from_s3.source == "s3://fsad-data/benchmarks/small"
    assert from_s3.root == s3_out / "files"  # downloaded once, read locally afterwards
    for row in from_s3.rows:
        data = (s3_out / "files" / row["image_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in stdout + err


def test_s3_missing_bucket_is_one_line_and_writes_nothing(moto, creds, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto)  # the endpoint from the environment, as boto3 does
    out = tmp_path / "out"
    line = error_line(*cli(capsys, "ingest", "--source", "s3://no-such-bucket/x", "--name", "n", "--out", out)[::2])
    assert "no-such-bucket" in line and "does not exist" in line
    assert not out.exists()
    s3_client(moto).create_bucket(Bucket="empty-bucket")
    line = error_line(*cli(capsys, "ingest", "--source", "s3://empty-bucket/none", "--name", "n", "--out", out)[::2])
    assert "has no objects" in line and not out.exists()


def test_s3_credentials_refused_is_one_line_without_secrets(creds, monkeypatch, tmp_path, capsys):
    secret = "wJalrXUtnFEMI-very-secret"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with start_moto(tmp_path, auth=True) as endpoint:
        out = tmp_path / "out"
        code, stdout, err = cli(capsys, "ingest", "--source", "s3://fsad-data/x", "--name", "n", "--out", out,
                                "--endpoint-url", endpoint.replace("http://", "http://user:pw@"))
        line = error_line(code, err)
    assert "credentials refused" in line and "fsad-data" in line
    assert secret not in stdout + err and "AKIAUNKNOWNKEY" not in stdout + err and "user:pw" not in err
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# The DVC pipeline in a temporary git repository
# --------------------------------------------------------------------------------------------------

TINY_PARAMS = {
    "data": {"image_size": 32},
    "model": {"backbone": {"width": 8, "out_dim": 8}},
    "langevin": {"steps": 2},
    "train": {"episodes": 3, "shots": 2, "queries": 2, "checkpoint_every": 2},
    "eval": {"draws": 2, "overlays": 1, "calibration_size_correction": False},
    # kolektor: the folds' validation category (checkpoint selection), juice_bottle the one training category
    "pipeline": {"name": "small", "targets": [TARGET], "shots": [1, 2], "methods": ["ours", "knn"],
                 "val_categories": ["kolektor"], "max_test_images": 6},
    "experiments": {"ablation_targets": [TARGET], "ablations": ["hard", "noise_init"], "video_targets": ["ucsd_ped2"],
                    "video_shots": [1, 2], "video_draws": 2, "video_test_every": 40, "video_train_every": 20},
}
VIDEO_ROOT = REPO.parent / "shared" / "data" / "fsad-video"


def merge(base: dict, change: dict) -> dict:
    for key, value in change.items():
        if isinstance(value, dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def tree_hashes(repo: Path, *folders: str) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted((repo / folder).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                out[path.relative_to(repo).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dvc_repo(small_real_root, moto, tmp_path_factory):
    """A git + DVC repository with the project's pipeline, a tiny budget, a local and an S3 remote, the source
    at ../shared/small (a link to the small copy); after `dvc repro`, committed."""
    repo = tmp_path_factory.mktemp("dvc") / "repo"
    repo.mkdir()
    (repo.parent / "shared").mkdir()  # ../shared beside the checkout, as in CI: the source is read through it
    (repo.parent / "shared" / "small").symlink_to(small_real_root)
    for name in ("model", "workers", "orchestrator", "pipelines"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, repo / name)
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params["pipeline"]["source"] = "../shared/small"  # relative, as the project's own params.yaml
    params["experiments"]["video_root"] = str(VIDEO_ROOT)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, **FAKE_CREDENTIALS, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "FSAD_TRACKING": "0",
           "PYTHONPATH": str(repo)}
    env.pop("AWS_ENDPOINT_URL", None)
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], repo, env)
    run([dvc, "init", "-q"], repo, env)
    run([dvc, "remote", "add", "-d", "local", str(repo.parent / "store")], repo, env)
    run([dvc, "remote", "add", "s3", "s3://dvc-remote/cache"], repo, env)
    run([dvc, "remote", "modify", "s3", "endpointurl", moto], repo, env)
    s3_client(moto).create_bucket(Bucket="dvc-remote")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "pipeline"], repo, env)
    log = run([dvc, "repro"], repo, env, timeout=600)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "repro"], repo, env)
    return repo, env, log


def test_dvc_repro_end_to_end(dvc_repo):
    repo, env, log = dvc_repo
    for stage in ("ingest", "split", f"train@{TARGET}", f"evaluate@{TARGET}", "report"):
        assert f"Running stage '{stage}'" in log, log[-3000:]
    manifest = read_manifest(repo / "data" / "small" / "manifest.parquet")
    metrics = json.loads((repo / "results" / "metrics" / f"{TARGET}.json").read_text())
    assert metrics["manifest_sha256"] == manifest.content_sha256
    assert len(metrics["splits_sha256"]) == 64
    for k in ("K1", "K2"):
        assert 0.0 <= metrics["ours"][k]["image_auroc"] <= 1.0
    # pipeline.sweep_methods (default [ours]): the baselines are scored at the largest K only
    assert list(metrics["knn"]) == ["K2"] and 0.0 <= metrics["knn"]["K2"]["image_auroc"] <= 1.0
    assert not (repo / "results" / "eval" / TARGET / "knn" / "K1").exists()
    meta = json.loads((repo / "results" / "models" / TARGET / "ours" / "meta.json").read_text())
    assert meta["manifest_sha256"] == manifest.content_sha256 and TARGET in meta["held_out"]
    # pipeline.val_categories select the fold's checkpoint and are not trained on
    assert meta["val_categories"] == ["kolektor"] and meta["train_categories"] == ["juice_bottle"]
    assert [h["episode"] for h in meta["selection"]["history"]][0] == 0
    # pipeline.calibrate (default [ours]): only ours pays for a calibrated threshold
    ours_k2 = json.loads((repo / "results" / "eval" / TARGET / "ours" / "K2" / "metrics.json").read_text())
    knn_k2 = json.loads((repo / "results" / "eval" / TARGET / "knn" / "K2" / "metrics.json").read_text())
    assert ours_k2["threshold"]["mean"] is not None and "target_fpr" in ours_k2
    assert "threshold" not in knn_k2 and "target_fpr" not in knn_k2
    # pipeline.max_test_images: 6 of the 8 test images, both classes, the same images for every method
    assert (ours_k2["n_test"], ours_k2["n_test_all"], ours_k2["n_anomalous"]) == (6, 8, 3)
    assert knn_k2["n_test"] == 6 and metrics["n_test"] == 6
    assert "6 of its 8 test images" in (repo / "results" / "report" / "results.md").read_text()
    assert (repo / "results" / "plots" / "roc" / TARGET / "ours.csv").read_text().startswith("fpr,tpr\n")
    assert (repo / "results" / "plots" / "pro" / TARGET / "knn.csv").read_text().startswith("fpr,pro\n")
    assert "| **mean** | ours | 1 |" in (repo / "results" / "report" / "results.md").read_text()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "split", f"train@{TARGET}", f"evaluate@{TARGET}", "report"}
    shown = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], repo, env))
    files = next(iter(shown.values()))["data"]
    assert f"results/metrics/{TARGET}.json" in files and "results/report/summary.json" in files
    plots = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], repo, env))
    assert not plots.get("errors"), plots.get("errors")
    assert {f"results/plots/roc/{TARGET}/ours.csv", f"results/plots/pro/{TARGET}/knn.csv",
            "results/report/bars.csv"} <= set(plots["data"])
    status = run([str(BIN / "dvc"), "status"], repo, env)
    assert "train@" not in status and "evaluate@" not in status  # nothing but the always-read source


def test_dvc_push_pull_through_s3_restores_identical_outputs(dvc_repo):
    repo, env, _ = dvc_repo
    dvc = str(BIN / "dvc")
    folders = ("data", "results")
    before = tree_hashes(repo, *folders)
    assert "data/small/manifest.parquet" in before and f"results/models/{TARGET}/ours/model.safetensors" in before
    run([dvc, "push", "-r", "s3"], repo, env)
    listed = s3_client(env_endpoint(repo)).list_objects_v2(Bucket="dvc-remote")
    assert listed.get("KeyCount", 0) > 0
    shutil.rmtree(repo / ".dvc" / "cache")
    for folder in folders:
        shutil.rmtree(repo / folder)
    run(["git", "checkout", "--", "."], repo, env)  # metrics and plots (cache: false) live in git
    run([dvc, "pull", "-r", "s3"], repo, env)
    after = tree_hashes(repo, *folders)
    assert after == before
    assert read_manifest(repo / "data" / "small" / "manifest.parquet").content_sha256 == \
        json.loads((repo / "results" / "metrics" / f"{TARGET}.json").read_text())["manifest_sha256"]


def env_endpoint(repo: Path) -> str:
    config = (repo / ".dvc" / "config").read_text()
    return next(line.split("=", 1)[1].strip() for line in config.splitlines() if "endpointurl" in line)


def test_dvc_exp_run_set_param_is_recorded_in_the_metrics(dvc_repo):
    repo, env, _ = dvc_repo
    log = run([str(BIN / "dvc"), "exp", "run", "-S", "model.lam_max=0.5"], repo, env, timeout=600)
    assert f"Running stage 'train@{TARGET}'" in log and f"Running stage 'evaluate@{TARGET}'" in log
    assert "Running stage 'split'" not in log  # the data did not change
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["lam_max"] == 0.5
    metrics = json.loads((repo / "results" / "metrics" / f"{TARGET}.json").read_text())
    assert metrics["params"]["model.lam_max"] == 0.5
    saved = yaml.safe_load((repo / "results" / "models" / TARGET / "ours" / "config.yaml").read_text())
    assert saved["model"]["lam_max"] == 0.5
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], repo, env))
    assert "0.5" in json.dumps(shown)


def test_dvc_repro_experiments_runs_ablations_video_and_the_report(dvc_repo):
    """The paper's protocol on a tiny budget: `dvc repro experiments/dvc.yaml` reuses the root pipeline's
    outputs, runs the ablations and the video protocol, and writes docs/results.md with its figures."""
    repo, env, _ = dvc_repo
    # the second pipeline file joins only here, so the root pipeline's push/pull test sees dvc.yaml alone
    shutil.copytree(REPO / "experiments", repo / "experiments", ignore=shutil.ignore_patterns("dvc.lock"))
    log = run([str(BIN / "dvc"), "repro", "experiments/dvc.yaml"], repo, env, timeout=900)
    for stage in ("ablations", "video", "report"):
        assert f"Running stage 'experiments/dvc.yaml:{stage}'" in log, log[-3000:]
    assert f"Running stage 'train@{TARGET}'" not in log  # the root pipeline's outputs are reused
    lock = yaml.safe_load((repo / "experiments" / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ablations", "video", "report"}
    manifest = read_manifest(repo / "data" / "small" / "manifest.parquet").content_sha256
    for name in ("hard", "noise_init"):
        record = json.loads((repo / "results" / "ablations" / TARGET / name / "metrics.json").read_text())
        assert record["manifest_sha256"] == manifest and record["ablation"] == name
        assert 0.0 <= record["image_auroc"]["mean"] <= 1.0 and record["score_gap"]["std"] > 0  # draws differ
    video = json.loads((repo / "results" / "video" / "ucsd_ped2" / "metrics.json").read_text())
    for k in ("K1", "K2"):
        assert 0.0 <= video["shots"][k]["frame_auroc"] <= 1.0
    report = (repo / "docs" / "results.md").read_text()
    assert manifest in report and "| ucsd_ped2 | ours (paper) |" in report
    assert "| tire | hard | `model.shrink=hard` |" in report and "**Profile: `quick`**" in report
    figures = sorted(p.name for p in (repo / "docs" / "figures").glob("*.png"))
    assert figures == ["bars.png", "loss_curves.png", "overlays.png", "shot_sweep.png", "video_ucsd_ped2.png"]
    assert all(f"(figures/{name})" in report for name in figures)
    status = run([str(BIN / "dvc"), "status", "experiments/dvc.yaml"], repo, env)
    assert "ablations" not in status and "report" not in status  # everything up to date


def test_fsad_tune_best_params_drive_dvc_exp_run(dvc_repo, tmp_path):
    """What `fsad tune` writes runs the pipeline: best_params.yaml (built as orchestrator/tuning/results.py
    builds it, the repository's params with tuned values) copied over params.yaml, then `dvc exp run`; and best.json's
    `dvc_exp_run` arguments (-S k=v ...) given to `dvc exp run` as they stand. Each run's stage metrics and
    saved config record the tuned values. Afterwards the workspace is back at the committed `dvc repro`."""
    from orchestrator.config import load_config, save_config
    from orchestrator.tuning.objective import apply_params
    from orchestrator.tuning.results import set_arguments

    repo, env, _ = dvc_repo
    dvc = str(BIN / "dvc")
    runs = [("best_params.yaml", {"model.tau": 12.837465019283746, "model.lam_max": 0.7519283746501928,
                                  "langevin.step_size": 7.2501938475610293}),
            ("-S", {"model.tau": 31.40592653589793, "model.lam_max": 1.2718281828459045,
                    "langevin.step_size": 3.5012345678901234, "train.shots": 1})]
    try:
        for how, tuned in runs:
            run(["git", "checkout", "--", "params.yaml"], repo, env)  # the committed params (not an earlier experiment's)
            if how == "best_params.yaml":
                save_config(apply_params(load_config(repo / "params.yaml"), tuned), tmp_path / "best_params.yaml")
                shutil.copy(tmp_path / "best_params.yaml", repo / "params.yaml")
                extra = []
            else:
                extra = shlex.split(set_arguments(tuned)["dvc_exp_run"])
                assert extra[:2] == ["-S", f"model.tau={tuned['model.tau']}"]
            log = run([dvc, "exp", "run", *extra], repo, env, timeout=600)
            assert f"Running stage 'train@{TARGET}'" in log and f"Running stage 'evaluate@{TARGET}'" in log, how
            assert "Running stage 'split'" not in log, how  # every other value is the committed one
            metrics = json.loads((repo / "results" / "metrics" / f"{TARGET}.json").read_text())
            saved = load_config(repo / "results" / "models" / TARGET / "ours" / "config.yaml").flatten()
            for key, value in tuned.items():
                if key in metrics["params"]:
                    assert metrics["params"][key] == pytest.approx(value, rel=1e-12), (how, key)
                assert saved[key] == pytest.approx(value, rel=1e-12), (how, key)
            assert {"model.lam_max", "langevin.step_size"} <= set(metrics["params"])
    finally:  # the committed state for anything after this test: params, lock and git-kept outputs, cached outputs
        subprocess.run(["git", "checkout", "--", "."], cwd=repo, env=env, capture_output=True)
        subprocess.run([dvc, "checkout", "--force"], cwd=repo, env=env, capture_output=True)
    status = run([dvc, "status"], repo, env)
    assert "train@" not in status and "evaluate@" not in status


# --------------------------------------------------------------------------------------------------
# A second clone at another path: the same bytes, a clean `dvc status`
# --------------------------------------------------------------------------------------------------


def test_second_clone_at_another_path_reproduces_byte_identical_and_clean(dvc_repo, small_real_root, tmp_path):
    """A clone of the repository at another path and depth, with its own `../shared` linking to the same data
    (as ../shared is beside a checkout): after `dvc pull`, `dvc repro` in the clone re-reads the source and
    writes the same manifest bytes, nothing downstream reruns and `dvc status` is clean. Before, the manifest
    recorded the data root resolved through the link relative to the checkout, so every clone wrote another
    file. `dvc exp run --temp` then runs an experiment in a copy under .dvc/tmp (the relative source read from
    the repository) without touching the workspace's committed results."""
    first, env, _ = dvc_repo
    dvc = str(BIN / "dvc")
    second = tmp_path / "b" / "c" / "clone"
    second.parent.mkdir(parents=True)
    (second.parent / "shared").mkdir()
    (second.parent / "shared" / "small").symlink_to(small_real_root)
    manifest = (first / "data" / "small" / "manifest.parquet").read_bytes()
    assert b"../../../shared/small" in manifest  # the root as written, relative to data/small
    assert str(first.parent).encode() not in manifest and str(small_real_root).encode() not in manifest

    run(["git", "clone", "-q", str(first), str(second)], tmp_path, env)
    clone_env = {**env, "PYTHONPATH": str(second)}
    # pull from the first checkout's cache (a cache and a local remote share one layout): it holds every output
    # of the committed `dvc repro`, whatever earlier tests left in that workspace, and needs no `dvc push`
    (second / ".dvc" / "config.local").write_text(f'[\'remote "first"\']\n    url = {first / ".dvc" / "cache"}\n')
    run([dvc, "pull", "-q", "-r", "first"], second, clone_env)
    log = run([dvc, "repro"], second, clone_env, timeout=600)
    assert "Running stage 'ingest'" in log  # always_changed: the source is read again ...
    assert "Running stage 'split'" not in log and f"Running stage 'train@{TARGET}'" not in log, log[-3000:]
    assert (second / "data" / "small" / "manifest.parquet").read_bytes() == manifest  # ... to the same bytes
    status = run([dvc, "status"], second, clone_env)
    assert status.split() == ["ingest:", "always", "changed"], status  # nothing else: the clean state
    assert run(["git", "status", "--porcelain"], second, clone_env).strip() == ""  # dvc.lock unchanged too

    # an evaluation-only change (no retraining: the cheapest experiment that rewrites committed metrics and plots)
    committed = tree_hashes(second, "results")
    log = run([dvc, "exp", "run", "--temp", "-S", "eval.augment_support=true"], second, clone_env, timeout=600)
    assert f"Running stage 'evaluate@{TARGET}'" in log and f"Running stage 'train@{TARGET}'" not in log, log[-3000:]
    assert tree_hashes(second, "results") == committed  # the experiment ran in a copy ...
    assert run(["git", "status", "--porcelain"], second, clone_env).strip() == ""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], second, clone_env).split()
    assert len(refs) == 1, refs  # ... and is kept in an experiment ref, with other metrics than the workspace's
    assert "augment_support: true" in run(["git", "show", f"{refs[0]}:params.yaml"], second, clone_env)
    metrics = f"results/metrics/{TARGET}.json"
    assert run(["git", "show", f"{refs[0]}:{metrics}"], second, clone_env) != (second / metrics).read_text()

