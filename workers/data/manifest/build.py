"""Building a manifest: decode-check and hash every candidate of a layout, find train/test leaks, and
turn rows into the manifest and rejects tables (formats in workers.data.manifest.schema)."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from workers.data.images import open_checked
from workers.data.manifest.layout import Candidate, Layout, reject_row, scan_layout
from workers.data.manifest.schema import (
    MANIFEST_FIELDS,
    MANIFEST_SCHEMA,
    REJECT_FIELDS,
    REJECTS_SCHEMA,
    content_hash,
    sha256_bytes,
    table_from_rows,
)


def _open(data: bytes) -> Image.Image:
    im = open_checked(io.BytesIO(data), "file")  # a bomb is refused from its header, undecoded
    im.load()  # decode everything: truncated/corrupt files fail here
    return im


def inspect_image(data: bytes) -> tuple[int, int, int]:
    """Decode completely; -> (height, width, channels). Raises ValueError(reason) when unusable."""
    try:
        im = _open(data)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise ValueError(f"cannot decode image: {str(e) or type(e).__name__}") from None
    bands = 3 if im.mode == "P" else len(im.getbands())
    if bands not in (1, 3):
        raise ValueError(f"image has {bands} channels (mode {im.mode}); expected 1 (grey) or 3 (RGB)")
    return im.height, im.width, bands


def inspect_mask(data: bytes, size: tuple[int, int]) -> bool:
    """Decode a mask; check it is (height, width) = size and binary. -> True when it is all zero."""
    try:
        im = _open(data)
    except Exception as e:
        raise ValueError(f"cannot decode mask: {str(e) or type(e).__name__}") from None
    if (im.height, im.width) != size:
        raise ValueError(f"mask is {im.width}x{im.height}, expected the image's {size[1]}x{size[0]}")
    if im.mode not in ("1", "L", "P"):
        raise ValueError(f"mask has mode {im.mode}; expected a grey 0/255 mask")
    arr = np.asarray(im.convert("L") if im.mode != "L" else im)
    values = set(np.unique(arr).tolist())
    if not (values <= {0, 255} or values <= {0, 1}):
        shown = sorted(values)[:6]
        raise ValueError(f"mask is not binary (values {shown}{'...' if len(values) > 6 else ''}); expected 0/255")
    return not arr.any()


@dataclass
class IngestResult:
    rows: list[dict]
    rejects: list[dict]
    ignored: list[str]
    leaks: list[dict]  # {sha256, train: [paths], test: [paths]}
    empty_masks: list[str]  # anomalous images whose mask has no anomalous pixel


def build_rows(layout: Layout, read: Callable[[str], bytes], threads: int = 4) -> IngestResult:
    """Decode and hash every candidate with `read(key) -> bytes`; split into rows and rejects."""

    def one(c: Candidate):
        try:
            data = read(c.image_path)
            height, width, channels = inspect_image(data)
        except ValueError as e:
            return None, reject_row(c.image_path, c.category, c.split, c.defect_type, str(e)), False
        if c.mask_expected is not None:
            return None, reject_row(c.image_path, c.category, c.split, c.defect_type,
                                 f"missing mask; expected {c.mask_expected}"), False
        mask_sha, empty = None, False
        if c.mask_path is not None:
            try:
                mask_data = read(c.mask_path)
                empty = inspect_mask(mask_data, (height, width))
            except ValueError as e:
                return None, reject_row(c.image_path, c.category, c.split, c.defect_type, f"{c.mask_path}: {e}"), False
            mask_sha = sha256_bytes(mask_data)
        row = {"category": c.category, "split": c.split, "defect_type": c.defect_type, "label": c.label,
               "image_path": c.image_path, "mask_path": c.mask_path, "sha256": sha256_bytes(data),
               "mask_sha256": mask_sha, "height": height, "width": width, "channels": channels}
        return row, None, empty

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(one, layout.candidates))
    rows = [r for r, _, _ in results if r is not None]
    rejects = list(layout.rejects) + [j for _, j, _ in results if j is not None]
    rejects.sort(key=lambda r: r["path"])
    empty = [r["image_path"] for r, _, e in results if r is not None and e]
    return IngestResult(rows, rejects, layout.ignored, find_leaks(rows), empty)


def find_leaks(rows: Sequence[dict]) -> list[dict]:
    """Images whose bytes (sha256) appear both in a train and in a test row, in any category."""
    by_hash: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        by_hash.setdefault(r["sha256"], {"train": [], "test": []})[r["split"]].append(r["image_path"])
    return [{"sha256": h, "train": sorted(v["train"]), "test": sorted(v["test"])}
            for h, v in sorted(by_hash.items()) if v["train"] and v["test"]]


def manifest_table(rows: Sequence[dict], name: str, source: str, root: str) -> pa.Table:
    rows = sorted(rows, key=lambda r: r["image_path"])
    extra = {"fsad.name": name, "fsad.source": source, "fsad.root": root, "fsad.content_sha256": content_hash(rows)}
    return table_from_rows(rows, MANIFEST_FIELDS, MANIFEST_SCHEMA, extra)


def rejects_table(rejects: Sequence[dict]) -> pa.Table:
    return table_from_rows(rejects, REJECT_FIELDS, REJECTS_SCHEMA, {})


def rows_from_folder(root: Path) -> list[dict]:
    """Manifest-like rows of a local folder without decoding (hashes only), for content hashes."""
    keys = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    layout = scan_layout(keys)
    rows = []
    for c in layout.candidates:
        rows.append({"category": c.category, "split": c.split, "defect_type": c.defect_type, "label": c.label,
                     "image_path": c.image_path, "mask_path": c.mask_path,
                     "sha256": sha256_bytes((root / c.image_path).read_bytes()),
                     "mask_sha256": sha256_bytes((root / c.mask_path).read_bytes()) if c.mask_path else None})
    return rows
