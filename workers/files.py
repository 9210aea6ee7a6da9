"""File modes for atomic writes: mkstemp/mkdtemp make 0600 files and 0700 folders whatever the umask, so a
temporary renamed into place gets the mode open()/mkdir() would have given it (0666 / 0777 & ~umask)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
