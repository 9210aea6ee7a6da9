"""Crash-consistent training checkpoints of the one training loop (orchestrator/training/loop.py).

A checkpoint is one unit: the model directory's files (weights, config, meta), the resume state
(optimizer, RNG states, counters in `state.pt`) and any extra file (a Ray run's
metrics.jsonl) always belong to the same episode. Saving takes three steps:

1. write:   every file into a new folder `<out>/.checkpoint-<episode>.<random>.tmp/`, each fsynced, then
            the manifest `checkpoint.json` (episode; size and sha256 of every file);
2. commit:  rename that folder to `<out>/.checkpoint-<episode>/` and fsync `<out>` (the commit point);
3. publish: link (or copy) each file into `<out>` under a temporary name and rename it into place, the
            manifest last; then remove the committed folder.

A kill during 1 leaves the previous checkpoint as it was (the .tmp folder is removed on the next save or
resume); a kill during 3 leaves a complete committed folder, which `recover` publishes again. So
`<out>/checkpoint.json` names exactly the files beside it, except after a kill inside step 3, and then a
committed folder holds the newer checkpoint. `recover` (resume) verifies every hash and refuses, with one
line, a directory where neither holds; `verify_model_files` (tracking/artifacts.py, loading a model) refuses a mixed directory.

FSAD_CRASH_AT=<step>[@<episode>] (used only by tests) SIGKILLs the process at a step of a save:
`write` (weights written into the folder, state not yet), `commit` (folder complete, not yet renamed),
`publish` (new weights published, state not yet: where a kill used to corrupt resume), `cleanup`
(everything published, the committed folder not yet removed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

from model.errors import InputError
from orchestrator.tracking.artifacts import CONFIG, MANIFEST, META, STATE, WEIGHTS, Writer, manifest_mismatch, read_manifest, sha256_of
from workers.files import fsync_dir, fsync_file

# The model directory's files are named in orchestrator/tracking/artifacts.py; this one only a checkpoint has.
METRICS = "metrics.jsonl"  # a Ray run's per-update records
FORMAT = 1
COMMITTED = re.compile(r"^\.checkpoint-(\d+)$")
STAGING = re.compile(r"^\.checkpoint-\d+\..+\.tmp$")
# Temporaries of atomic_path and _place: .<name>.<random>.tmp, removed only for names of ours.
TEMP_FILE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")
OWN_FILES = frozenset({WEIGHTS, CONFIG, META, STATE, METRICS, MANIFEST})


def crash_point(step: str, episode: int) -> None:
    """Test hook: SIGKILL this process at `step` when FSAD_CRASH_AT asks for it (see the module doc)."""
    spec = os.environ.get("FSAD_CRASH_AT")
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == step and (not at or int(at) == episode):
        os.kill(os.getpid(), signal.SIGKILL)


def remove_stale(out: Path) -> list[Path]:
    """Remove what a killed save left behind: unfinished checkpoint folders and temporary files of ours."""
    removed = []
    if not out.is_dir():
        return removed
    for entry in out.iterdir():
        if entry.is_dir() and STAGING.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif entry.is_file() and (m := TEMP_FILE.match(entry.name)) and m.group("name") in OWN_FILES:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _committed(out: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint folders in `out`, newest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := COMMITTED.match(p.name))]
    return sorted(found, reverse=True)


def has_checkpoint(out: Path) -> bool:
    """Does `out` hold something to resume from (published state or a committed folder)?"""
    return (out / STATE).is_file() or bool(_committed(out))


def newest_state(out: Path) -> Path | None:
    """The state file a resume of `out` would start from (before `recover` has run), if any."""
    for _, folder in _committed(out):
        if (folder / STATE).is_file():
            return folder / STATE
    return out / STATE if (out / STATE).is_file() else None


def _place(src: Path, dst: Path) -> None:
    """Put src's content at dst atomically: a hard link (no copy) where the file system allows one."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FUSE file systems)
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _publish(out: Path, folder: Path, manifest: dict) -> None:
    for index, name in enumerate(manifest["files"]):
        _place(folder / name, out / name)
        if index == 0:
            crash_point("publish", manifest["episode"])
    _place(folder / MANIFEST, out / MANIFEST)
    fsync_dir(out)


def save_checkpoint(out: Path, episode: int, writers: dict[str, Writer]) -> None:
    """Write the files of one checkpoint (name -> function writing that file at a given path) as one unit."""
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".checkpoint-{episode}.", suffix=".tmp"))
    try:
        files = {}
        for index, (name, write) in enumerate(writers.items()):
            write(staging / name)
            fsync_file(staging / name)
            files[name] = {"bytes": (staging / name).stat().st_size, "sha256": sha256_of(staging / name)}
            if index == 0:
                crash_point("write", episode)
        manifest = {"format": FORMAT, "episode": int(episode), "files": files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        fsync_file(staging / MANIFEST)
        fsync_dir(staging)
        crash_point("commit", episode)
        committed = out / f".checkpoint-{episode}"
        if committed.exists():  # left by a save of this same episode that was killed after its commit
            shutil.rmtree(committed)
        os.rename(staging, committed)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(out)
    _publish(out, committed, manifest)
    crash_point("cleanup", episode)
    shutil.rmtree(committed)
    fsync_dir(out)


def _legacy_episode(out: Path) -> int:
    """A checkpoint written before checkpoint.json existed: accept it only if state.pt and meta.json agree
    (they were written meta, weights, state, so agreement means no kill fell between them)."""
    import torch

    try:
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        meta = json.loads((out / META).read_text())
    except Exception as exc:  # noqa: BLE001 - unreadable state or meta: refuse below
        raise InputError(f"--resume: the checkpoint in {out} cannot be read ({type(exc).__name__}); "
                         "start afresh in a new --out") from None
    episode, done = int(state.get("episode", -1)), meta.get("episodes_done")
    if episode != done:
        raise InputError(f"--resume: the checkpoint in {out} is inconsistent ({STATE} at episode {episode}, "
                         f"{META} at {done}: training was killed while saving); start afresh in a new --out")
    return episode


def recover(out: Path) -> int:
    """Make `out` hold its newest consistent checkpoint and return its episode (resume calls this first).

    Removes stale temporaries, publishes a committed checkpoint that a kill interrupted, verifies every
    file against the manifest. Raises InputError (one line) when nothing consistent is left."""
    out = Path(out)
    remove_stale(out)
    published = read_manifest(out / MANIFEST)
    published_ok = published is not None and manifest_mismatch(out, published) is None
    for episode, folder in _committed(out):
        manifest = read_manifest(folder / MANIFEST)
        if manifest is None or manifest_mismatch(folder, manifest) is not None:
            continue  # not a complete checkpoint: a newer or older one decides
        if not published_ok or manifest["episode"] > published["episode"]:
            _publish(out, folder, manifest)
            published, published_ok = manifest, True
        break
    if published_ok:
        for _, folder in _committed(out):  # superseded by what is published
            shutil.rmtree(folder, ignore_errors=True)
        fsync_dir(out)
        return int(published["episode"])
    if published is None and (out / STATE).is_file():
        return _legacy_episode(out)
    if published is None:
        raise InputError(f"--resume: {out} has no {STATE} checkpoint to continue from")
    problem = manifest_mismatch(out, published)
    raise InputError(f"--resume: the checkpoint in {out} is inconsistent ({problem}) and no complete earlier "
                     "checkpoint is left; start afresh in a new --out")


__all__ = ["METRICS", "save_checkpoint", "recover", "has_checkpoint", "remove_stale", "crash_point", "newest_state"]
