"""`fsad ingest` and `fsad split`: a dataset tree -> manifest.parquet + rejects.parquet + ingest.json;
a manifest -> splits.parquet (leave-one-category-out folds and the support draws of every K).

Sources: a local MVTec-layout folder (read in place: the manifest records its location relative to
the output folder, images are not copied), ``s3://BUCKET/PREFIX`` (every object is downloaded once,
into ``OUT/files/``, which the manifest then points to) or ``elpv`` (the elpv-dataset package written
as an MVTec-layout tree into ``OUT/files/``). Outputs are staged as temporary files and renamed only
when everything has been read, so a failed run leaves the previous outputs untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from model.errors import InputError
from workers.data.manifest import (
    build_rows,
    commit,
    discard,
    manifest_table,
    read_manifest,
    rejects_table,
    scan_layout,
    staged_parquet,
)
from workers.data.paths import relative_key
from workers.data.splits import split_rows, splits_table
from workers.files import atomic_write_text, chmod_like_new

MANIFEST = "manifest.parquet"
REJECTS = "rejects.parquet"
SUMMARY = "ingest.json"
FILES = "files"


def is_local_source(source: str) -> bool:
    """A folder (not s3://... or elpv)."""
    return _source_kind(str(source)) == "local"


def _source_kind(source: str) -> str:
    if source == "elpv":
        return "elpv"
    if source.startswith("s3://"):
        return "s3"
    if "://" in source:
        scheme = source.split("://", 1)[0]
        raise InputError(f"--source {source!r}: unknown scheme {scheme}://; expected a folder, s3://BUCKET/PREFIX or elpv")
    return "local"


def _local_reader(root: Path) -> Callable[[str], bytes]:
    def read(key: str) -> bytes:
        try:
            return (root / key).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read: {e.strerror or e}") from None

    return read


def _recorded_root(root: Path, out: Path) -> str:
    """The image root as the manifest records it: an absolute --source as given; a relative one relative
    to --out, computed on the paths as written (symlinks not resolved), so that the same command in
    another clone, at any path, writes the same bytes (what `dvc status` compares)."""
    if root.is_absolute():
        return os.path.normpath(root).replace(os.sep, "/")
    return Path(os.path.relpath(os.path.abspath(root), os.path.abspath(out))).as_posix()


def _local_keys(root: Path) -> list[str]:
    """Relative keys of every file under `root`, following symlinked folders: a dataset assembled from
    several trees is a folder of links to their category folders (experiments/sources/, docs/data.md).
    A link whose target is missing is an error naming it; a link back to a folder already being walked
    (a cycle) is skipped, so the walk ends."""
    if not root.is_dir():
        raise InputError(f"--source {root} does not exist or is not a folder; expected an MVTec-layout tree")
    keys: list[str] = []
    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=_walk_error):
        here = Path(folder)
        ancestors = {os.path.realpath(p) for p in [here, *here.parents] if p == root or root in p.parents}
        subfolders[:] = sorted(d for d in subfolders if os.path.realpath(here / d) not in ancestors)
        for name in files:  # a dangling link is listed here, not among the folders
            path = here / name
            if path.is_symlink() and not path.exists():
                raise InputError(f"--source {root}: link {path} points to {os.readlink(path)}, which does not "
                                 "exist; expected a link to a category folder of an MVTec-layout tree")
            keys.append(path.relative_to(root).as_posix())
    return keys


def _walk_error(error: OSError) -> None:
    raise InputError(f"--source: cannot read {error.filename}: {error.strerror}")


def ingest(source: str, name: str, out: str | Path, endpoint_url: str | None = None,
           threads: int = 4, log: Callable[[str], None] = print, read_from: str | Path | None = None) -> dict[str, Any]:
    """Read, decode, check and hash every image of `source`; write the manifest, rejects and summary.
    `read_from`: where a relative local source really is when that differs from the working directory
    (a DVC experiment's temporary copy); the manifest still records `source` as written."""
    source = str(source)
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"--name {name!r}: expected a plain dataset name such as fsad-real")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    kind = _source_kind(source)
    staging: Path | None = None  # downloaded / generated image files, renamed to out/files at the end
    try:
        if kind == "local":
            root = Path(read_from) if read_from is not None else Path(source)
            keys = _local_keys(root)
            read = _local_reader(root)
            recorded_root = _recorded_root(Path(source), out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{FILES}.tmp-", dir=out))
            chmod_like_new(staging)  # renamed to out/files: not mkdtemp's 0700
            recorded_root = FILES
            if kind == "s3":
                from workers.data.s3 import S3Tree

                tree = S3Tree(source, endpoint_url)
                keys = tree.keys()
                read = _mirroring_reader(tree.read, staging)
            else:
                from workers.data.elpv import materialize_elpv

                materialize_elpv(staging)
                keys = _local_keys(staging)
                read = _local_reader(staging)
        layout = scan_layout(keys)
        if not layout.candidates:
            raise InputError(f"--source {source} has no images in the MVTec layout; expected "
                             "<category>/train/good/*.png and <category>/test/<type>/*.png")
        log(f"ingest {source}: {len(layout.candidates)} images to decode")
        result = build_rows(layout, read, threads)
        if not result.rows:
            raise InputError(f"--source {source}: every image was rejected ({result.rejects[0]['reason']} ...)")
        summary = _summary(source, name, result)
        staged = [(staged_parquet(manifest_table(result.rows, name, source, recorded_root), out / MANIFEST), out / MANIFEST),
                  (staged_parquet(rejects_table(result.rejects), out / REJECTS), out / REJECTS)]
        try:
            atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))
            if staging is not None:
                _replace_dir(staging, out / FILES)
                staging = None
            commit(staged)
        except BaseException:
            discard(staged)
            raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(out)
    summary["manifest_sha256"] = read_manifest(out / MANIFEST).content_sha256
    for line in summary_lines(summary, result):
        log(line)
    return summary


def _mirroring_reader(read: Callable[[str], bytes], folder: Path) -> Callable[[str], bytes]:
    def mirrored(key: str) -> bytes:
        relative_key(key, "object key")  # scan_layout already refused unsafe keys; never write outside folder
        data = read(key)
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    return mirrored


def _replace_dir(staged: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _summary(source: str, name: str, result) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for r in result.rows:
        key = f"{r['split']}/{r['defect_type'] if r['split'] == 'test' else 'good'}"
        counts.setdefault(r["category"], {}).setdefault(key, 0)
        counts[r["category"]][key] += 1
    reasons: dict[str, int] = {}
    for j in result.rejects:
        short = j["reason"].split(";")[0].split(":")[0]
        reasons[short] = reasons.get(short, 0) + 1
    return {"name": name, "source": source, "images": len(result.rows), "rejected": len(result.rejects),
            "counts": {c: dict(sorted(v.items())) for c, v in sorted(counts.items())},
            "reject_reasons": reasons, "leaks": result.leaks, "empty_masks": result.empty_masks,
            "ignored": result.ignored}


def summary_lines(summary: dict[str, Any], result=None) -> list[str]:
    lines = [f"{summary['images']} images accepted, {summary['rejected']} rejected "
             f"(see {REJECTS}); manifest sha256 {summary.get('manifest_sha256', '')[:16]}"]
    for cat, counts in summary["counts"].items():
        lines.append(f"  {cat}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for reason, n in summary["reject_reasons"].items():
        lines.append(f"  rejected {n}: {reason}")
    if result is not None:
        for j in result.rejects[:10]:
            lines.append(f"    {j['path']}: {j['reason']}")
        if len(result.rejects) > 10:
            lines.append(f"    ... {len(result.rejects) - 10} more in {REJECTS}")
    for leak in summary["leaks"]:
        lines.append(f"  LEAK: the same image is in train and test: {', '.join(leak['train'] + leak['test'])}")
    if summary["empty_masks"]:
        lines.append(f"  note: {len(summary['empty_masks'])} anomalous images have an all-zero mask")
    if summary["ignored"]:
        lines.append(f"  ignored {len(summary['ignored'])} non-image files: {', '.join(summary['ignored'][:5])}")
    return lines


def make_splits(manifest: str | Path, shots: Sequence[int], draws: int, seed: int, out: str | Path,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the leave-one-category-out folds and support draws of `manifest` to `out`."""
    m = read_manifest(manifest)
    shots = sorted(set(int(k) for k in shots))
    if not shots:
        raise InputError("--shots is empty; expected a comma list such as 1,2,4,8,10")
    rows = split_rows(m, shots, draws, seed)
    out = Path(out)
    table = splits_table(rows, m, shots, draws, seed)
    staged = staged_parquet(table, out)
    commit([(staged, out)])
    targets = m.categories()
    log(f"wrote {out}: {len(targets)} folds ({', '.join(targets)}), K in {shots}, {draws} draws, seed {seed}")
    return {"out": str(out), "targets": targets, "shots": shots, "draws": draws, "seed": seed,
            "manifest_sha256": m.content_sha256}
