"""Parquet manifests: the versioned record of a dataset (formats and content hash in `schema`).

    layout.py   relative keys of an MVTec tree -> candidate rows, rejects, ignored files (no decoding)
    build.py    decode-check and hash the candidates; leaks; the manifest and rejects tables
    read.py     `Manifest` and `read_manifest`, with the checks every row passes before it is read
    schema.py   the Parquet formats (manifest, rejects, splits), content hash, atomic writes

This package's public names are re-exported here, so callers import them from workers.data.manifest.
"""
from workers.data.manifest.build import (
    IngestResult,
    build_rows,
    find_leaks,
    inspect_image,
    inspect_mask,
    manifest_table,
    rejects_table,
    rows_from_folder,
)
from workers.data.manifest.layout import Candidate, Layout, reject_row, scan_layout
from workers.data.manifest.read import Manifest, check_rows, read_manifest
from workers.data.manifest.schema import (
    MANIFEST_FIELDS,
    MANIFEST_SCHEMA,
    REJECT_FIELDS,
    REJECTS_SCHEMA,
    SCHEMA_VERSION,
    SPLIT_FIELDS,
    SPLITS_SCHEMA,
    commit,
    content_hash,
    discard,
    read_table,
    sha256_bytes,
    staged_parquet,
    table_from_rows,
    write_parquet,
)

__all__ = [
    "Candidate", "Layout", "scan_layout", "reject_row",
    "IngestResult", "build_rows", "find_leaks", "inspect_image", "inspect_mask", "manifest_table", "rejects_table",
    "rows_from_folder",
    "Manifest", "read_manifest", "check_rows",
    "MANIFEST_FIELDS", "MANIFEST_SCHEMA", "REJECT_FIELDS", "REJECTS_SCHEMA", "SCHEMA_VERSION", "SPLIT_FIELDS",
    "SPLITS_SCHEMA", "commit", "content_hash", "discard", "read_table", "sha256_bytes", "staged_parquet",
    "table_from_rows", "write_parquet",
]
