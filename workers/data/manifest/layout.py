"""The MVTec layout from relative keys alone (a local tree or S3): candidate rows, rejects, ignored files.

Nothing here decodes or reads a file: keys are classified by their path only (workers.data.manifest.build
then decodes and hashes the candidates).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable

from workers.data.folders import IMAGE_EXTENSIONS
from workers.data.mvtec import GOOD
from workers.data.paths import plain_name_reason, unsafe_key_reason


@dataclass
class Candidate:
    """One image found in the layout, before decoding. Paths are relative POSIX keys."""

    category: str
    split: str
    defect_type: str
    image_path: str
    mask_path: str | None = None
    mask_expected: str | None = None  # set when a mask is required but absent

    @property
    def label(self) -> int:
        return 0 if self.defect_type == GOOD else 1


@dataclass
class Layout:
    candidates: list[Candidate]
    rejects: list[dict]  # {path, category, split, defect_type, reason}
    ignored: list[str]  # non-image files outside the image folders (READMEs, licences)


def _is_image(key: str) -> bool:
    return PurePosixPath(key).suffix.lower() in IMAGE_EXTENSIONS


def _hidden(key: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(key).parts)


def scan_layout(keys: Iterable[str]) -> Layout:
    """Classify relative keys (``cat/train/good/x.jpg`` ...) of an MVTec-layout tree.

    A top-level folder is a category when it has train/good images. Masks pair with anomalous test
    images by ``ground_truth/<type>/<stem>_mask.<ext>``; a category with a ground_truth folder needs a
    mask for every anomalous image. Image files anywhere else, masks without an image and non-image
    files inside image folders become rejects; other non-image files are listed as ignored. Keys that
    could point outside the tree (absolute, an empty, '.' or '..' segment, a trailing '/': see
    workers.data.paths) are rejected first, so they are never read, written or made a category.
    """
    unsafe, safe = [], []
    for k in keys:
        reason = unsafe_key_reason(k)
        (safe if reason is None else unsafe).append((k, reason))
    keys = sorted(k for k, _ in safe if not _hidden(k))
    cats = {k.split("/")[0] for k in keys if k.count("/") == 3 and k.split("/")[1:3] == ["train", GOOD]}
    has_gt = {k.split("/")[0] for k in keys if k.count("/") >= 2 and k.split("/")[1] == "ground_truth"}
    masks: dict[tuple[str, str, str], str] = {}  # (category, type, stem) -> key
    candidates, rejects, ignored = [], [], []
    for key, reason in sorted(unsafe, key=lambda kr: str(kr[0])):  # never read, never written anywhere
        rejects.append(reject_row(str(key), "", "", "", f"unsafe path ({reason}); expected a relative path "
                                                     "without leading /, empty, '.' or '..' segments"))
    layout_error = ("not in the MVTec layout; expected <category>/train/good/, <category>/test/<type>/ "
                    "or <category>/ground_truth/<type>/<stem>_mask.png")
    for key in keys:
        parts = key.split("/")
        cat = parts[0]
        if len(parts) > 1 and plain_name_reason(cat) is not None:
            rejects.append(reject_row(key, "", "", "", f"category folder {cat!r}: {plain_name_reason(cat)}; "
                                                    "expected one plain folder name"))
            continue
        in_folder = len(parts) == 4 and cat in cats and parts[1] in ("train", "test", "ground_truth")
        if in_folder and not _is_image(key):
            rejects.append(reject_row(key, cat, parts[1], parts[2], f"unsupported file type; expected one of {', '.join(IMAGE_EXTENSIONS)}"))
            continue
        if not _is_image(key):
            ignored.append(key)
            continue
        if not in_folder or (parts[1] == "train" and parts[2] != GOOD):
            rejects.append(reject_row(key, cat if len(parts) > 1 else "", "", "", layout_error))
            continue
        _, split, dtype, name = parts
        if split == "ground_truth":
            stem = PurePosixPath(name).stem
            if not stem.endswith("_mask"):
                rejects.append(reject_row(key, cat, "test", dtype, "mask file name does not end in _mask; expected <stem>_mask.png"))
                continue
            mkey = (cat, dtype, stem[: -len("_mask")])
            if mkey not in masks or key.lower().endswith(".png"):  # prefer .png, as workers.data.mvtec does
                if mkey in masks:
                    rejects.append(reject_row(masks[mkey], cat, "test", dtype, f"second mask for one image; {key} is used"))
                masks[mkey] = key
            elif mkey in masks:
                rejects.append(reject_row(key, cat, "test", dtype, f"second mask for one image; {masks[mkey]} is used"))
            continue
        candidates.append(Candidate(cat, split, dtype, key))
    used: set[str] = set()
    for c in candidates:
        if c.split != "test" or c.label == 0 or c.category not in has_gt:
            continue
        stem = PurePosixPath(c.image_path).stem
        mask = masks.get((c.category, c.defect_type, stem))
        if mask is None:
            c.mask_expected = f"{c.category}/ground_truth/{c.defect_type}/{stem}_mask.png"
        else:
            c.mask_path = mask
            used.add(mask)
    for (cat, dtype, _), key in sorted(masks.items(), key=lambda kv: kv[1]):
        if key not in used:
            rejects.append(reject_row(key, cat, "test", dtype, "mask without a matching anomalous test image"))
    return Layout(candidates, rejects, ignored)


def reject_row(path: str, category: str, split: str, defect_type: str, reason: str) -> dict:
    return {"path": path, "category": category, "split": split, "defect_type": defect_type, "reason": reason}
