"""Data sources: one interface for training and evaluation over a folder or a manifest.

`FolderSource` (an MVTec-layout folder) and `ManifestSource` (a manifest, with an optional fold from a
splits file) both give categories(), load(category, size, split), content_sha256 and str(); `open_source`
picks one from the command line's --data/--manifest/--splits.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import InputError
from workers.data.images import ImageItem, empty_mask, load_image, load_mask
from workers.data.manifest import Manifest, content_hash, read_manifest, rows_from_folder, sha256_bytes
from workers.data.mvtec import GOOD, list_categories, load_category
from workers.data.splits import Splits, read_splits


class FolderSource:
    """An MVTec-layout folder read directly (ad-hoc use)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"data root {self.root} does not exist")
        self._hash: str | None = None

    def __str__(self) -> str:
        return str(self.root)

    def categories(self) -> list[str]:
        return list_categories(self.root)

    def load(self, category: str, image_size: int, split: str = "train") -> list[ImageItem]:
        return load_category(self.root, category, image_size, split=split)

    @property
    def content_sha256(self) -> str:
        """The content hash a manifest of this folder would have (when ingest rejects nothing)."""
        if self._hash is None:
            self._hash = content_hash(rows_from_folder(self.root))
        return self._hash


@dataclass
class ManifestSource:
    """Images listed in a manifest, optionally restricted to one fold of a splits file.

    Every file's sha256 is checked when it is loaded: a changed image is an InputError, never a
    silent change of the data behind a number.
    """

    manifest: Manifest
    splits: Splits | None = None
    fold: str | None = None  # training: only the fold's "train" rows
    _allowed: set[str] | None = field(default=None, init=False)

    def __post_init__(self):
        if self.fold is not None:
            if self.splits is None:
                raise InputError("a fold needs a splits file")
            self._allowed = {r["image_path"] for r in self.splits.fold(self.fold, "train")}

    def __str__(self) -> str:
        return str(self.manifest.path)

    @property
    def content_sha256(self) -> str:
        return self.manifest.content_sha256

    def categories(self) -> list[str]:
        """Every category of the manifest (a fold's target included: it is held out, not absent)."""
        return self.manifest.categories()

    def rows(self, category: str, split: str) -> list[dict]:
        if category not in self.manifest.categories():
            raise InputError(f"category {category!r} not found in manifest {self.manifest.path}; "
                             f"available: {', '.join(self.manifest.categories())}")
        rows = self.manifest.select(category, split, GOOD if split == "train" else None)
        if split == "train" and self._allowed is not None:
            rows = [r for r in rows if r["image_path"] in self._allowed]
        if not rows:
            raise InputError(f"manifest {self.manifest.path} has no {split} images of {category!r}")
        return rows

    def load(self, category: str, image_size: int, split: str = "train") -> list[ImageItem]:
        rows = self.rows(category, split)
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            return list(pool.map(lambda r: self._item(r, image_size), rows))

    def support_index(self, category: str, shots: int, draws: int) -> list[list[int]]:
        """The splits' support draws for category as indices into load(category, split="train")."""
        if self.splits is None:
            raise InputError("support draws need a splits file (--splits)")
        pool = {r["image_path"]: i for i, r in enumerate(self.rows(category, "train"))}
        out = []
        for paths in self.splits.support(category, shots, draws):
            missing = [p for p in paths if p not in pool]
            if missing:
                raise InputError(f"splits {self.splits.path}: support image {missing[0]} is not a train/good "
                                 f"image of {category!r} in {self.manifest.path}")
            out.append([pool[p] for p in paths])
        return out

    def _item(self, r: dict, image_size: int) -> ImageItem:
        path = self.manifest.root / r["image_path"]
        _verify(path, r["sha256"], self.manifest.path)
        image, orig = load_image(path, image_size)
        mask = None
        if r["split"] == "test" and (r["mask_path"] is not None or self._has_masks(r["category"])):
            if r["mask_path"] is None:
                mask = empty_mask(image)
            else:
                mask_path = self.manifest.root / r["mask_path"]
                _verify(mask_path, r["mask_sha256"], self.manifest.path)
                mask = load_mask(mask_path, image_size, orig)
        return ImageItem(image=image, mask=mask, label=int(r["label"]), category=r["category"],
                         defect_type=r["defect_type"], path=str(path))

    def _has_masks(self, category: str) -> bool:
        return any(r["mask_path"] is not None for r in self.manifest.select(category, "test"))


def _verify(path: Path, expected: str, manifest: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path} listed in manifest {manifest}: {e.strerror or e}; "
                         "expected the image root the manifest was made from (pass --data ROOT)") from None
    if sha256_bytes(data) != expected:
        raise InputError(f"{path} does not match manifest {manifest} (sha256 differs); "
                         "expected the exact file that was ingested (re-run fsad ingest)")


def open_source(data_root: str | Path | None = None, manifest: str | Path | None = None,
                splits: str | Path | None = None, fold: str | None = None) -> FolderSource | ManifestSource:
    """A folder (data_root) or a manifest (data_root, when given, overrides its image root)."""
    if manifest is None:
        if splits is not None:
            raise InputError("--splits needs --manifest (the manifest the splits were made from)")
        if data_root is None:
            raise InputError("no data given; expected --data ROOT (a folder) or --manifest FILE")
        return as_source(data_root)
    m = read_manifest(manifest, data_root)
    s = read_splits(splits, m) if splits is not None else None
    return ManifestSource(m, s, fold if s is not None else None)


def as_source(data) -> FolderSource | ManifestSource:
    """Pass sources through (anything with categories() and load(), e.g. workers.data.video's
    SceneTaskSource); a path is a folder."""
    if isinstance(data, (FolderSource, ManifestSource)) or (hasattr(data, "categories") and hasattr(data, "load")):
        return data
    return FolderSource(data)
