"""Data loading: MVTec-layout image folders, the ELPV solar-cell fallback and video-frame scenes.

Everything here turns files on disk into typed `ImageItem`s with one fixed convention:

* **Channels.** Images with 1 channel (grey: modes ``L``, ``1``, 16-bit ``I;16``/``I``, ``F`` in [0,1])
  or 3 channels (``RGB`` and other 3-band modes such as ``YCbCr``) are accepted; palette images
  (``P``) are converted to RGB. A grey image is replicated to three channels (R = G = B) so that one
  backbone serves grey and RGB categories alike. Images with 2 (``LA``, ``PA``) or 4+ channels
  (``RGBA``, ``CMYK``) are rejected with an `InputError`: silently dropping alpha or ink channels could
  hide the very defect we are looking for.
* **Size.** Every image is resized to a square ``image_size`` x ``image_size`` with bilinear,
  antialiased resampling (PIL's convolution-based resize). The aspect ratio is *not* preserved:
  a 203x512 image is squeezed to SxS; masks are squeezed identically, so pixel labels stay aligned.
* **Values.** ``image`` is float32 in [0, 1], shape (3, S, S); 16-bit grey is scaled by 1/65535 in
  float32 (never a float64 copy). ``mask`` is float32 in {0, 1}, shape (S, S), resized with
  nearest-neighbour, or ``None`` when there are no pixel labels (training images, and categories/scenes
  that have only image-level labels). A mask file must be binary: 0 for normal pixels and one "on"
  value (255, or 1; 65535 for 16-bit) for anomalous ones; any other value (e.g. JPEG ringing, a soft
  mask) is an `InputError` rather than a silent threshold.
* **Integrity.** Every image is decoded completely (``Image.load()``), so a corrupt or truncated file
  raises an `InputError` naming it; nothing here enables PIL's ``LOAD_TRUNCATED_IMAGES``.
* **Size limits.** An image with more than `max_pixels()` pixels (``data.max_pixels``, default 40 M;
  `set_max_pixels`) is refused from its header, before anything is decoded; PIL's
  ``DecompressionBombWarning`` is an error. Decoding threads share a budget of `max_pixels()` pixels
  in flight, so a folder of large images is not decoded eight at a time.
* **Determinism.** Files are sorted by name (video frames by the integer in their stem when all stems
  are numeric).

Decoded, resized arrays are kept in a small process-local LRU cache keyed by (resolved path,
image_size, mtime, file size), so repeated loads in one process are cheap; `clear_cache` empties it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from model.errors import InputError
from workers.paths import plain_name

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageItem",
    "MVTecCategory",
    "list_categories",
    "load_category",
    "stack_items",
    "ELPV_CATEGORIES",
    "load_elpv",
    "materialize_elpv",
    "list_scenes",
    "load_scene",
    "clear_cache",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "set_max_pixels",
    "open_checked",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
GOOD = "good"

# --------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageItem:
    """One image with its labels.

    image: (3, S, S) float32 in [0, 1] (grey images replicated to R = G = B).
    mask: (S, S) float32 in {0, 1}, or None when no pixel labels exist for this image.
    label: 0 normal, 1 anomalous.
    category: the category (MVTec/ELPV) or scene (video) name.
    defect_type: "good" or the defect folder name (MVTec); the clip name (video).
    path: the source file.
    """

    image: torch.Tensor
    mask: torch.Tensor | None
    label: int
    category: str
    defect_type: str
    path: str


def stack_items(items: Sequence[ImageItem]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Stack items into (images (N,3,S,S) float32, masks (N,S,S) float32 or None, labels (N,) int64).

    masks is None when no item has a mask. When only some items have masks, normal items without one
    get an all-zero mask; an anomalous item without a mask in such a mix is an error (its pixels are
    unknown, zeros would be wrong).
    """
    if len(items) == 0:
        raise InputError("stack_items got no items; expected at least one ImageItem")
    sizes = {tuple(it.image.shape) for it in items}
    if len(sizes) != 1:
        raise InputError(f"stack_items got images of shapes {sorted(sizes)}; expected one common shape")
    images = torch.stack([it.image for it in items])
    labels = torch.tensor([int(it.label) for it in items], dtype=torch.int64)
    if all(it.mask is None for it in items):
        return images, None, labels
    size = images.shape[-2:]
    masks = []
    for it in items:
        if it.mask is not None:
            masks.append(it.mask)
        elif it.label == 0:
            masks.append(torch.zeros(size, dtype=torch.float32))
        else:
            raise InputError(
                f"stack_items: anomalous item {it.path} has no mask while others do; "
                "expected masks for every anomalous item or for none"
            )
    return images, torch.stack(masks), labels


# --------------------------------------------------------------------------------------------------
# Decoding (with a process-local cache)
# --------------------------------------------------------------------------------------------------

_CACHE_MAX_BYTES = 1 << 30  # 1 GiB of decoded, resized arrays
_cache: OrderedDict[tuple, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
_cache_bytes = 0
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every decoded image/mask held by this process."""
    global _cache_bytes
    with _cache_lock:
        _cache.clear()
        _cache_bytes = 0


def _cached(kind: str, path: Path, size: int | None, fn: Callable[[Path, int | None], tuple[np.ndarray, tuple[int, int]]]):
    global _cache_bytes
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}; expected a readable file") from None
    key = (kind, str(path.resolve()), size, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    value = fn(path, size)
    nbytes = value[0].nbytes
    with _cache_lock:
        if key not in _cache and nbytes <= _CACHE_MAX_BYTES:
            _cache[key] = value
            _cache_bytes += nbytes
            while _cache_bytes > _CACHE_MAX_BYTES and _cache:
                _, (arr, _) = _cache.popitem(last=False)
                _cache_bytes -= arr.nbytes
    return value


# --------------------------------------------------------------------------------------------------
# Size limits: refuse decompression bombs from the header
# --------------------------------------------------------------------------------------------------

DEFAULT_MAX_PIXELS = 40_000_000  # 5x the largest source images (MVTec: 1024², ELPV: 300²) and then some
_max_pixels = DEFAULT_MAX_PIXELS
# PIL only warns between MAX_IMAGE_PIXELS and twice that; a warning would let the bomb decode.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def max_pixels() -> int:
    return _max_pixels


def set_max_pixels(limit: int) -> None:
    """The largest image (width × height) this process decodes (config data.max_pixels)."""
    global _max_pixels
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= Image.MAX_IMAGE_PIXELS:
        raise InputError(f"data.max_pixels={limit!r}: expected an integer from 1 to {Image.MAX_IMAGE_PIXELS}")
    _max_pixels = int(limit)


def open_checked(source, name) -> Image.Image:
    """Image.open (which reads only the header) and refuse more than max_pixels() before decoding.

    source: a path or a binary file object; name: how messages refer to it."""
    limit = _max_pixels
    try:
        im = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"image {name} is a decompression bomb ({str(e).rstrip('.')}); expected at most "
                         f"{limit / 1e6:g} M pixels (data.max_pixels); refused before decoding") from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise InputError(f"image {name} is {width}x{height} = {width * height / 1e6:.1f} M pixels; expected at most "
                         f"{limit / 1e6:g} M pixels (data.max_pixels); refused before decoding")
    return im


class _PixelBudget:
    """At most max_pixels() pixels decoding at once across threads (one image up to the cap always may)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._used = 0

    @contextlib.contextmanager
    def hold(self, pixels: int):
        pixels = min(int(pixels), _max_pixels)
        with self._cond:
            while self._used and self._used + pixels > _max_pixels:
                self._cond.wait()
            self._used += pixels
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()


_decoding = _PixelBudget()


def _check_size(image_size) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise InputError(f"image_size {image_size!r} is invalid; expected a positive integer")


@contextlib.contextmanager
def _decoded(path: Path):
    """The fully decoded image: its size is checked from the header, then it is decoded once the pixel
    budget has room for it. Any decoding failure becomes an InputError naming the file."""
    try:
        im = open_checked(path, path)
    except InputError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, UnidentifiedImageError, ...
        raise InputError(f"cannot decode image {path}: {str(e) or type(e).__name__}; expected a complete, "
                         "readable image file") from None
    with im, _decoding.hold(im.size[0] * im.size[1]):
        try:
            im.load()  # decode everything now: truncated/corrupt files fail here, not later
        except Exception as e:
            raise InputError(f"cannot decode image {path}: {str(e) or type(e).__name__}; expected a complete, "
                             "readable image file") from None
        yield im


def _to_grey_or_rgb(im: Image.Image, path: Path) -> Image.Image:
    """Return the image as mode L, RGB or F (grey float in [0,1]); reject 2 or 4+ channel images."""
    mode = im.mode
    if mode == "P":
        return im.convert("RGB")
    bands = len(im.getbands())
    if bands not in (1, 3):
        raise InputError(
            f"image {path} has {bands} channels (mode {mode}); expected 1 (grey) or 3 (RGB) channels"
        )
    if bands == 3:
        if mode == "RGB":
            return im
        try:
            return im.convert("RGB")
        except Exception:
            raise InputError(f"image {path} has mode {mode} that cannot be converted to RGB; "
                             "expected 1 (grey) or 3 (RGB) channels") from None
    # one channel
    if mode == "L":
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I"):  # 16-bit grey (I;16, I;16B, ...) or 32-bit int holding 16-bit data
        ints = np.asarray(im)
        if ints.size and (ints.min() < 0 or ints.max() > 65535):
            raise InputError(f"image {path} has integer values outside [0, 65535]; expected 8- or 16-bit grey")
        scaled = ints.astype(np.float32)  # float32, scaled in place: no float64 copy of a large image
        del ints
        scaled /= np.float32(65535.0)
        return Image.fromarray(scaled, mode="F")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError(f"image {path} is floating point with values outside [0, 1]; expected values in [0, 1]")
        return im
    raise InputError(f"image {path} has unsupported mode {mode}; expected 1 (grey) or 3 (RGB) channels")


def _decode_image(path: Path, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """-> (array (S,S) or (S,S,3), uint8 or float32 in [0,1]; original (W, H))."""
    with _decoded(path) as raw:
        orig = raw.size
        im = _to_grey_or_rgb(raw, path)
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.array(im)
    return arr, orig


def _check_binary(arr: np.ndarray, on_values: tuple, path: Path) -> None:
    """A mask holds 0 and at most one "on" value from on_values; anything else is not a mask."""
    if not arr.size:
        return
    high = arr.max()
    if ((arr == 0) | (arr == high)).all() and (high == 0 or high in on_values):
        return
    values = np.unique(arr)
    shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if values.size > 6 else "")
    raise InputError(f"mask {path} is not binary (values {shown}); expected 0 for normal and "
                     f"{' or '.join(f'{v:g}' for v in on_values)} for anomalous pixels")


def _decode_mask(path: Path, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """-> (binary uint8 array (S,S) in {0,1}; original (W, H)). Masks: 0 normal, one "on" value anomalous."""
    with _decoded(path) as raw:
        orig = raw.size
        bands = len(raw.getbands())
        if raw.mode in ("L", "1", "P") or raw.mode.startswith("I") or raw.mode == "F":
            im = raw if raw.mode in ("L", "F") or raw.mode.startswith("I") else raw.convert("L")
        elif bands in (3, 4):  # e.g. a mask saved as RGB(A): use its luminance
            im = raw.convert("L")
        else:
            raise InputError(f"mask {path} has mode {raw.mode}; expected a grey 0/255 mask")
        if raw.mode.startswith("I"):
            on_values = (1, 255, 65535)
        elif raw.mode == "F":
            on_values = (1.0,)
        else:
            on_values = (1, 255)
        _check_binary(np.asarray(im), on_values, path)  # at full size: nearest resizing could drop values
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.NEAREST)
        binary = np.asarray(im) != 0
    return binary.astype(np.uint8), orig


def _image_tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32).clone()
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()  # grey -> R = G = B
    return t.permute(2, 0, 1).contiguous()


def _load_image(path: Path, size: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    arr, orig = _cached("image", path, size, _decode_image)
    return _image_tensor(arr), orig


def _load_mask(path: Path, size: int | None, expected: tuple[int, int]) -> torch.Tensor:
    arr, orig = _cached("mask", path, size, _decode_mask)
    if orig != expected:
        raise InputError(
            f"mask {path} is {orig[0]}x{orig[1]}, expected the image's {expected[0]}x{expected[1]}"
        )
    return torch.from_numpy(arr).to(torch.float32)


def _parallel(fn: Callable, jobs: Sequence) -> list:
    """Map fn over jobs in order, with a few threads (PIL releases the GIL while decoding).

    Exceptions surface in job order, so the first bad file (in sorted order) is the one reported.
    """
    if len(jobs) <= 4:
        return [fn(j) for j in jobs]
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, jobs))


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise InputError(f"cannot list folder {folder}: {e.strerror or e}; expected a readable folder") from None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _check_root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise InputError(f"data root {root} does not exist; expected a folder of categories")
    if not root.is_dir():
        raise InputError(f"data root {root} is not a directory; expected a folder of categories")
    return root


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split {split!r} is invalid; expected 'train' or 'test'")


# --------------------------------------------------------------------------------------------------
# MVTec layout
# --------------------------------------------------------------------------------------------------


def list_categories(root) -> list[str]:
    """Category folders under an MVTec-layout root (those that have train/good), sorted by name."""
    root = _check_root(root)
    cats = [p.name for p in _subdirs(root) if (p / "train" / GOOD).is_dir()]
    if not cats:
        raise InputError(f"data root {root} has no categories; expected folders with <category>/train/good/")
    return cats


@dataclass(frozen=True)
class MVTecCategory:
    """One category folder in the MVTec layout.

        <root>/<cat>/train/good/*
        <root>/<cat>/test/<type>/*            type "good" is normal, any other type anomalous
        <root>/<cat>/ground_truth/<type>/<stem>_mask.png

    A category without a ground_truth folder has image-level labels only (mask=None on test items).
    """

    root: Path
    name: str

    @classmethod
    def open(cls, root, category: str) -> "MVTecCategory":
        root = _check_root(root)
        plain_name(category, "category")  # a path such as ../../elsewhere/tire would leave the root
        folder = root / str(category)
        if not folder.is_dir():
            avail = ", ".join(p.name for p in _subdirs(root) if (p / "train" / GOOD).is_dir()) or "none"
            raise InputError(f"category {category!r} not found under {root}; available: {avail}")
        if not (folder / "train" / GOOD).is_dir():
            raise InputError(f"category folder {folder} has no train/good folder; expected {folder}/train/good/")
        return cls(root=root, name=str(category))

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def has_masks(self) -> bool:
        return (self.path / "ground_truth").is_dir()

    def test_types(self) -> list[str]:
        test = self.path / "test"
        return [p.name for p in _subdirs(test)] if test.is_dir() else []

    def mask_path(self, defect_type: str, image: Path) -> Path | None:
        folder = self.path / "ground_truth" / defect_type
        for ext in (".png",) + tuple(e for e in IMAGE_EXTENSIONS if e != ".png"):
            for cand in (folder / f"{image.stem}_mask{ext}", folder / f"{image.stem}_mask{ext.upper()}"):
                if cand.is_file():
                    return cand
        return None

    def load(self, image_size: int, split: str = "train", require_masks: bool = True) -> list[ImageItem]:
        _check_size(image_size)
        _check_split(split)
        if split == "train":
            good = self.path / "train" / GOOD
            files = _image_files(good)
            if not files:
                raise InputError(
                    f"{good} has no images; expected normal training images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            return _parallel(lambda p: self._item(p, GOOD, image_size, masks=False, require=False), files)

        test = self.path / "test"
        if not test.is_dir():
            raise InputError(f"category folder {self.path} has no test folder; expected {test}/<type>/")
        masks = self.has_masks
        jobs = [(p, t) for t in self.test_types() for p in _image_files(test / t)]
        if not jobs:
            raise InputError(f"{test} has no images; expected {test}/good/ and {test}/<defect_type>/ images")
        return _parallel(lambda j: self._item(j[0], j[1], image_size, masks=masks, require=require_masks), jobs)

    def _item(self, path: Path, defect_type: str, size: int, masks: bool, require: bool) -> ImageItem:
        image, orig = _load_image(path, size)
        label = 0 if defect_type == GOOD else 1
        mask = None
        if masks:
            if label == 0:
                mask = torch.zeros(size, size, dtype=torch.float32)
            else:
                mp = self.mask_path(defect_type, path)
                if mp is not None:
                    mask = _load_mask(mp, size, orig)
                elif require:
                    expected = self.path / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                    raise InputError(f"mask for anomalous image {path} is missing; expected {expected}")
        return ImageItem(image=image, mask=mask, label=label, category=self.name, defect_type=defect_type,
                         path=str(path))


def load_category(root, category: str, image_size: int, split: str = "train",
                  require_masks: bool = True) -> list[ImageItem]:
    """Load one split of an MVTec-layout category as ImageItems (sorted by type, then file name).

    split="train": train/good only, label 0, mask None.
    split="test": every test/<type>/ folder; "good" -> label 0, others -> label 1. If the category has a
    ground_truth folder, good images get an all-zero mask and every anomalous image must have
    ground_truth/<type>/<stem>_mask.png (else InputError; with require_masks=False it gets mask=None).
    Without a ground_truth folder every test item has mask=None (image-level labels only).
    """
    return MVTecCategory.open(root, category).load(image_size, split=split, require_masks=require_masks)


# --------------------------------------------------------------------------------------------------
# ELPV fallback (PyPI package elpv-dataset)
# --------------------------------------------------------------------------------------------------

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
        _check_size(image_size)
    images, probs, types, paths = _elpv_raw()
    result: dict[str, dict[str, list[ImageItem]]] = {}
    for cat, entries in _elpv_split(probs, types, seed, train_fraction).items():
        result[cat] = {"train": [], "test": []}
        for idx, split, dtype in entries:
            im = Image.fromarray(images[idx]).convert("L")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            result[cat][split].append(ImageItem(
                image=_image_tensor(np.array(im)), mask=None, label=0 if dtype == GOOD else 1,
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
        _check_size(image_size)
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


# --------------------------------------------------------------------------------------------------
# Video frames
# --------------------------------------------------------------------------------------------------


def list_scenes(root) -> list[str]:
    """Scene folders (those with a train/ or test/ folder) under a video root, sorted by name."""
    root = _check_root(root)
    scenes = [p.name for p in _subdirs(root) if (p / "train").is_dir() or (p / "test").is_dir()]
    if not scenes:
        raise InputError(f"data root {root} has no scenes; expected folders with <scene>/train/<clip>/ frames")
    return scenes


def _frame_files(clip: Path) -> list[Path]:
    files = _image_files(clip)
    stems = [p.stem for p in files]
    if files and all(s.isdigit() for s in stems):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return files


def _read_labels(path: Path, n_frames: int) -> list[int]:
    if not path.is_file():
        raise InputError(f"label file {path} is missing; expected one 0/1 line per test frame")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read label file {path}: {e}; expected a text file of 0/1 lines") from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if s not in ("0", "1"):
            raise InputError(f"label file {path} line {i} is {s!r}; expected 0 or 1")
        labels.append(int(s))
    if len(labels) != n_frames:
        raise InputError(
            f"label file {path} has {len(labels)} labels but the clip has {n_frames} frames; expected one per frame"
        )
    return labels


def load_scene(root, scene: str, image_size: int, split: str = "train", every: int = 1,
               clips: Sequence[str] | None = None) -> list[ImageItem]:
    """Load a video scene's frames as ImageItems (clips by name, frames in frame order).

        <scene>/train/<clip>/<frame>.jpg     normal frames (label 0, mask None)
        <scene>/test/<clip>/<frame>.jpg      labels from <scene>/test_labels/<clip>.txt (one 0/1 per frame)
        <scene>/test_masks/<clip>/<frame>.png

    category = scene, defect_type = clip name. every=k keeps every k-th frame of each clip (after the
    label count is validated against all frames). clips, when given, restricts loading to those clips
    (an unknown clip name is an InputError). Test masks: when the scene has a test_masks folder,
    a frame's mask is read from it when present, a normal frame without one gets zeros, and an
    anomalous frame without one is an InputError; without a test_masks folder every mask is None.
    """
    _check_size(image_size)
    _check_split(split)
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise InputError(f"every {every!r} is invalid; expected a positive integer")
    root = _check_root(root)
    plain_name(scene, "scene")
    folder = root / str(scene)
    if not folder.is_dir():
        avail = ", ".join(p.name for p in _subdirs(root) if (p / "train").is_dir() or (p / "test").is_dir())
        raise InputError(f"scene {scene!r} not found under {root}; available: {avail or 'none'}")
    split_dir = folder / split
    if not split_dir.is_dir():
        raise InputError(f"scene folder {folder} has no {split} folder; expected {split_dir}/<clip>/ frames")
    clip_dirs = _subdirs(split_dir)
    if clips is not None:
        if isinstance(clips, str):
            clips = [clips]
        known = {c.name for c in clip_dirs}
        missing = [str(c) for c in clips if str(c) not in known]
        if missing:
            raise InputError(f"clip(s) {', '.join(missing)} not found in {split_dir}; "
                             f"available: {', '.join(sorted(known)) or 'none'}")
        wanted = {str(c) for c in clips}
        clip_dirs = [c for c in clip_dirs if c.name in wanted]
    mask_root = folder / "test_masks"
    has_masks = split == "test" and mask_root.is_dir()
    jobs = []
    for clip in clip_dirs:
        frames = _frame_files(clip)
        if split == "test":
            labels = _read_labels(folder / "test_labels" / f"{clip.name}.txt", len(frames))
        else:
            labels = [0] * len(frames)
        jobs += [(f, clip.name, lab) for f, lab in list(zip(frames, labels))[::every]]
    if not jobs:
        raise InputError(f"{split_dir} has no frames; expected {split_dir}/<clip>/<frame>.jpg")

    def item(job) -> ImageItem:
        path, clip, label = job
        image, orig = _load_image(path, image_size)
        mask = None
        if has_masks:
            mp = mask_root / clip / f"{path.stem}.png"
            if mp.is_file():
                mask = _load_mask(mp, image_size, orig)
            elif label == 0:
                mask = torch.zeros(image_size, image_size, dtype=torch.float32)
            else:
                raise InputError(f"mask for anomalous frame {path} is missing; expected {mp}")
        return ImageItem(image=image, mask=mask, label=label, category=str(scene), defect_type=clip,
                         path=str(path))

    return _parallel(item, jobs)


# --------------------------------------------------------------------------------------------------
# Loose image files (`fsad predict`: a folder of support shots, images to score)
# --------------------------------------------------------------------------------------------------


def image_files(paths: Sequence) -> list[Path]:
    """Expand files and folders (their image files, sorted) into a list of image paths."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _image_files(path)
            if not found:
                raise InputError(f"folder {path} has no images; expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
            out.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InputError(f"{path} is not an image file; expected one of {', '.join(IMAGE_EXTENSIONS)}")
            out.append(path)
        else:
            raise InputError(f"image path {path} does not exist")
    return out


def load_images(paths: Sequence, image_size: int) -> tuple[torch.Tensor, list[Path]]:
    """Decode image files/folders to (N, 3, S, S) in [0, 1]; bad files raise InputError naming them."""
    _check_size(image_size)
    files = image_files(paths)
    images = _parallel(lambda p: _load_image(p, image_size)[0], files)
    return torch.stack(images), files
