"""The registered model: an MLflow pyfunc that scores images of one category, stored as data only.

A registered version holds no code and nothing pickled:
    MLmodel                   pyfunc flavor: loader_module `orchestrator.pyfunc` (the entry module of the
                              installed fsad package, which hands over to this one), data `data/fsad_model`;
                              no absolute paths
    data/fsad_model/          model.safetensors + config.yaml + meta.json (an `fsad train` directory) and
                              dictionary.safetensors: the category's task dictionary D (atoms (m, K·h'w'),
                              scale, [center]) with its metadata (shots, category) in the safetensors header,
                              and calibration.json: the threshold, its target false-alarm rate and K
MLflow imports the loader module named in MLmodel and calls its `_load_pyfunc(data_path)`, which is
`load_data_folder` here: it reads the files above (safetensors, YAML with safe_load, JSON) and nothing
else: a Python file planted beside them is never run. `load` is the stricter entry point: it also
refuses an MLmodel that names other code.

Versions registered before this format ran `pyfunc_entry.py` stored with them on load; loading one
now stops with a one-line message (`OLD_FORMAT`) and `fsad adapt --model models:/NAME/N` re-registers it
from its data.

`predict` takes
    * an array (B, C, H, W), C = 1 (grey) or 3 (RGB); floats in [0, 1] or integers in 0..255; any H, W
      (resized to the model's image size like the data loader does), or
    * file paths (a DataFrame with a `path` column, or a list of strings), only when the operator names a
      folder in FSAD_SERVE_IMAGE_ROOT: paths are read under it and refused outside it without touching
      the file system, so a client learns nothing about files elsewhere. Off by default: arrays only.
and returns the columns `fsad predict` writes: {"score": (B,) energies, "threshold": (B,) the calibrated
threshold, "verdict": (B,) "ok" | "anomalous", "target_fpr": (B,), "anomaly_map": (B, S, S) maps,
"mask": (B, S, S) uint8 0/1 (map > pixel threshold)}. A version registered before calibration existed
answers threshold NaN and verdict "uncalibrated" (re-register it with `fsad adapt`). Bad input raises an
MlflowException with INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.methods import OURS
from model.errors import InputError
from model.ebm.sparse import TaskDictionary

LOADER_MODULE = "orchestrator.pyfunc"  # stays: every registered version's MLmodel names it
DATA_DIR = "fsad_model"  # MLflow stores the data folder as data/<its name>
DICTIONARY = "dictionary.safetensors"
CALIBRATION = "calibration.json"  # the threshold and its target (orchestrator/evaluation/calibration.py); absent in old versions
IMAGE_ROOT_ENV = "FSAD_SERVE_IMAGE_ROOT"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy==2.4.6", "safetensors==0.8.0", "PyYAML==6.0.4", "pillow==13.0.0",
                    "mlflow==3.17.2", "fsad"]
OLD_FORMAT = ("this model was registered in fsad's old format, whose loading runs the pyfunc_entry.py stored "
              "with it; it is not loaded: re-register it from its data with `fsad adapt --model "
              "models:/NAME/VERSION --support DIR --name CATEGORY`")


def save_dictionary(dictionary: TaskDictionary, path: Path, category: str) -> None:
    tensors = {f.name: getattr(dictionary, f.name) for f in dataclasses.fields(dictionary)
               if isinstance(getattr(dictionary, f.name), torch.Tensor)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"shots": str(dictionary.shots), "category": category})


def load_dictionary(path: str | Path) -> TaskDictionary:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    known = {f.name for f in dataclasses.fields(TaskDictionary)}
    extra = {k: v for k, v in tensors.items() if k in known and k not in ("atoms", "scale")}
    return TaskDictionary(atoms=tensors["atoms"], scale=tensors["scale"], shots=int(metadata.get("shots", 0)), **extra)


def bad_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def image_root_from_env() -> Path | None:
    """The folder the operator lets clients name images in (FSAD_SERVE_IMAGE_ROOT), or None: arrays only."""
    value = os.environ.get(IMAGE_ROOT_ENV, "").strip()
    if not value:
        return None
    root = Path(os.path.abspath(value))
    if not root.is_dir():
        raise InputError(f"{IMAGE_ROOT_ENV}={value} is not a directory; name the folder clients may read images from")
    return root


def confined_paths(paths: list[str], root: Path | None) -> list[Path]:
    """Client-given image paths -> files under `root`; relative paths are taken relative to it.

    The same refusal for every path outside the root, decided lexically before any file system call and
    again after resolving links inside the root, so it tells nothing about what exists elsewhere."""
    if root is None:
        raise bad_input(f"this model server reads image arrays only (B, C, H, W); image paths are off unless "
                        f"the operator sets {IMAGE_ROOT_ENV} to a folder")
    real_root = Path(os.path.realpath(root))
    confined = []
    for given in paths:
        lexical = Path(os.path.normpath(root / given)) if "\0" not in given else None
        if (lexical is None or not lexical.is_relative_to(root)
                or not Path(os.path.realpath(lexical)).is_relative_to(real_root)):  # or a link inside pointing out
            raise bad_input(f"image path {given!r} is not under the folder this server reads images from")
        confined.append(lexical)
    return confined


def images_from_input(model_input: Any, image_size: int, image_root: Path | None = None) -> torch.Tensor:
    """Any accepted input -> (B, 3, S, S) float32 in [0, 1]; bad input raises MlflowException (400).

    Paths are read only under `image_root` (None: paths refused)."""
    import pandas as pd

    if isinstance(model_input, dict):
        keys = [k for k in ("images", "image", "inputs", "path") if k in model_input]
        if not keys:
            raise bad_input(f"input dict has keys {sorted(model_input)}; expected 'images' (B, C, H, W) or 'path'")
        model_input = model_input[keys[0]]
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            model_input = [str(p) for p in model_input["path"]]
        elif model_input.shape[1] == 1 and model_input.dtypes.iloc[0] == object:
            model_input = [str(p) for p in model_input.iloc[:, 0]]
        else:
            raise bad_input(f"input DataFrame has columns {list(model_input.columns)}; expected a 'path' column "
                            "or send an array (B, C, H, W) as 'inputs'")
    if isinstance(model_input, (list, tuple)) and not model_input:
        raise bad_input("no images given; expected an array (B, C, H, W) or image paths")
    if isinstance(model_input, (list, tuple)) and all(isinstance(p, str) for p in model_input):
        from workers.data.folders import load_images

        files = confined_paths(list(model_input), image_root)
        try:
            images, _ = load_images(files, image_size)
        except InputError as exc:
            raise bad_input(str(exc)) from None
        return images
    try:
        array = np.asarray(model_input)
    except Exception:  # noqa: BLE001 - ragged lists and such
        raise bad_input("input is not an array (B, C, H, W) or a list of image paths") from None
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise bad_input(f"input array has dtype {array.dtype}; expected numbers (B, C, H, W)")
    if array.size == 0:
        raise bad_input("no images given; expected an array (B, C, H, W) or image paths")
    if array.ndim != 4:
        raise bad_input(f"input array has shape {array.shape}; expected (B, C, H, W) with C = 1 or 3")
    B, C, H, W = array.shape  # batch, channels, height, width
    if C not in (1, 3):
        raise bad_input(f"input array has {C} channels (shape {array.shape}); expected 1 (grey) or 3 (RGB) "
                        "channels in (B, C, H, W) order")
    if B < 1 or H < 2 or W < 2:
        raise bad_input(f"input array has shape {array.shape}; expected at least one image of at least 2x2 pixels")
    if not np.isfinite(array).all():
        raise bad_input("input array has NaN or infinite values")
    if array.dtype.kind in "biu":
        if array.min() < 0 or array.max() > 255:
            raise bad_input("integer input must lie in 0..255")
        array = array.astype(np.float32) / 255.0
    elif array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise bad_input(f"float input must lie in [0, 1] (got {array.min():.3g}..{array.max():.3g}); "
                        "send integers 0..255 for 8-bit images")
    images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).clamp(0, 1)  # (B, C, H, W)
    if C == 1:
        images = images.expand(B, 3, H, W)  # grey replicated to RGB, as the data loader does
    if (H, W) != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True,
                               align_corners=False).clamp(0, 1)  # (B, 3, S, S)
    return images.contiguous()


class FsadPyfunc:
    """Scores images against the stored dictionary of one category (Alg. 2 steps 5-6)."""

    def __init__(self, folder: Path):
        from orchestrator.tracking.artifacts import load_model_dir
        from orchestrator.evaluation.evaluate import make_scorer

        self.model, self.cfg, self.meta = load_model_dir(folder, device="cpu")
        self.dictionary = load_dictionary(folder / DICTIONARY)
        self.calibration = load_calibration(folder / CALIBRATION)
        self.scorer = make_scorer(OURS.name, self.model, self.cfg)  # scores exactly as `fsad evaluate` does
        self.image_root = image_root_from_env()  # read once, when the server loads the model

    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S) -> scores (B,), maps (B, S, S)."""
        scores, maps = [], []
        for start in range(0, images.shape[0], self.cfg.eval.batch_size):
            s, m = self.scorer.score(images[start : start + self.cfg.eval.batch_size], self.dictionary)
            scores.append(s)
            maps.append(m)
        return torch.cat(scores), torch.cat(maps)

    def predict(self, model_input, params=None) -> dict[str, np.ndarray]:
        images = images_from_input(model_input, self.cfg.data.image_size, self.image_root)
        scores, maps = self.score(images)
        scores, maps = scores.numpy(), maps.numpy()
        cal = self.calibration
        if cal is None:
            return {"score": scores, "threshold": np.full(scores.shape, np.nan), "verdict": np.array(
                ["uncalibrated"] * len(scores)), "target_fpr": np.full(scores.shape, np.nan), "anomaly_map": maps,
                "mask": np.zeros(maps.shape, dtype=np.uint8)}
        return {"score": scores, "threshold": np.full(scores.shape, cal.threshold),
                "verdict": np.array([cal.verdict(float(v)) for v in scores]),
                "target_fpr": np.full(scores.shape, cal.target_fpr), "anomaly_map": maps,
                "mask": (maps > cal.pixel_threshold).astype(np.uint8)}


def load_calibration(path: Path):
    """calibration.json of a model data folder (JSON only), or None when the version predates it."""
    from orchestrator.evaluation.calibration import Calibration

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path} is not valid JSON; expected the calibration fsad writes") from None
    return Calibration.from_dict(data, str(path)) if data is not None else None


def load_data_folder(data_path: str) -> FsadPyfunc:
    """MLflow's entry point (via the loader module named in MLmodel): read the data folder, run nothing from it."""
    folder = Path(data_path)
    missing = [n for n in ("model.safetensors", "config.yaml", DICTIONARY) if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{folder} is not an fsad model data folder (no {', '.join(missing)})")
    return FsadPyfunc(folder)


def package_flavor(model_dir: Path) -> dict[str, Any]:
    """The pyfunc flavor of a packaged model (MLmodel read as plain YAML); InputError unless it is ours."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    try:
        flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function")
    except (OSError, yaml.YAMLError, AttributeError):
        flavor = None
    if not isinstance(flavor, dict):
        raise InputError(f"{model_dir} is not an MLflow pyfunc model (no readable MLmodel)")
    if str(flavor.get("loader_module", "")).startswith("mlflow.pyfunc."):  # code from the artifact: old format
        raise InputError(f"{model_dir}: {OLD_FORMAT}")
    expected = f"data/{DATA_DIR}"
    if flavor.get("loader_module") != LOADER_MODULE or flavor.get("data") != expected or flavor.get("code"):
        raise InputError(f"{model_dir}: MLmodel names loader {flavor.get('loader_module')!r}, data "
                         f"{flavor.get('data')!r}, code {flavor.get('code')!r}; an fsad model has loader "
                         f"{LOADER_MODULE!r}, data {expected!r} and no code, so it is not loaded")
    return flavor


def load(model_uri: str, tracking_uri: str | None = None) -> FsadPyfunc:
    """A registered fsad model (models:/NAME@ALIAS, runs:/..., or a local folder), loaded without letting its
    MLmodel choose what code to import: only this module's loader, only after the flavor is checked."""
    if Path(model_uri).is_dir():
        package_flavor(Path(model_uri))
        return load_data_folder(str(Path(model_uri) / "data" / DATA_DIR))
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="fsad-model-") as tmp:  # read into memory, then removed
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, tracking_uri=tracking_uri, dst_path=tmp))
        package_flavor(local)
        return load_data_folder(str(local / "data" / DATA_DIR))


def save_package(path: Path, weights_dir: Path, dictionary_file: Path, metadata: dict[str, Any],
                 calibration: dict[str, Any] | None = None) -> None:
    """Write an MLflow pyfunc model directory at `path`: MLmodel + data/fsad_model/ (weights, config, meta,
    dictionary, and the calibration when given); the loader is LOADER_MODULE of the installed package."""
    import mlflow.pyfunc

    from orchestrator.tracking.artifacts import CONFIG, META, WEIGHTS

    with tempfile.TemporaryDirectory(prefix="fsad-package-") as tmp:
        data = Path(tmp) / DATA_DIR
        data.mkdir()
        for name in (WEIGHTS, CONFIG, META):
            if (Path(weights_dir) / name).is_file():
                shutil.copyfile(Path(weights_dir) / name, data / name)
        shutil.copyfile(dictionary_file, data / DICTIONARY)
        if calibration is not None:
            (data / CALIBRATION).write_text(json.dumps(calibration, indent=2))
            metadata = {**metadata, "fsad_threshold": calibration["threshold"],
                        "fsad_target_fpr": calibration["target_fpr"]}
        mlflow.pyfunc.save_model(
            path=str(path),
            loader_module=LOADER_MODULE,
            data_path=str(data),
            pip_requirements=PIP_REQUIREMENTS,
            metadata=json.loads(json.dumps(metadata)),
        )
