"""Safe file writing: atomic replacement with fsync, file modes, and checks on where output may go.

File modes: mkstemp/mkdtemp make 0600 files and 0700 folders whatever the umask, so a temporary renamed
into place gets the mode open()/mkdir() would have given it (0666 / 0777 & ~umask).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from model.errors import InputError


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_new(path: str | Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp the mode a plain create would have."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def temp_file_beside(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty file `.<name>.<random><suffix>` beside `path` (its folder created if missing), with the
    mode of a plain create, to be renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    chmod_like_new(tmp)
    return Path(tmp)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename in `path` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it, rename it over `path` and fsync the
    folder, else remove it. Readers never see half a file, and after a power cut the file is the old
    or the new one, never empty."""
    tmp = temp_file_beside(Path(path), suffix)  # mode 0666 & ~umask, as a plain write would have
    path = Path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def temporary_workdir(cwd: str | Path | None = None) -> Path | None:
    """The temporary copy the working directory lies in, or None. Ray unpacks a job's `--working-dir`
    (and py_modules) into <ray temp>/session_*/runtime_resources/<kind>/_ray_pkg_<hash>/ and deletes it
    when no job uses it any more: what a job writes there relative to its working directory is lost."""
    parts = Path(os.path.abspath(cwd if cwd is not None else os.getcwd())).parts
    for i, part in enumerate(parts):
        if part.startswith("_ray_pkg_") or part == "runtime_resources":
            end = next((j for j in range(i, len(parts)) if parts[j].startswith("_ray_pkg_")), i)
            return Path(*parts[: end + 1])
    return None


def check_not_temporary(path: str | Path, flag: str) -> None:
    """A file or folder the user must find afterwards may not lie in a temporary working directory."""
    temp = temporary_workdir()
    if temp is not None and Path(os.path.abspath(path)).is_relative_to(temp):
        raise InputError(f"{flag} {path} would be written into Ray's temporary copy of the working directory ({temp}), "
                         "which is deleted after the job; expected an absolute path on a filesystem you can reach "
                         "(docs/cluster.md)")


def check_writable_dir(path: str | Path, flag: str = "--out") -> None:
    """Fail before any work when the folder `path` (created later if absent) could not be written:
    it, or its nearest existing parent, must be a directory this user may write into (and not one that
    is deleted after the run)."""
    check_not_temporary(path, flag)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} exists and is not a directory; expected a folder to write into")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is not a directory; expected a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: {existing} is not writable by this user; expected a folder you can write "
                         "(checked before any work starts)")


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
