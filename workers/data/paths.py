"""Names and relative paths that come from data or the command line, checked before any file is touched.

S3 object keys, manifest rows and category/scene names become paths under a root we write to or read
from (`root / key`). A key that is absolute, has an empty, ``.`` or ``..`` segment, a backslash or a
trailing separator could land outside that root (``ds//train/x.png`` became ``/train/x.png``), so such
keys are refused here, in one place, rather than trusted wherever a path is joined.
"""
from __future__ import annotations

import unicodedata

from model.errors import InputError

_EXPECTED_KEY = "expected a relative path such as cat/train/good/x.png (no leading /, no empty, '.' or '..' segments)"


def unsafe_key_reason(key: str) -> str | None:
    """Why `key` (a POSIX path relative to some root) could escape the root, or None when it is safe."""
    if not isinstance(key, str) or not key:
        return "empty path"
    if "\x00" in key or any(ord(ch) < 32 for ch in key):
        return "control character in the path"
    if "\\" in key:
        return "backslash in the path"
    if key.startswith("/"):
        return "absolute path"
    if key.endswith("/"):
        return "trailing separator"
    parts = key.split("/")
    if any(part == "" for part in parts):
        return "empty path segment"
    if any(part in (".", "..") for part in parts):
        return "'.' or '..' path segment"
    return None


def relative_key(key: str, what: str) -> str:
    """`key` unchanged when it is a safe relative path; else an InputError naming `what` and the key."""
    reason = unsafe_key_reason(key)
    if reason is not None:
        raise InputError(f"{what} {key!r} is unsafe ({reason}); {_EXPECTED_KEY}")
    return key


def plain_name_reason(name: str) -> str | None:
    """Why `name` is not one plain path segment, or None when it is."""
    if not isinstance(name, str) or not name.strip():
        return "empty name"
    if "/" in name or "\\" in name:
        return "a path separator in the name"
    if name.startswith("."):
        return "'.', '..' or a hidden name"
    if name != name.strip() or any(ord(ch) < 32 for ch in name):
        return "surrounding spaces or control characters"
    return None


def plain_name(name: str, what: str) -> str:
    """A category or scene name: exactly one plain path segment (no separator, not '.'/'..', not hidden)."""
    reason = plain_name_reason(name)
    if reason is not None:
        raise InputError(f"{what} {name!r} is not a plain folder name ({reason}); expected one folder name "
                         "such as tire")
    return name


def category_key(name: str) -> str:
    """The form names are compared in: Unicode NFC and case-folded, so that two spellings of one folder
    (decomposed accents, a case-insensitive filesystem) count as the same category."""
    return unicodedata.normalize("NFC", name).casefold()
