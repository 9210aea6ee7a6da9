"""Parquet manifests and leave-one-out splits: the versioned record of a dataset and its folds.

A manifest lists every accepted image of an MVTec-layout tree, one row each:

    category, split ("train"|"test"), defect_type ("good" or the defect folder), label (0|1),
    image_path, mask_path (or null), sha256, mask_sha256 (or null), height, width, channels (1|3)

Paths are POSIX paths relative to the manifest's image root (``fsad.root`` in the Parquet metadata:
an absolute source as given, or relative to the manifest's folder; never a path resolved through
symlinks, so the file holds nothing specific to the checkout it was written in). The metadata also holds the schema name and version,
the dataset name, its source and the **content hash**: sha256 over the sorted rows' identity fields
(labels, relative paths, image and mask hashes; see `content_hash`). The same tree gives the same hash
wherever it lives (a local folder, S3, another machine), and any changed byte changes it.

A splits file (`make_splits`) lists, per held-out target category, the rows of its fold:

    role "train"    every train/good image of the other categories (what meta-training may see)
    role "test"     every test image of the target
    role "support"  for each K in shots and each draw d: K distinct train/good images of the target

Support draws are nested (draw d at K is the first K of one seeded permutation per (target, d)), so
every method evaluated on a fold adapts to the same images. Both files are written atomically
(temporary file, then rename) and carry their schema version; readers refuse other versions.

`FolderSource` and `ManifestSource` give training and evaluation one interface over a folder or a
manifest (with an optional fold from a splits file): categories(), load(category, size, split),
content_sha256.
"""
from __future__ import annotations

import hashlib
import io
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from model.errors import InputError
from workers.data import (
    IMAGE_EXTENSIONS,
    ImageItem,
    _load_image,
    _load_mask,
    list_categories,
    load_category,
    open_checked,
)
from workers.files import temp_file_beside
from workers.paths import plain_name, plain_name_reason, relative_key, unsafe_key_reason

MANIFEST_SCHEMA = "fsad-manifest"
SPLITS_SCHEMA = "fsad-splits"
REJECTS_SCHEMA = "fsad-rejects"
SCHEMA_VERSION = "1"
GOOD = "good"

MANIFEST_FIELDS = pa.schema([
    ("category", pa.string()),
    ("split", pa.string()),
    ("defect_type", pa.string()),
    ("label", pa.int8()),
    ("image_path", pa.string()),
    ("mask_path", pa.string()),
    ("sha256", pa.string()),
    ("mask_sha256", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int8()),
])
REJECT_FIELDS = pa.schema([
    ("path", pa.string()),
    ("category", pa.string()),
    ("split", pa.string()),
    ("defect_type", pa.string()),
    ("reason", pa.string()),
])
SPLIT_FIELDS = pa.schema([
    ("target", pa.string()),
    ("role", pa.string()),
    ("shots", pa.int16()),
    ("draw", pa.int16()),
    ("rank", pa.int16()),
    ("category", pa.string()),
    ("split", pa.string()),
    ("defect_type", pa.string()),
    ("label", pa.int8()),
    ("image_path", pa.string()),
    ("mask_path", pa.string()),
    ("sha256", pa.string()),
])


# --------------------------------------------------------------------------------------------------
# Layout: relative keys of an MVTec tree -> candidate rows (no decoding)
# --------------------------------------------------------------------------------------------------


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
    workers.paths) are rejected first, so they are never read, written or made a category.
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
        rejects.append(_reject(str(key), "", "", "", f"unsafe path ({reason}); expected a relative path "
                                                     "without leading /, empty, '.' or '..' segments"))
    layout_error = ("not in the MVTec layout; expected <category>/train/good/, <category>/test/<type>/ "
                    "or <category>/ground_truth/<type>/<stem>_mask.png")
    for key in keys:
        parts = key.split("/")
        cat = parts[0]
        if len(parts) > 1 and plain_name_reason(cat) is not None:
            rejects.append(_reject(key, "", "", "", f"category folder {cat!r}: {plain_name_reason(cat)}; "
                                                    "expected one plain folder name"))
            continue
        in_folder = len(parts) == 4 and cat in cats and parts[1] in ("train", "test", "ground_truth")
        if in_folder and not _is_image(key):
            rejects.append(_reject(key, cat, parts[1], parts[2], f"unsupported file type; expected one of {', '.join(IMAGE_EXTENSIONS)}"))
            continue
        if not _is_image(key):
            ignored.append(key)
            continue
        if not in_folder or (parts[1] == "train" and parts[2] != GOOD):
            rejects.append(_reject(key, cat if len(parts) > 1 else "", "", "", layout_error))
            continue
        _, split, dtype, name = parts
        if split == "ground_truth":
            stem = PurePosixPath(name).stem
            if not stem.endswith("_mask"):
                rejects.append(_reject(key, cat, "test", dtype, "mask file name does not end in _mask; expected <stem>_mask.png"))
                continue
            mkey = (cat, dtype, stem[: -len("_mask")])
            if mkey not in masks or key.lower().endswith(".png"):  # prefer .png, as workers.data does
                if mkey in masks:
                    rejects.append(_reject(masks[mkey], cat, "test", dtype, f"second mask for one image; {key} is used"))
                masks[mkey] = key
            elif mkey in masks:
                rejects.append(_reject(key, cat, "test", dtype, f"second mask for one image; {masks[mkey]} is used"))
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
            rejects.append(_reject(key, cat, "test", dtype, "mask without a matching anomalous test image"))
    return Layout(candidates, rejects, ignored)


def _reject(path: str, category: str, split: str, defect_type: str, reason: str) -> dict:
    return {"path": path, "category": category, "split": split, "defect_type": defect_type, "reason": reason}


# --------------------------------------------------------------------------------------------------
# Decoding checks
# --------------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
            return None, _reject(c.image_path, c.category, c.split, c.defect_type, str(e)), False
        if c.mask_expected is not None:
            return None, _reject(c.image_path, c.category, c.split, c.defect_type,
                                 f"missing mask; expected {c.mask_expected}"), False
        mask_sha, empty = None, False
        if c.mask_path is not None:
            try:
                mask_data = read(c.mask_path)
                empty = inspect_mask(mask_data, (height, width))
            except ValueError as e:
                return None, _reject(c.image_path, c.category, c.split, c.defect_type, f"{c.mask_path}: {e}"), False
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


# --------------------------------------------------------------------------------------------------
# Content hash and Parquet files
# --------------------------------------------------------------------------------------------------

_HASH_FIELDS = ("category", "split", "defect_type", "label", "image_path", "sha256", "mask_path", "mask_sha256")


def content_hash(rows: Iterable[dict], schema: str = MANIFEST_SCHEMA, fields: Sequence[str] = _HASH_FIELDS) -> str:
    """sha256 over the rows' identity fields, sorted, tab-separated: independent of row order,
    Parquet encoding, library versions and where the image root lives."""
    lines = sorted("\t".join("" if r.get(f) is None else str(r[f]) for f in fields) for r in rows)
    h = hashlib.sha256(f"{schema} v{SCHEMA_VERSION}\n".encode())
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _meta(schema: str, extra: dict[str, str]) -> dict[bytes, bytes]:
    meta = {"fsad.schema": schema, "fsad.schema_version": SCHEMA_VERSION, **extra}
    return {k.encode(): str(v).encode() for k, v in meta.items()}


def table_from_rows(rows: Sequence[dict], schema: pa.Schema, schema_name: str, extra: dict[str, str]) -> pa.Table:
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table(columns, schema=schema.with_metadata(_meta(schema_name, extra)))


def staged_parquet(table: pa.Table, path: Path) -> Path:
    """Write `table` to a temporary file beside `path`; the caller renames it with `commit`."""
    tmp = temp_file_beside(path)
    try:
        pq.write_table(table, tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit(staged: Sequence[tuple[Path, Path]]) -> None:
    """Rename staged temporaries into place (after everything has been written successfully)."""
    for tmp, final in staged:
        os.replace(tmp, final)


def discard(staged: Sequence[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        Path(tmp).unlink(missing_ok=True)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Atomic write: temporary file beside `path`, then rename."""
    path = Path(path)
    commit([(staged_parquet(table, path), path)])


def _read_table(path: Path, schema_name: str, fields: pa.Schema, what: str) -> pa.Table:
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; expected a file written by fsad {'split' if schema_name == SPLITS_SCHEMA else 'ingest'}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError ...
        raise InputError(f"{what} {path} is not a readable Parquet file ({type(e).__name__}); expected fsad's {schema_name}") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("fsad.schema") != schema_name:
        raise InputError(f"{what} {path} is not an {schema_name} file (schema {meta.get('fsad.schema')!r}); expected fsad's {schema_name}")
    version = meta.get("fsad.schema_version")
    if version != SCHEMA_VERSION:
        raise InputError(f"{what} {path} has schema version {version}; expected version {SCHEMA_VERSION} "
                         f"(rewrite it with this version of fsad)")
    missing = [f.name for f in fields if f.name not in table.column_names]
    if missing:
        raise InputError(f"{what} {path} lacks column(s) {', '.join(missing)}; expected {', '.join(fields.names)}")
    return table


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------


@dataclass
class Manifest:
    path: Path
    rows: list[dict]
    name: str
    source: str
    root: Path  # resolved image root
    content_sha256: str

    def categories(self) -> list[str]:
        return sorted({r["category"] for r in self.rows})

    def select(self, category: str, split: str | None = None, defect_type: str | None = None) -> list[dict]:
        """Rows of a category (and split / defect type), sorted by image_path."""
        return sorted((r for r in self.rows if r["category"] == category and (split is None or r["split"] == split)
                       and (defect_type is None or r["defect_type"] == defect_type)),
                      key=lambda r: r["image_path"])


def manifest_table(rows: Sequence[dict], name: str, source: str, root: str) -> pa.Table:
    rows = sorted(rows, key=lambda r: r["image_path"])
    extra = {"fsad.name": name, "fsad.source": source, "fsad.root": root, "fsad.content_sha256": content_hash(rows)}
    return table_from_rows(rows, MANIFEST_FIELDS, MANIFEST_SCHEMA, extra)


def rejects_table(rejects: Sequence[dict]) -> pa.Table:
    return table_from_rows(rejects, REJECT_FIELDS, REJECTS_SCHEMA, {})


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Read and check a manifest. `root` overrides the image root recorded in it."""
    path = Path(path)
    table = _read_table(path, MANIFEST_SCHEMA, MANIFEST_FIELDS, "manifest")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    rows = table.select(MANIFEST_FIELDS.names).to_pylist()
    if not rows:
        raise InputError(f"manifest {path} has no rows; expected at least one image")
    _check_rows(rows, path, "manifest")
    recorded = meta.get("fsad.root", "")
    if root is not None:
        resolved = Path(root)
    elif Path(recorded).is_absolute():
        resolved = Path(recorded)
    else:  # lexically, as ingest computed it: a symlinked data/ folder must not redirect the '..' steps
        resolved = Path(os.path.normpath(os.path.join(os.path.abspath(path.parent), recorded)))
    return Manifest(path, rows, meta.get("fsad.name", ""), meta.get("fsad.source", ""), resolved, content_hash(rows))


def _check_rows(rows: Sequence[dict], path: Path, what: str) -> None:
    """Every name and path of a manifest or splits file stays inside the image root: a tampered row such
    as ``../../elsewhere/x.png`` is refused before anything is read."""
    for i, r in enumerate(rows):
        where = f"{what} {path} row {i}:"
        for key in ("target", "category", "defect_type"):
            if key in r:
                plain_name(r[key], f"{where} {key}")
        if r.get("split") not in ("train", "test"):
            raise InputError(f"{where} split {r.get('split')!r}; expected 'train' or 'test'")
        relative_key(r["image_path"], f"{where} image_path")
        if r.get("mask_path") is not None:
            relative_key(r["mask_path"], f"{where} mask_path")


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


# --------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------


@dataclass
class Splits:
    path: Path
    rows: list[dict]
    manifest_sha256: str
    seed: int
    shots: list[int]
    draws: int
    content_sha256: str

    def targets(self) -> list[str]:
        return sorted({r["target"] for r in self.rows})

    def fold(self, target: str, role: str) -> list[dict]:
        self._check_target(target)
        return sorted((r for r in self.rows if r["target"] == target and r["role"] == role),
                      key=lambda r: r["image_path"])

    def support(self, target: str, shots: int, draws: int) -> list[list[str]]:
        """The first `draws` support draws of K = shots for target: lists of image paths."""
        self._check_target(target)
        if shots not in self.shots:
            raise InputError(f"splits {self.path} have no support draws for K={shots}; available: "
                             f"{', '.join(map(str, self.shots))} (re-run fsad split with --shots)")
        if draws < 1:
            raise InputError(f"--seeds {draws}: expected at least one support draw")
        if draws > self.draws:
            raise InputError(f"splits {self.path} hold {self.draws} support draws; {draws} were asked for")
        picked: dict[int, list[tuple[int, str]]] = {}
        for r in self.rows:
            if r["target"] == target and r["role"] == "support" and r["shots"] == shots and r["draw"] < draws:
                picked.setdefault(r["draw"], []).append((r["rank"], r["image_path"]))
        return [[p for _, p in sorted(picked.get(d, []))] for d in range(draws)]

    def _check_target(self, target: str) -> None:
        if target not in self.targets():
            raise InputError(f"splits {self.path} have no fold for category {target!r}; "
                             f"available: {', '.join(self.targets())}")


def draw_order(seed: int, target: str, draw: int, n: int) -> np.ndarray:
    """A permutation of range(n) from (seed, target, draw): stable across processes and machines."""
    return np.random.default_rng([int(seed), zlib.crc32(target.encode()), int(draw)]).permutation(n)


def split_rows(manifest: Manifest, shots: Sequence[int], draws: int, seed: int) -> list[dict]:
    """Every fold's rows (train, test, support) for each category as the held-out target."""
    cats = manifest.categories()
    if len(cats) < 2:
        raise InputError(f"manifest {manifest.path} has {len(cats)} category; leave-one-out needs at least 2")
    if draws < 1:
        raise InputError(f"--draws {draws}: expected at least one support draw")
    for k in shots:
        if k < 1:
            raise InputError(f"--shots {k}: expected K >= 1")

    def row(target, role, r, k=None, d=None, rank=None):
        return {"target": target, "role": role, "shots": k, "draw": d, "rank": rank,
                **{f: r[f] for f in ("category", "split", "defect_type", "label", "image_path", "mask_path", "sha256")}}

    out: list[dict] = []
    for target in cats:
        pool = manifest.select(target, "train", GOOD)
        for k in shots:
            if k > len(pool):
                raise InputError(f"--shots {k} is larger than the {len(pool)} normal training images of {target!r}")
        test = manifest.select(target, "test")
        if not test:
            raise InputError(f"category {target!r} has no test images in {manifest.path}; expected test/<type>/ images")
        out += [row(target, "train", r) for c in cats if c != target for r in manifest.select(c, "train", GOOD)]
        out += [row(target, "test", r) for r in test]
        for d in range(draws):
            order = draw_order(seed, target, d, len(pool))
            for k in shots:
                out += [row(target, "support", pool[i], k, d, rank) for rank, i in enumerate(order[:k])]
    return out


def splits_table(rows: Sequence[dict], manifest: Manifest, shots: Sequence[int], draws: int, seed: int) -> pa.Table:
    extra = {"fsad.manifest_sha256": manifest.content_sha256, "fsad.seed": str(seed),
             "fsad.shots": ",".join(map(str, shots)), "fsad.draws": str(draws),
             "fsad.content_sha256": content_hash(rows, SPLITS_SCHEMA, _SPLIT_HASH_FIELDS)}
    return table_from_rows(rows, SPLIT_FIELDS, SPLITS_SCHEMA, extra)


_SPLIT_HASH_FIELDS = ("target", "role", "shots", "draw", "rank", "image_path", "sha256")


def read_splits(path: str | Path, manifest: Manifest | None = None) -> Splits:
    """Read and check a splits file; with `manifest`, check it was made from that manifest."""
    path = Path(path)
    table = _read_table(path, SPLITS_SCHEMA, SPLIT_FIELDS, "splits")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    rows = table.select(SPLIT_FIELDS.names).to_pylist()
    _check_rows(rows, path, "splits")
    made_from = meta.get("fsad.manifest_sha256", "")
    if manifest is not None and made_from != manifest.content_sha256:
        raise InputError(f"splits {path} were made from manifest {made_from[:12]}, not {manifest.path} "
                         f"({manifest.content_sha256[:12]}); re-run fsad split on this manifest")
    try:
        shots = [int(k) for k in meta.get("fsad.shots", "").split(",") if k]
        draws, seed = int(meta["fsad.draws"]), int(meta["fsad.seed"])
    except (KeyError, ValueError):
        raise InputError(f"splits {path} lack their shots/draws/seed metadata; expected a file written by fsad split") from None
    return Splits(path, rows, made_from, seed, shots, draws, content_hash(rows, SPLITS_SCHEMA, _SPLIT_HASH_FIELDS))


# --------------------------------------------------------------------------------------------------
# Data sources for training and evaluation
# --------------------------------------------------------------------------------------------------


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
        image, orig = _load_image(path, image_size)
        mask = None
        if r["split"] == "test" and (r["mask_path"] is not None or self._has_masks(r["category"])):
            if r["mask_path"] is None:
                mask = _zeros(image_size)
            else:
                mask_path = self.manifest.root / r["mask_path"]
                _verify(mask_path, r["mask_sha256"], self.manifest.path)
                mask = _load_mask(mask_path, image_size, orig)
        return ImageItem(image=image, mask=mask, label=int(r["label"]), category=r["category"],
                         defect_type=r["defect_type"], path=str(path))

    def _has_masks(self, category: str) -> bool:
        return any(r["mask_path"] is not None for r in self.manifest.select(category, "test"))


def _zeros(size: int):
    import torch

    return torch.zeros(size, size, dtype=torch.float32)


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
    """Pass sources through (anything with categories() and load(), e.g. workers.video's
    SceneTaskSource); a path is a folder."""
    if isinstance(data, (FolderSource, ManifestSource)) or (hasattr(data, "categories") and hasattr(data, "load")):
        return data
    return FolderSource(data)
