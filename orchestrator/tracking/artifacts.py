"""Model directories: weights (safetensors), resolved config, metadata. Never unpickles.

A model directory holds
    model.safetensors   Ψ's weights (ours) or the autoencoder's (maml_ae)
    config.yaml         the resolved config it was trained with
    meta.json           method, training categories, held-out categories, episodes, data root
and, from training, `state.pt` (optimizer + RNG states, read back with weights_only=True) and
`checkpoint.json` (the episode and the sha256 of every file: orchestrator/training/checkpoint.py writes them as one
unit and `load_model_dir` refuses a directory whose files disagree with it).

The on-disk format (file names, the manifest, its check) lives here rather than in training/checkpoint.py
so that loading a model never imports the training loop's resume logic (tracking never imports training).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_file, save_file

from model.ebm.backbone import build_backbone
from model.ebm.energy import AdaptiveEBM
from model.errors import InputError
from model.methods import MAML_AE
from orchestrator.config import Config, autoencoder_spec, backbone_spec, config_from_dict, save_config, sparse_spec

# The files of a model directory and of a checkpoint (orchestrator/training/checkpoint.py).
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
META = "meta.json"
STATE = "state.pt"
MANIFEST = "checkpoint.json"

Writer = Callable[[Path], None]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict | None:
    """A manifest's content, or None when it is missing or not one of ours."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or not isinstance(data.get("episode"), int):
        return None
    return data


def manifest_mismatch(folder: Path, manifest: dict, names=None) -> str | None:
    """The first file of `folder` that disagrees with `manifest` (missing, other size or hash); None if all agree."""
    for name, entry in manifest["files"].items():
        if names is not None and name not in names:
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            return f"{name} does not match {MANIFEST} (episode {manifest['episode']})"
    return None


def verify_model_files(folder: Path, names: tuple[str, ...]) -> None:
    """Refuse a model directory whose files are not from one checkpoint (a kill while publishing one)."""
    manifest = read_manifest(folder / MANIFEST)
    if manifest is None:
        return  # no manifest: a model written before checkpoints had one, or copied without it
    problem = manifest_mismatch(folder, manifest, names)
    if problem is not None:
        raise InputError(f"model directory {folder} is inconsistent ({problem}): a file was changed after "
                         f"training, or training was killed while saving; restore the file, or run "
                         f"`fsad train --resume --out {folder}` with the same data to repair a killed save")


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"train.device={name!r} but no CUDA device is available; use train.device=cpu")
    return torch.device(name)


def build_model(cfg: Config) -> torch.nn.Module:
    """The network for cfg.train.method: AdaptiveEBM (ours) or ConvAutoencoder (maml_ae)."""
    if cfg.train.method == MAML_AE.model:
        from model.maml_ae import ConvAutoencoder

        return ConvAutoencoder(autoencoder_spec(cfg))
    backbone = build_backbone(backbone_spec(cfg.model.backbone), cfg.model.backbone.weights or None)
    return AdaptiveEBM(backbone, sparse_spec(cfg.model))


def model_writers(model: torch.nn.Module, cfg: Config, meta: dict[str, Any], state: dict[str, Any]) -> dict[str, Writer]:
    """The files of one checkpoint for orchestrator.training.checkpoint.save_checkpoint, weights first (the crash
    hooks name the point after the first file)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        WEIGHTS: lambda path: save_file(tensors, str(path)),
        STATE: lambda path: torch.save(state, path),
        CONFIG: lambda path: save_config(cfg, path),
        META: lambda path: path.write_text(json.dumps(meta, indent=2, sort_keys=True)),
    }


def read_meta(model_dir: Path) -> dict[str, Any]:
    """meta.json of a model directory ({} when absent); anything but a JSON object is bad input."""
    file = Path(model_dir) / META
    if not file.is_file():
        return {}
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not valid JSON ({type(exc).__name__}); expected the metadata `fsad train` "
                         "writes (retrain, or restore the file)") from None
    if not isinstance(meta, dict):
        raise InputError(f"{file} holds a JSON {type(meta).__name__}; expected the object `fsad train` writes")
    return meta


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config, dict]:
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model directory {path} does not exist")
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise InputError(f"model directory {path} has no {name}; expected the output of `fsad train`")
    verify_model_files(path, (WEIGHTS, CONFIG, META))
    try:
        tree = yaml.safe_load((path / CONFIG).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path / CONFIG} is not valid YAML") from exc
    if not isinstance(tree, dict):
        raise InputError(f"config file {path / CONFIG} holds a {type(tree).__name__}; expected the mapping "
                         "of config sections that `fsad train` writes")
    cfg = config_from_dict(tree)
    meta = read_meta(path)
    model = build_model(cfg)
    try:
        state = load_file(str(path / WEIGHTS))
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched weights are bad input
        raise InputError(f"weights {path / WEIGHTS} could not be loaded: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    model.to(device).eval()
    return model, cfg, meta
