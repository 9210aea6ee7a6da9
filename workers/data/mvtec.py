"""MVTec-layout category folders: listing categories and loading a split as `ImageItem`s.

    <root>/<category>/train/good/*                      normal training images
    <root>/<category>/test/<type>/*                     type "good" is normal, any other type anomalous
    <root>/<category>/ground_truth/<type>/<stem>_mask.png

Images and masks follow workers.data.images' conventions (channels, size, values, limits).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.errors import InputError
from workers.data.folders import (
    IMAGE_EXTENSIONS,
    check_root,
    check_split,
    folder_images,
    parallel_map,
    subfolders,
)
from workers.data.images import ImageItem, check_image_size, empty_mask, load_image, load_mask
from workers.data.paths import plain_name

__all__ = ["GOOD", "list_categories", "MVTecCategory", "load_category"]

GOOD = "good"


def list_categories(root) -> list[str]:
    """Category folders under an MVTec-layout root (those that have train/good), sorted by name."""
    root = check_root(root)
    cats = [p.name for p in subfolders(root) if (p / "train" / GOOD).is_dir()]
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
        root = check_root(root)
        plain_name(category, "category")  # a path such as ../../elsewhere/tire would leave the root
        folder = root / str(category)
        if not folder.is_dir():
            avail = ", ".join(p.name for p in subfolders(root) if (p / "train" / GOOD).is_dir()) or "none"
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
        return [p.name for p in subfolders(test)] if test.is_dir() else []

    def mask_path(self, defect_type: str, image: Path) -> Path | None:
        folder = self.path / "ground_truth" / defect_type
        for ext in (".png",) + tuple(e for e in IMAGE_EXTENSIONS if e != ".png"):
            for cand in (folder / f"{image.stem}_mask{ext}", folder / f"{image.stem}_mask{ext.upper()}"):
                if cand.is_file():
                    return cand
        return None

    def load(self, image_size: int, split: str = "train", require_masks: bool = True) -> list[ImageItem]:
        check_image_size(image_size)
        check_split(split)
        if split == "train":
            good = self.path / "train" / GOOD
            files = folder_images(good)
            if not files:
                raise InputError(
                    f"{good} has no images; expected normal training images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            return parallel_map(lambda p: self._item(p, GOOD, image_size, masks=False, require=False), files)

        test = self.path / "test"
        if not test.is_dir():
            raise InputError(f"category folder {self.path} has no test folder; expected {test}/<type>/")
        masks = self.has_masks
        jobs = [(p, t) for t in self.test_types() for p in folder_images(test / t)]
        if not jobs:
            raise InputError(f"{test} has no images; expected {test}/good/ and {test}/<defect_type>/ images")
        return parallel_map(lambda j: self._item(j[0], j[1], image_size, masks=masks, require=require_masks), jobs)

    def _item(self, path: Path, defect_type: str, size: int, masks: bool, require: bool) -> ImageItem:
        image, orig = load_image(path, size)
        label = 0 if defect_type == GOOD else 1
        mask = None
        if masks:
            if label == 0:
                mask = empty_mask(image)
            else:
                mp = self.mask_path(defect_type, path)
                if mp is not None:
                    mask = load_mask(mp, size, orig)
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
