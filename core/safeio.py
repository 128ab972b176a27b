"""Reading small files (configs, manifests, metas, indexes) safely: regular files only, size-capped, JSON depth-capped.

A config file the user controls can be a FIFO (an ``open`` that blocks forever), a link to ``/dev/zero`` (a read
that never ends), a directory, or gigabytes of JSON; its JSON can be nested deep enough to blow Python's
recursion limit. Every reader of such a file goes through :func:`read_small_file` / :func:`read_json_object`:

* the file is opened with ``O_NONBLOCK`` (so opening a FIFO never waits for a writer) and ``fstat``-ed on the
  open descriptor (no race between the check and the read); anything but a regular file is refused unread;
* at most ``max_bytes`` are read, and a larger file is refused with its size and the limit;
* JSON must be UTF-8, parse, be an object, and nest at most ``max_depth`` levels.

Symlinks are followed (the Hugging Face cache links snapshots to blobs): the *target* must be a regular file.
A missing file raises :class:`FileNotFoundError` (an ``OSError``, as ``open`` would), so callers that treat
"absent" as normal catch ``OSError``; everything else raises :class:`UnsafeFileError` (a ``ValueError``) whose
message names the file, what it was read as, the problem and the fix.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
DEFAULT_MAX_BYTES = 1 * MiB  # model configs are a few KB; a sharded-weights index of a 12B model ~100 KB
DEFAULT_MAX_DEPTH = 32  # real configs nest 2-4 levels


class UnsafeFileError(ValueError):
    """A file that is not read as given: not a regular file, too large, not UTF-8 / JSON / an object, too deep."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_kind(path: Path, mode: int, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"{path}: the {what} is {_kind(mode)}, not a regular file, so it is not read (a pipe "
                           "or device would block or never end); replace it with the real file")


def check_regular_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed) when it is a regular file of at most ``max_bytes`` (None: any
    size); else :class:`UnsafeFileError`. Opens nothing. :class:`FileNotFoundError` when it does not exist."""
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse_kind(path, st.st_mode, what)
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeFileError(f"{path}: the {what} is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit for "
                              f"a {what}; this is not a real {what} (replace it with the right file)")
    return st


def read_small_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "file") -> bytes:
    """The bytes of ``path`` if it is a regular file (links followed) of at most ``max_bytes``; else
    :class:`UnsafeFileError`. Never blocks on a FIFO and never reads more than ``max_bytes + 1`` bytes."""
    path = Path(path)
    st = os.stat(path)  # a cheap first refusal: a device or FIFO is never opened
    if not stat.S_ISREG(st.st_mode):
        raise _refuse_kind(path, st.st_mode, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)  # what was opened (it may have been swapped since the stat above)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse_kind(path, st.st_mode, what)
        if st.st_size > max_bytes:
            raise UnsafeFileError(f"{path}: the {what} is {st.st_size:,} bytes, over the {max_bytes:,}-byte limit "
                                  f"for a {what}; this is not a real {what} (replace it with the right file)")
        chunks, n = [], 0
        while n <= max_bytes:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
    finally:
        os.close(fd)
    if n > max_bytes:  # grew while being read
        raise UnsafeFileError(f"{path}: the {what} is over the {max_bytes:,}-byte limit for a {what} (it grew while "
                              "being read); replace it with the right file")
    return b"".join(chunks)


def json_depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``[]`` and ``{}`` are 1), without recursion."""
    depth, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in o)
    return depth


def parse_json_object(raw: bytes | str, path: str | os.PathLike, what: str = "JSON file",
                      max_depth: int = DEFAULT_MAX_DEPTH) -> dict:
    """``raw`` parsed as a JSON object nested at most ``max_depth`` levels, else :class:`UnsafeFileError`
    naming ``path`` (for messages only)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise UnsafeFileError(f"{path}: the {what} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8 "
                              "JSON") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise UnsafeFileError(f"{path}: the {what} nests too deep to parse (over {max_depth} levels allowed); "
                              f"this is not a real {what}") from None
    except ValueError as e:
        raise UnsafeFileError(f"{path}: the {what} is not valid JSON ({e}); fix or replace the file") from None
    if not isinstance(obj, dict):
        raise UnsafeFileError(f"{path}: the {what} must be a JSON object ({{...}}), not {type(obj).__name__}; fix "
                              "or replace the file")
    d = json_depth(obj)
    if d > max_depth:
        raise UnsafeFileError(f"{path}: the {what} nests {d} levels deep, over the {max_depth} allowed; this is not "
                              f"a real {what}")
    return obj


def read_json_object(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "JSON file",
                     max_depth: int = DEFAULT_MAX_DEPTH) -> dict:
    """A small JSON object file: :func:`read_small_file` then :func:`parse_json_object`.
    :class:`FileNotFoundError` when missing, :class:`UnsafeFileError` for everything else that is wrong."""
    return parse_json_object(read_small_file(path, max_bytes, what), path, what, max_depth)
