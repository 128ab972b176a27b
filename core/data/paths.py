"""Typed paths and names, checked before any system call: length, encoding, hidden names, symlinks that
resolve outside a dataset root. Shared by the folder scan and the manifest reader."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from core.data.records import DatasetError


MAX_MANIFEST_BYTES = 1 << 30  # 1 GiB: ~10 million rows; a larger "manifest" is refused unread
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer typed paths are refused before any system call


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def shown(name: str) -> str:
    """``name`` as printable text: bytes that are not UTF-8 (kept by Python as surrogates) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _not_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


NOT_UTF8 = "name is not valid UTF-8 (skipped); rename it, e.g. `convmv -f latin1 -t utf8 --notest NAME`"


def _real(path: str) -> str | None:
    """The fully resolved path, or None when it cannot be resolved (missing target, symlink loop)."""
    try:
        return os.path.realpath(path, strict=True)
    except (OSError, RuntimeError, ValueError):
        return None


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _inside(path: Path, root: Path) -> bool:
    real = _real(str(path))
    return real is not None and _within(real, str(root))


def _unresolvable(path: str) -> str:
    """Why ``path`` cannot be resolved: a symlink loop, a broken link, a missing file or another error."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (skipped); remove or fix the link"
        if e.errno == errno.ENOENT:
            return ("broken symlink: its target does not exist (skipped)" if os.path.islink(path)
                    else "file does not exist")
        return f"cannot read: {e.strerror} (skipped)"
    return "cannot resolve (skipped)"


def _check_path_text(path: str, what: str = "dataset") -> None:
    if not path.strip():
        raise DatasetError(f"No {what} path given (an empty path would mean the current folder). Pass a DomainBed "
                           "folder (<root>/<domain>/<class>/<image>) or a CSV manifest (path,domain,class).")
    if "\x00" in path:
        raise DatasetError(f"The {what} path contains a NUL byte, which no file name can hold; type the path again.")
    if len(path) > MAX_PATH_CHARS:
        raise DatasetError(f"The {what} path is {len(path):,} characters long; paths are limited to "
                           f"{MAX_PATH_CHARS:,} characters. Check what was pasted.")
