"""The data version of a run: the manifest's sha256 (and a dataset input), else a listing hash."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from orchestrator.tracking.artifacts import sha256_of

sha256_file = sha256_of  # one streaming sha256 for checkpoints and data versions


def find_manifest(data_root: str | Path) -> Path | None:
    path = Path(data_root) / "manifest.parquet"
    return path if path.is_file() else None


def data_version(data_root: Any, manifest: str | Path | None = None) -> dict[str, Any]:
    """{"hash", "kind", "dataset"?}: the manifest's sha256 when there is one (kind=manifest), else a
    listing hash of the relative paths and sizes of every file under the root (kind=listing).

    data_root: a folder, a manifest .parquet file, or a workers.data.sources source (folder or manifest)."""
    if data_root is None and manifest is not None:  # images named by the manifest alone
        data_root = Path(manifest)
    if not isinstance(data_root, (str, Path)):
        source_manifest = getattr(data_root, "manifest", None)
        if source_manifest is not None:  # a workers.data.sources.ManifestSource
            data_root, manifest = source_manifest.root, source_manifest.path
        else:  # a workers.data.sources.FolderSource
            data_root = data_root.root
    root = Path(data_root)
    if root.suffix == ".parquet" and root.is_file():
        root, manifest = root.parent, root
    manifest = Path(manifest) if manifest else find_manifest(root)
    if manifest and manifest.is_file():
        sha = sha256_file(manifest)
        profile = None
        with contextlib.suppress(Exception):
            import pyarrow.parquet as pq

            profile = json.dumps({"num_rows": pq.read_metadata(manifest).num_rows})
        dataset = {"name": root.resolve().name, "digest": sha[:16], "source_type": "local",
                   "source": json.dumps({"uri": str(manifest.resolve())}), "schema": None, "profile": profile}
        return {"hash": sha, "kind": "manifest", "dataset": dataset}
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return {"hash": digest.hexdigest(), "kind": "listing"}
