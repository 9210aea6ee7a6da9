"""Image files to tensors: decoding, size limits, a process-local cache and the `ImageItem` they become.

Every reader in workers.data (MVTec folders, ELPV, video scenes, manifests) decodes through here, so
one convention holds for all of them:

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

Decoded, resized arrays are kept in a small process-local LRU cache keyed by (resolved path,
image_size, mtime, file size), so repeated loads in one process are cheap; `clear_cache` empties it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from model.errors import InputError

__all__ = [
    "ImageItem",
    "stack_items",
    "clear_cache",
    "DEFAULT_MAX_PIXELS",
    "max_pixels",
    "set_max_pixels",
    "open_checked",
    "PixelBudget",
    "check_image_size",
    "decode_image",
    "decode_mask",
    "image_tensor",
    "load_image",
    "load_mask",
]

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
# PIL's DecompressionBombWarning is made an error in workers/data/__init__.py, which runs before this module.


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


class PixelBudget:
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


_decoding = PixelBudget()


def check_image_size(image_size) -> None:
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


def decode_image(path: Path, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
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


def decode_mask(path: Path, size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
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


def image_tensor(arr: np.ndarray) -> torch.Tensor:
    """A decoded array (S,S) or (S,S,3), uint8 or float32 in [0,1] -> (3, S, S) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32).clone()
    if t.ndim == 2:
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()  # grey -> R = G = B
    return t.permute(2, 0, 1).contiguous()


def load_image(path: Path, size: int | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """-> (image (3, S, S) float32 in [0, 1]; original (W, H)), through the process-local cache."""
    arr, orig = _cached("image", path, size, decode_image)
    return image_tensor(arr), orig


def load_mask(path: Path, size: int | None, expected: tuple[int, int]) -> torch.Tensor:
    """-> mask (S, S) float32 in {0, 1}; `expected` is its image's original (W, H), which it must match."""
    arr, orig = _cached("mask", path, size, decode_mask)
    if orig != expected:
        raise InputError(
            f"mask {path} is {orig[0]}x{orig[1]}, expected the image's {expected[0]}x{expected[1]}"
        )
    return torch.from_numpy(arr).to(torch.float32)


def empty_mask(image: torch.Tensor) -> torch.Tensor:
    """A normal image's mask: all zeros at the image's own (H, W) as loaded (the label of every pixel)."""
    return torch.zeros(image.shape[-2:], dtype=torch.float32)  # (C, H, W) -> (H, W)
