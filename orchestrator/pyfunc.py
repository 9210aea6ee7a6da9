"""The registered model: an MLflow pyfunc that scores images of one category.

A package (what a registered version holds, all loaded without unpickling):
    artifacts/weights/        model.safetensors + config.yaml + meta.json (an `fsad train` directory)
    artifacts/dictionary.safetensors
                              the category's task dictionary D (atoms (m, K·h'w'), scale, [center]) with
                              its metadata (shots, category) in the safetensors header
    python_model.py           models-from-code entry (orchestrator/pyfunc_entry.py): no pickled class

`predict` takes
    * an array (B, C, H, W), C = 1 (grey) or 3 (RGB); floats in [0, 1] or integers in 0..255; any H, W
      (resized to the model's image size like the data loader does), or
    * file paths: a DataFrame with a `path` column, or a list of strings (read on the scoring host),
and returns {"score": (B,) energies, "anomaly_map": (B, S, S) |∇ₓE| maps}. Bad input raises an
MlflowException with INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

# Inputs are checked in `predict` (images_from_input), not by mlflow's type-hint validation; mlflow
# warns about that once when mlflow.pyfunc is first imported.
warnings.filterwarnings("ignore", message=r".*type hints to the .predict. method", category=UserWarning)
import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from model.errors import InputError  # noqa: E402
from model.sparse import TaskDictionary  # noqa: E402

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
WEIGHTS_KEY = "weights"
DICTIONARY_KEY = "dictionary"
PIP_REQUIREMENTS = ["torch==2.13.0", "numpy==2.4.6", "safetensors==0.8.0", "PyYAML==6.0.4", "pillow==13.0.0",
                    "mlflow==3.17.2", "fsad"]


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


def images_from_input(model_input: Any, image_size: int) -> torch.Tensor:
    """Any accepted input -> (B, 3, S, S) float32 in [0, 1]; bad input raises MlflowException (400)."""
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
        from workers.data import load_images

        try:
            images, _ = load_images(list(model_input), image_size)
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


@contextlib.contextmanager
def _muted_warnings():
    """mlflow checks `predict`'s type hints when the class is created and warns under its own filter
    (simplefilter "once"), so filters cannot silence it; inputs are checked in images_from_input."""
    shown = warnings.showwarning
    warnings.showwarning = lambda *args, **kwargs: None
    try:
        yield
    finally:
        warnings.showwarning = shown


with _muted_warnings():
    class FsadModel(mlflow.pyfunc.PythonModel):
        """Scores images against the stored dictionary of one category (Alg. 2 steps 5-6)."""

        def load_context(self, context) -> None:
            from orchestrator.artifacts import load_model_dir
            from orchestrator.evaluate import make_scorer

            self.model, self.cfg, self.meta = load_model_dir(context.artifacts[WEIGHTS_KEY], device="cpu")
            self.dictionary = load_dictionary(context.artifacts[DICTIONARY_KEY])
            self.scorer = make_scorer("ours", self.model, self.cfg)  # scores exactly as `fsad evaluate` does

        def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """images (B, 3, S, S) -> scores (B,), maps (B, S, S)."""
            scores, maps = [], []
            for start in range(0, images.shape[0], self.cfg.eval.batch_size):
                s, m = self.scorer.score(images[start : start + self.cfg.eval.batch_size], self.dictionary)
                scores.append(s)
                maps.append(m)
            return torch.cat(scores), torch.cat(maps)

        def predict(self, context, model_input, params=None) -> dict[str, np.ndarray]:
            images = images_from_input(model_input, self.cfg.data.image_size)
            scores, maps = self.score(images)
            return {"score": scores.numpy(), "anomaly_map": maps.numpy()}


def save_package(path: Path, weights_dir: Path, dictionary_file: Path, metadata: dict[str, Any]) -> None:
    """Write an MLflow pyfunc model directory at `path` (models-from-code; weights as safetensors)."""
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ENTRY),
        artifacts={WEIGHTS_KEY: str(weights_dir), DICTIONARY_KEY: str(dictionary_file)},
        pip_requirements=PIP_REQUIREMENTS,
        metadata=json.loads(json.dumps(metadata)),
    )
