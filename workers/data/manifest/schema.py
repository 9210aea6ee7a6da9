"""The Parquet formats fsad writes (manifest, rejects, splits), their content hash and atomic writes.

A manifest lists every accepted image of an MVTec-layout tree, one row each:

    category, split ("train"|"test"), defect_type ("good" or the defect folder), label (0|1),
    image_path, mask_path (or null), sha256, mask_sha256 (or null), height, width, channels (1|3)

Paths are POSIX paths relative to the manifest's image root (``fsad.root`` in the Parquet metadata:
an absolute source as given, or relative to the manifest's folder; never a path resolved through
symlinks, so the file holds nothing specific to the checkout it was written in). The metadata also holds the schema name and version,
the dataset name, its source and the **content hash**: sha256 over the sorted rows' identity fields
(labels, relative paths, image and mask hashes; see `content_hash`). The same tree gives the same hash
wherever it lives (a local folder, S3, another machine), and any changed byte changes it.

Every file is written atomically (temporary file, then rename) and carries its schema version;
`read_table` refuses other versions. The splits format is described in workers.data.splits.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from model.errors import InputError
from workers.files import temp_file_beside

MANIFEST_SCHEMA = "fsad-manifest"
SPLITS_SCHEMA = "fsad-splits"
REJECTS_SCHEMA = "fsad-rejects"
SCHEMA_VERSION = "1"

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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def read_table(path: Path, schema_name: str, fields: pa.Schema, what: str) -> pa.Table:
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
