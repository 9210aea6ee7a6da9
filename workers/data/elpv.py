"""The ELPV solar-cell fallback (PyPI package elpv-dataset) as two categories, in memory or written out
as an MVTec-layout root.

Images are 300x300 grey (replicated to RGB as everywhere in workers.data). Normal = defect probability
0.0, anomalous = probability >= 0.5 (the ambiguous 1/3 ratings are dropped). No masks: ELPV has
image-level labels only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from model.errors import InputError
from workers.data.images import ImageItem, check_image_size, image_tensor
from workers.data.mvtec import GOOD

__all__ = ["ELPV_CATEGORIES", "ELPV_DEFECT", "load_elpv", "materialize_elpv"]

ELPV_CATEGORIES = ("elpv_mono", "elpv_poly")
ELPV_DEFECT = "defect"
_ELPV_MARKER = ".fsad-elpv.json"


def _elpv_raw():
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise InputError("package elpv-dataset is not installed; expected `pip install elpv-dataset`") from None
    images, probs, types = load_dataset()
    import elpv_dataset

    data_dir = Path(elpv_dataset.__file__).resolve().parent / "data"
    fnames = np.genfromtxt(data_dir / "labels.csv", dtype=["|S19", "<f8", "|S4"],
                           names=["path", "probability", "type"])["path"]
    paths = [str(data_dir / p) for p in np.char.decode(fnames)]
    return np.asarray(images), np.asarray(probs, dtype=np.float64), np.asarray(types).astype(str), paths


def _elpv_split(probs: np.ndarray, types: np.ndarray, seed: int, train_fraction: float):
    """-> {category: [(index, split, defect_type), ...]} (train first, then test/good, then test/defect).

    normal = probability 0.0; anomalous = probability >= 0.5; the ambiguous 1/3 ratings are dropped.
    Per category, a permutation from numpy default_rng([seed, k]) picks round(train_fraction * n_normal)
    normal images for training; the rest are test/good. All anomalous images are test/defect.
    """
    out = {}
    for k, kind in enumerate(("mono", "poly")):
        cat = f"elpv_{kind}"
        normal = np.flatnonzero((types == kind) & (probs == 0.0))
        anomalous = np.flatnonzero((types == kind) & (probs >= 0.5))
        perm = np.random.default_rng([seed, k]).permutation(len(normal))
        n_train = int(round(train_fraction * len(normal)))
        train = np.sort(normal[perm[:n_train]])
        test_good = np.sort(normal[perm[n_train:]])
        out[cat] = ([(int(i), "train", GOOD) for i in train]
                    + [(int(i), "test", GOOD) for i in test_good]
                    + [(int(i), "test", ELPV_DEFECT) for i in anomalous])
    return out


def load_elpv(image_size: int | None = None, seed: int = 0, train_fraction: float = 0.7,
              ) -> dict[str, dict[str, list[ImageItem]]]:
    """ELPV solar cells as two categories, {"elpv_mono"|"elpv_poly": {"train": [...], "test": [...]}}.

    Images are 300x300 grey (replicated to RGB), resized to image_size (None keeps 300). Normal =
    defect probability 0.0, anomalous = probability >= 0.5 (the ambiguous 1/3 ratings are dropped).
    70% of the normal images (seed 0) train, 30% are test/good; all anomalous images are test/defect.
    No masks (mask=None): ELPV has image-level labels only.
    """
    if image_size is not None:
        check_image_size(image_size)
    images, probs, types, paths = _elpv_raw()
    result: dict[str, dict[str, list[ImageItem]]] = {}
    for cat, entries in _elpv_split(probs, types, seed, train_fraction).items():
        result[cat] = {"train": [], "test": []}
        for idx, split, dtype in entries:
            im = Image.fromarray(images[idx]).convert("L")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            result[cat][split].append(ImageItem(
                image=image_tensor(np.array(im)), mask=None, label=0 if dtype == GOOD else 1,
                category=cat, defect_type=dtype, path=paths[idx]))
    return result


def materialize_elpv(out_root, image_size: int | None = None, seed: int = 0,
                     train_fraction: float = 0.7) -> Path:
    """Write ELPV as an MVTec-layout root (PNG files) under out_root and return out_root.

        out_root/elpv_mono/{train/good, test/good, test/defect}/cellNNNN.png   (same for elpv_poly)

    No ground_truth folder: image-level labels only. Each category is built in a temporary folder
    inside out_root and renamed into place, so readers never see a half-written category. A category
    already written with the same settings is kept as is; one written with other settings is replaced.
    Nothing is written outside out_root.
    """
    if image_size is not None:
        check_image_size(image_size)
    out_root = Path(out_root)
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"ELPV output {out_root} is not a directory; expected a folder to write into")
    out_root.mkdir(parents=True, exist_ok=True)
    settings = {"image_size": image_size, "seed": seed, "train_fraction": train_fraction, "version": 1}

    def up_to_date(folder: Path) -> bool:
        try:
            return json.loads((folder / _ELPV_MARKER).read_text()) == settings
        except (OSError, ValueError):
            return False

    todo = [c for c in ELPV_CATEGORIES if not up_to_date(out_root / c)]
    if not todo:
        return out_root
    images, probs, types, paths = _elpv_raw()
    split = _elpv_split(probs, types, seed, train_fraction)
    for cat in todo:
        tmp = Path(tempfile.mkdtemp(prefix=f".{cat}.tmp-", dir=out_root))
        try:
            staged = tmp / cat
            for idx, sp, dtype in split[cat]:
                folder = staged / sp / dtype
                folder.mkdir(parents=True, exist_ok=True)
                im = Image.fromarray(images[idx]).convert("L")
                if image_size is not None and im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
                im.save(folder / (Path(paths[idx]).stem + ".png"))
            (staged / _ELPV_MARKER).write_text(json.dumps(settings))
            final = out_root / cat
            old = None
            if final.exists():
                old = tmp / "old"
                os.replace(final, old)
            try:
                os.replace(staged, final)
            except OSError:
                if not up_to_date(final):  # lost a race to a writer with other settings: report
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_root
