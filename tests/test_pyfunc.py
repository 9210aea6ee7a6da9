"""The packaged model (orchestrator/tracking/pyfunc.py) is data only and loading it runs no code from it.

A package is written with `save_package` (what `fsad register` uploads) into a temporary folder, so no
tracking store is needed. Planted Python files (would create a marker file when run) stay unrun by
`mlflow.pyfunc.load_model` and `orchestrator.tracking.pyfunc.load` alike, in a fresh interpreter; an MLmodel
rewritten to name code is refused by `load`; an old-format (models-from-code) package stops with one
line; image paths are read only under the operator's FSAD_SERVE_IMAGE_ROOT and every path outside it
gets the same answer whether or not the file exists.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from model.errors import InputError
from tests.conftest import HELD_OUT, REPO, image_files

pytestmark = pytest.mark.slow
SHOTS = 2
DATA_FILES = {"model.safetensors", "config.yaml", "meta.json", "dictionary.safetensors"}

# What a tampered or planted file would do when run: leave a marker named after itself.
PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"
# The entry file that old-format packages carry and MLflow runs on load (as registered before).
OLD_ENTRY = "from mlflow.models import set_model\n\nfrom orchestrator.pyfunc import FsadModel\n\nset_model(FsadModel())\n"
OLD_MLMODEL = """flavors:
  python_function:
    artifacts:
      dictionary: {path: artifacts/dictionary.safetensors, uri: /home/someone/fsad/dictionary.safetensors}
      weights: {path: artifacts/weights, uri: /home/someone/fsad/weights}
    cloudpickle_version: 3.1.3
    code: null
    env: {conda: conda.yaml, virtualenv: python_env.yaml}
    loader_module: mlflow.pyfunc.loaders.code_model
    model_code_path: /home/someone/fsad/orchestrator/pyfunc_entry.py
    python_version: 3.11.7
    streamable: false
mlflow_version: 3.17.2
"""


@pytest.fixture(scope="module")
def package(trained_model, small_real_root, tmp_path_factory) -> Path:
    """trained_model adapted to HELD_OUT with SHOTS images and packaged as `fsad register` does."""
    from orchestrator.tracking.artifacts import load_model_dir
    from orchestrator.tracking.pyfunc import save_dictionary, save_package
    from orchestrator.tracking.registry import adapt
    from workers.data.folders import load_images

    folder = tmp_path_factory.mktemp("package")
    model, cfg, _ = load_model_dir(trained_model)
    support, _ = load_images(image_files(small_real_root / HELD_OUT / "train" / "good")[:SHOTS], cfg.data.image_size)
    dictionary, _ = adapt(model, cfg, support)
    save_dictionary(dictionary, folder / "dictionary.safetensors", HELD_OUT)
    save_package(folder / "model", trained_model, folder / "dictionary.safetensors", {"fsad_category": HELD_OUT})
    return folder / "model"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 40, 40)).astype(np.float32)


def copy_package(package: Path, dst: Path) -> Path:
    return Path(shutil.copytree(package, dst))


def strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings(v)] + [str(k) for k in tree]
    if isinstance(tree, list):
        return [s for v in tree for s in strings(v)]
    return [tree] if isinstance(tree, str) else []


def load_and_score(package: Path, images: np.ndarray, cwd: Path, loader: str) -> list[float]:
    """Load `package` in a fresh interpreter (nothing imported yet that a planted file could shadow)."""
    np.save(cwd / "images.npy", images)
    load = {"mlflow": "import mlflow.pyfunc; m = mlflow.pyfunc.load_model(sys.argv[1])",
            "fsad": "from orchestrator.tracking.pyfunc import load; m = load(sys.argv[1])"}[loader]
    code = (f"import json, sys, numpy as np\n{load}\n"
            "print(json.dumps(m.predict(np.load('images.npy'))['score'].tolist()))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, str(package)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------


def test_package_holds_data_only_and_mlmodel_no_absolute_path(package, trained_model):
    files = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
    assert {f"data/fsad_model/{name}" for name in DATA_FILES} <= files
    assert not [f for f in files if f.endswith((".py", ".pkl", ".pickle", ".pt", ".pth", ".pyc"))], files
    mlmodel = (package / "MLmodel").read_text()
    flavor = yaml.safe_load(mlmodel)["flavors"]["python_function"]
    assert flavor["loader_module"] == "orchestrator.pyfunc" and flavor["data"] == "data/fsad_model"
    assert not flavor.get("code") and "model_code_path" not in flavor and "python_model" not in flavor
    assert not [s for s in strings(yaml.safe_load(mlmodel)) if s.startswith("/")], mlmodel
    for local in (str(REPO), str(trained_model), str(package.parent)):
        assert local not in mlmodel


def test_mlflow_and_fsad_loaders_score_like_the_evaluation_scorer(package, images, tmp_path):
    import mlflow.pyfunc
    import torch

    from orchestrator.evaluation.evaluate import make_scorer
    from orchestrator.tracking.pyfunc import load, load_dictionary

    by_fsad = load(str(package))
    by_mlflow = mlflow.pyfunc.load_model(str(package))
    scorer = make_scorer("ours", by_fsad.model, by_fsad.cfg)
    dictionary = load_dictionary(package / "data" / "fsad_model" / "dictionary.safetensors")
    resized = torch.nn.functional.interpolate(torch.from_numpy(images), size=(by_fsad.cfg.data.image_size,) * 2,
                                              mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    expected, _ = scorer.score(resized, dictionary)
    for loaded in (by_fsad, by_mlflow):
        np.testing.assert_allclose(loaded.predict(images)["score"], expected.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Nothing stored with the model runs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["mlflow", "fsad"])
def test_planted_and_tampered_python_files_are_never_run(loader, package, images, tmp_path):
    clean = load_and_score(package, images, tmp_path, loader)
    planted = copy_package(package, tmp_path / "planted")
    markers = tmp_path / "markers"
    markers.mkdir()
    targets = ["pyfunc_entry.py", "python_model.py", "loader.py", "__init__.py", "data/__init__.py",
               "data/fsad_model/__init__.py", "data/fsad_model/model.py", "data/fsad_model/orchestrator/__init__.py",
               "data/fsad_model/orchestrator/pyfunc.py", "code/orchestrator/__init__.py", "code/orchestrator/pyfunc.py",
               "orchestrator/__init__.py", "orchestrator/pyfunc.py", "sitecustomize.py"]
    for index, rel in enumerate(targets):
        (planted / rel).parent.mkdir(parents=True, exist_ok=True)
        (planted / rel).write_text(PAYLOAD.format(marker=str(markers / f"{index}_{Path(rel).name}")))
    # and a tampered copy of the entry file old-format packages ran
    (planted / "python_model.py").write_text(OLD_ENTRY + PAYLOAD.format(marker=str(markers / "tampered_entry")))
    assert load_and_score(planted, images, tmp_path, loader) == pytest.approx(clean, rel=1e-6)
    assert sorted(os.listdir(markers)) == []


def test_fsad_load_refuses_an_mlmodel_rewritten_to_name_code(package, tmp_path):
    """mlflow obeys MLmodel (it would put code/ on sys.path); fsad's loader checks the flavor first."""
    from orchestrator.tracking.pyfunc import load

    tampered = copy_package(package, tmp_path / "tampered")
    marker = tmp_path / "ran"
    (tampered / "code" / "orchestrator").mkdir(parents=True)
    (tampered / "code" / "orchestrator" / "pyfunc.py").write_text(PAYLOAD.format(marker=str(marker)))
    tree = yaml.safe_load((tampered / "MLmodel").read_text())
    tree["flavors"]["python_function"]["code"] = "code"
    (tampered / "MLmodel").write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError) as info:
        load(str(tampered))
    assert "code 'code'" in str(info.value) and len(str(info.value).splitlines()) == 1
    tree["flavors"]["python_function"].update(code=None, loader_module="evil_loader")
    (tampered / "MLmodel").write_text(yaml.safe_dump(tree))
    with pytest.raises(InputError, match="evil_loader"):
        load(str(tampered))
    assert not marker.exists()


def old_format_package(package: Path, folder: Path, entry: str = OLD_ENTRY) -> Path:
    """A package as fsad registered them before: MLmodel models-from-code, pyfunc_entry.py, artifacts/."""
    folder.mkdir()
    data = package / "data" / "fsad_model"
    (folder / "artifacts" / "weights").mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml", "meta.json"):
        shutil.copyfile(data / name, folder / "artifacts" / "weights" / name)
    shutil.copyfile(data / "dictionary.safetensors", folder / "artifacts" / "dictionary.safetensors")
    for name in ("conda.yaml", "python_env.yaml", "requirements.txt"):
        shutil.copyfile(package / name, folder / name)
    (folder / "MLmodel").write_text(OLD_MLMODEL)
    (folder / "pyfunc_entry.py").write_text(entry)
    return folder


def test_old_format_gives_a_one_line_message(package, tmp_path):
    import mlflow.pyfunc

    from orchestrator.tracking.pyfunc import load
    from orchestrator.tracking.fetch import package_weights

    old = old_format_package(package, tmp_path / "old")
    with pytest.raises(Exception) as info:
        mlflow.pyfunc.load_model(str(old))
    message = str(info.value)
    assert len(message.strip().splitlines()) == 1, message
    assert "old format" in message and "fsad adapt --model" in message

    marker = tmp_path / "ran"
    tampered = old_format_package(package, tmp_path / "old_tampered", PAYLOAD.format(marker=str(marker)) + OLD_ENTRY)
    with pytest.raises(InputError) as info:
        load(str(tampered))  # fsad's loader does not run the stored entry file at all
    assert "old format" in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not marker.exists()
    # its data stay readable: `fsad adapt --model` re-registers an old version from them
    assert package_weights(old) == old / "artifacts" / "weights"


# --------------------------------------------------------------------------------------------------
# Image paths: off by default, confined to the operator's root
# --------------------------------------------------------------------------------------------------


def message_of(model, model_input) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        model.predict(model_input)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    return info.value.message


def test_image_paths_are_refused_unless_the_operator_names_a_root(package, small_real_root, monkeypatch):
    from orchestrator.tracking.pyfunc import load

    monkeypatch.delenv("FSAD_SERVE_IMAGE_ROOT", raising=False)
    model = load(str(package))
    real = str(image_files(small_real_root / HELD_OUT / "test" / "good")[0])
    answers = {message_of(model, pd.DataFrame({"path": [p]})) for p in (real, "/etc/passwd", "/no/such/file.png")}
    assert len(answers) == 1 and "arrays only" in answers.pop()
    assert message_of(model, [real]) == message_of(model, ["/no/such/file.png"])


def test_image_paths_are_read_only_under_the_root(package, small_real_root, tmp_path, monkeypatch):
    from orchestrator.tracking.pyfunc import load
    from workers.data.folders import load_images

    root = tmp_path / "served"
    good = root / "good"
    good.mkdir(parents=True)
    source = image_files(small_real_root / HELD_OUT / "test" / "good")[0]
    shutil.copy2(source, good / "a.png")
    outside = tmp_path / "outside.png"
    shutil.copy2(source, outside)
    (good / "link.png").symlink_to(outside)  # a link inside the root to a file outside it
    monkeypatch.setenv("FSAD_SERVE_IMAGE_ROOT", str(root))
    model = load(str(package))

    decoded, _ = load_images([good / "a.png"], model.cfg.data.image_size)
    expected = model.predict(decoded.numpy())["score"]
    for given in ("good/a.png", str(good / "a.png"), "good/../good/a.png"):
        np.testing.assert_allclose(model.predict(pd.DataFrame({"path": [given]}))["score"], expected, rtol=1e-6)

    refusals = {}
    for given in (str(outside), "../outside.png", "good/../../outside.png", "good/link.png", "/etc/passwd",
                  "/no/such/file.png", "../no_such.png", "good/../../no_such.png"):
        refusals[given] = message_of(model, pd.DataFrame({"path": [given]})).replace(repr(given), "<path>")
    assert len(set(refusals.values())) == 1, refusals  # existing or not, the same answer
    assert "not under the folder" in next(iter(refusals.values()))
    assert "does not exist" in message_of(model, ["good/missing.png"])  # inside the root: a plain error


def test_a_root_that_is_not_a_folder_fails_at_load(package, tmp_path, monkeypatch):
    from orchestrator.tracking.pyfunc import load

    monkeypatch.setenv("FSAD_SERVE_IMAGE_ROOT", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="FSAD_SERVE_IMAGE_ROOT"):
        load(str(package))


def test_dictionary_file_round_trips_the_normal_energies(tmp_path):
    """A registered dictionary keeps image_norm=support's two maps and the shots' whitening matrix and exposure,
    so served scores match `fsad evaluate`'s."""
    import torch

    from model.ebm.sparse import TaskDictionary
    from orchestrator.tracking.pyfunc import load_dictionary, save_dictionary

    g = torch.Generator().manual_seed(0)
    atoms = torch.rand(8, 12, generator=g)
    saved = TaskDictionary(atoms, torch.tensor(2.0), 4, None, torch.rand(3, 4, generator=g), torch.rand(3, 4, generator=g) + 1,
                           torch.rand(8, 8, generator=g), torch.rand(3, generator=g))
    save_dictionary(saved, tmp_path / "d.safetensors", "tire")
    loaded = load_dictionary(tmp_path / "d.safetensors")
    assert loaded.shots == 4 and loaded.center is None
    for name in ("atoms", "scale", "normal_mean", "normal_scale", "whiten", "exposure"):
        torch.testing.assert_close(getattr(loaded, name), getattr(saved, name))
