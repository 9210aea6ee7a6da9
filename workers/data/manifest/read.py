"""Reading a manifest back: the `Manifest` rows, their image root, and the checks every row passes
before anything is read from that root."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from model.errors import InputError
from workers.data.manifest.schema import MANIFEST_FIELDS, MANIFEST_SCHEMA, content_hash, read_table
from workers.data.paths import plain_name, relative_key


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


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Read and check a manifest. `root` overrides the image root recorded in it."""
    path = Path(path)
    table = read_table(path, MANIFEST_SCHEMA, MANIFEST_FIELDS, "manifest")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    rows = table.select(MANIFEST_FIELDS.names).to_pylist()
    if not rows:
        raise InputError(f"manifest {path} has no rows; expected at least one image")
    check_rows(rows, path, "manifest")
    recorded = meta.get("fsad.root", "")
    if root is not None:
        resolved = Path(root)
    elif Path(recorded).is_absolute():
        resolved = Path(recorded)
    else:  # lexically, as ingest computed it: a symlinked data/ folder must not redirect the '..' steps
        resolved = Path(os.path.normpath(os.path.join(os.path.abspath(path.parent), recorded)))
    return Manifest(path, rows, meta.get("fsad.name", ""), meta.get("fsad.source", ""), resolved, content_hash(rows))


def check_rows(rows: Sequence[dict], path: Path, what: str) -> None:
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
