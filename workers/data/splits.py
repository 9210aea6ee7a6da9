"""Leave-one-out splits: per held-out target category, the rows of its fold, as a Parquet file.

A splits file (`split_rows` + `splits_table`, written by `fsad split`) lists, per target:

    role "train"    every train/good image of the other categories (what meta-training may see)
    role "test"     every test image of the target
    role "support"  for each K in shots and each draw d: K distinct train/good images of the target

Support draws are nested (draw d at K is the first K of one seeded permutation per (target, d)), so
every method evaluated on a fold adapts to the same images. The file records the content hash of the
manifest it was made from; `read_splits` refuses a splits file made from another manifest.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from model.errors import InputError
from workers.data.manifest import (
    SPLIT_FIELDS,
    SPLITS_SCHEMA,
    Manifest,
    check_rows,
    content_hash,
    read_table,
    table_from_rows,
)
from workers.data.mvtec import GOOD


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
    table = read_table(path, SPLITS_SCHEMA, SPLIT_FIELDS, "splits")
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    rows = table.select(SPLIT_FIELDS.names).to_pylist()
    check_rows(rows, path, "splits")
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
