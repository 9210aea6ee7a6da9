"""Image folders: listing files and sub-folders, checked roots and splits, and loose image files.

* **Determinism.** Files and folders are listed sorted by name; hidden entries (a leading ``.``) are
  skipped. Video frames are ordered by the integer in their stem (workers.data.video).
* **Errors.** An unreadable folder, a missing root or an unknown split is an `InputError` naming it.

`parallel_map` decodes a list of files with a few threads, in order, so the first bad file (in sorted
order) is the one reported.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import torch

from model.errors import InputError
from workers.data.images import check_image_size, load_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "parallel_map",
    "folder_images",
    "subfolders",
    "check_root",
    "check_split",
    "image_files",
    "load_images",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")


def parallel_map(fn: Callable, jobs: Sequence) -> list:
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


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in `folder` (not hidden), sorted by name."""
    return sorted(
        (p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def subfolders(folder: Path) -> list[Path]:
    """The folders directly in `folder` (not hidden), sorted by name."""
    return sorted((p for p in _entries(folder) if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def check_root(root) -> Path:
    """`root` as a Path; an InputError when it is missing or not a folder."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"data root {root} does not exist; expected a folder of categories")
    if not root.is_dir():
        raise InputError(f"data root {root} is not a directory; expected a folder of categories")
    return root


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split {split!r} is invalid; expected 'train' or 'test'")


# --------------------------------------------------------------------------------------------------
# Loose image files (`fsad predict`: a folder of support shots, images to score)
# --------------------------------------------------------------------------------------------------


def image_files(paths: Sequence) -> list[Path]:
    """Expand files and folders (their image files, sorted) into a list of image paths."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = folder_images(path)
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
    check_image_size(image_size)
    files = image_files(paths)
    images = parallel_map(lambda p: load_image(p, image_size)[0], files)
    return torch.stack(images), files
