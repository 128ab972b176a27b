"""Per-layer chunk files of the feature cache: one safetensors file per (setting, layer, chunk of images).

Layout inside a setting's folder (``<cache>/features/<key[:2]>/<key>/``)::

    L-<layer>/c-00000.safetensors   # rows = the chunk's readable images, in order; one tensor "f"
    L-<layer>/c-00001.safetensors
    meta.json                       # what the setting is (config, model, dataset, size); never needed to read

Why safetensors shards rather than Zarr v3 (both were candidates):

* a chunk file is written whole to a temp name and renamed (atomic) by whichever process computed it, so
  N processes on N nodes fill one setting with no shared array metadata to create or lock (a Zarr array's
  ``zarr.json`` must exist before any chunk, and Zarr's local store writes chunk files in place);
* a chunk carries its own ids digest, skipped images and checksum in the header, so it is verified, resumed
  or recomputed alone, and a chunk with unreadable images simply has fewer rows (a Zarr array has fixed
  rows, so skipped images would need a mask array kept in step);
* safetensors is already the project's only weights format (no pickles by construction), it needs no new
  dependency, and the files open with ``safetensors.numpy.load_file`` or any safetensors reader.

Reading one layer streams that layer's files straight into one preallocated array (``readinto``: no
temporary copy, no other layer's bytes touched) and checks each chunk's checksum as it goes. The checksum
guards against torn or damaged files, not tampering (anyone who can write the file can rewrite a stored digest
too), so it is a fast non-cryptographic one: XXH3-64 (the ``xxhash`` package; ~8 GB/s on one core here and it
releases the GIL) for chunks written now, CRC-32 (zlib; ~0.8-1.3 GB/s here, which held one-layer warm reads to
0.15x the raw read) for chunks written before it and when ``xxhash`` is not installed. Each chunk records its
kind (the metadata key ``xxh3_64`` or ``crc32``), so old caches still verify and keep their keys.

Layer index: once every chunk of a layer is present, the process that knows it writes ``L-<layer>/index.json``
(atomic, one small file): each chunk's header fields plus the ``os.stat`` identity (size, mtime_ns, ctime_ns,
inode) of the file they were read from. Finding what is cached then reads that one file and stats the chunk
files instead of opening 2,291 headers (DomainNet, one layer). A chunk whose stat differs (replaced, deleted,
truncated, rewritten after the index) falls back to reading its own header and the index is rewritten; so
does a chunk whose recorded times are not older than the index itself (file times have a clock tick's
resolution, so a change in the same tick could keep them: git's "racily clean" rule); an
index that fails its bounds, CRC-32 or format checks is ignored with a warning (it is untrusted input, like a
header). Ranks never coordinate on it: it is only written when all chunks exist, and two identical writes are
harmless (rename). Feature bytes are still checksummed on every read, and ``cache verify`` reads every chunk.

File modes: chunk and meta files get ``0666 & ~umask`` (0644 with the usual umask 022), like any file the
user creates; for a cache shared by a group, set ``umask 002`` (and a setgid folder). Never 0600.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.engine.hashing import stable_hash

logger = logging.getLogger(__name__)

try:
    import xxhash
except ImportError:  # pragma: no cover - a requirement; without it new chunks get CRC-32 (and xxh3 ones cannot verify)
    xxhash = None

CHECKSUMS = ("xxh3_64", "crc32")  # kinds a chunk may record, the one written first
_CHECK_MAX = {"xxh3_64": (1 << 64) - 1, "crc32": 0xFFFFFFFF}


def write_checksum_kind() -> str:
    """The checksum new chunks get: XXH3-64 when ``xxhash`` is importable, else CRC-32."""
    return "xxh3_64" if xxhash is not None else "crc32"


def checksum(kind: str, data) -> int:
    """The ``kind`` checksum (one of :data:`CHECKSUMS`) of a bytes-like object, as an unsigned int."""
    if kind == "xxh3_64":
        if xxhash is None:
            raise CacheError(errno.ENOPKG if hasattr(errno, "ENOPKG") else errno.EINVAL,
                             "this feature cache was written with XXH3-64 checksums and the `xxhash` package is not "
                             "installed: `pip install -r requirements.txt` (or `pip install xxhash`)")
        return xxhash.xxh3_64_intdigest(data)
    if kind == "crc32":
        return zlib.crc32(data)
    raise ValueError(f"unknown checksum kind {kind!r}; one of {CHECKSUMS}")

FORMAT = "domainlens-chunk-2"
STORAGE_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}
_BY_CODE = {code: dt for code, dt in STORAGE_DTYPES.values()}
MAX_HEADER = 64 << 20

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


class CacheError(OSError):
    """A cache folder that cannot be used (disk full, not a folder, not writable): the message says the fix."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class DamagedChunk(Exception):
    pass


def layer_dirname(layer: str) -> str:
    """A file-system-safe folder name for a layer (names like ``up_blocks.1`` are kept as they are)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", layer)
    if safe != layer or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{zlib.crc32(layer.encode()):08x}"
    return f"L-{safe}"


def ids_digest(ids) -> str:
    return stable_hash([str(i) for i in ids], 32)


@dataclass
class ChunkHeader:
    """What a chunk file says about itself (read without touching its data)."""

    path: Path
    ids_sha: str  # digest of the ids the chunk was asked for (readable + skipped)
    skipped: list  # [(id, reason)]
    n_rows: int
    n_cols: int
    dtype: np.dtype
    checksum: int  # of the tensor bytes, of kind ``check``
    data_start: int
    data_len: int
    stat: tuple = ()  # (size, mtime_ns, ctime_ns, inode) of the file the header was read from
    check: str = "crc32"  # the checksum's kind (:data:`CHECKSUMS`); chunks written before XXH3 have CRC-32

    @property
    def crc32(self) -> int:
        """The checksum value (the field's name before the kind was recorded; compare ``check`` too)."""
        return self.checksum


def file_stat(st: os.stat_result) -> tuple:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _disk_error(e: OSError, path: Path) -> OSError:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return CacheError(e.errno, f"the disk is full (writing the feature cache in {path.parent}): nothing partial "
                                   "was kept; free space (e.g. `python -m core cache prune --max-size 50GB`) or "
                                   "pass another --cache-dir, then run the same command again to resume")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return CacheError(e.errno, f"the feature cache folder {path.parent} is not writable ({e.strerror}); "
                                   "features that are already cached can still be read, but missing ones cannot "
                                   "be stored: pass a writable --cache-dir (or set DOMAINLENS_CACHE_DIR)")
    return e


def ensure_folder(folder: Path) -> None:
    """mkdir -p with a clear message when a path component is a regular file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        p = folder
        while p != p.parent and not p.exists():
            p = p.parent
        raise CacheError(errno.ENOTDIR, f"cannot use {folder} as a cache folder: {p} is a file, not a folder; pass "
                                        "another --cache-dir (or DOMAINLENS_CACHE_DIR)") from None
    except OSError as e:
        raise _disk_error(e, folder / "x") from None


def _write_all(f, data) -> None:
    f.write(data)
    f.flush()


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temp file in the same folder and rename it to ``path``; on any failure (disk full)
    the temp file is removed and ``path`` is unchanged."""
    ensure_folder(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            _write_all(f, data)
        try:
            os.replace(tmp, path)
        except IsADirectoryError:  # an empty folder where the chunk goes (damage): replace it
            try:
                os.rmdir(path)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise CacheError(errno.EISDIR, f"a folder with files in it, {path}, sits where the cache file "
                                               "goes (the cache does not delete folders it did not make): move or "
                                               f"delete it (`rm -r '{path}'`), then run the same command again"
                                 ) from None
            os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _disk_error(e, path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def encode_chunk(features: np.ndarray, ids_sha: str, skipped, storage: str, layer: str) -> bytes:
    """One chunk of one layer as safetensors bytes: tensor ``f`` (rows, channels) in ``storage`` dtype, and
    metadata (format, layer, ids digest, skipped images, checksum of the tensor bytes under the key of its kind:
    ``xxh3_64`` (16 hex digits) or ``crc32`` (decimal), see :func:`write_checksum_kind`)."""
    import safetensors.numpy

    code, dt = STORAGE_DTYPES[storage]
    f = np.ascontiguousarray(np.asarray(features, dtype=dt))
    if f.ndim != 2:
        f = f.reshape(len(f), -1)
    meta = {"format": FORMAT, "layer": layer, "ids_sha": ids_sha,
            "skipped": json.dumps([[str(i), str(w)] for i, w in skipped])}
    kind = write_checksum_kind()
    value = checksum(kind, memoryview(f).cast("B") if f.size else b"")
    meta[kind] = f"{value:016x}" if kind == "xxh3_64" else str(value)
    return safetensors.numpy.save({"f": f}, metadata=meta)


def _open_regular_fd(path: Path, exc: type) -> int:
    """``os.open(path)`` for a regular file only: opened with ``O_NONBLOCK`` (a FIFO in place of a cache file
    never blocks the open) and checked with ``fstat`` on the open descriptor; anything else raises ``exc``."""
    import stat

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise exc("a folder, not a file" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)")
    return fd


def _open_regular(path: Path, exc: type, buffering: int = -1):
    """:func:`_open_regular_fd` as a file object."""
    return os.fdopen(_open_regular_fd(path, exc), "rb", buffering=buffering)


def read_header(path: Path) -> ChunkHeader | None:
    """Parse and check a chunk file's header (bounds, dtype, sizes); ``None`` when absent; raises
    :class:`DamagedChunk` when the file is not a well-formed chunk."""
    try:
        with _open_regular(path, DamagedChunk) as fh:
            st = os.fstat(fh.fileno())
            size = st.st_size
            head = fh.read(8)
            if len(head) < 8:
                raise DamagedChunk("shorter than a header")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER, size - 8):
                raise DamagedChunk("header length out of bounds")
            raw = fh.read(n)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedChunk("a folder, not a file") from None
    try:
        h = json.loads(raw)
        meta = h.pop("__metadata__")
        if meta.get("format") != FORMAT or set(h) != {"f"}:
            raise DamagedChunk(f"not a {FORMAT} file")
        t = h["f"]
        dt = _BY_CODE[t["dtype"]]
        rows, cols = (int(x) for x in t["shape"])
        a, b = (int(x) for x in t["data_offsets"])
        skipped = [tuple(map(str, s)) for s in json.loads(meta["skipped"])]
        if "xxh3_64" in meta:
            check, crc = "xxh3_64", meta["xxh3_64"]
            if type(crc) is not str or len(crc) != 16:
                raise ValueError("xxh3_64")
            crc = int(crc, 16)
        else:
            check, crc = "crc32", int(meta["crc32"])
        if not 0 <= crc <= _CHECK_MAX[check]:
            raise ValueError(check)
        ids_sha = str(meta["ids_sha"])
    except DamagedChunk:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedChunk(f"unreadable header ({type(e).__name__})") from None
    itemsize = np.dtype(dt).itemsize
    if rows < 0 or cols < 0 or a != 0 or b != rows * cols * itemsize or 8 + n + b != size:
        raise DamagedChunk("sizes in the header do not match the file")
    return ChunkHeader(path, ids_sha, skipped, rows, cols, np.dtype(dt), crc, 8 + n, b, file_stat(st), check)


# Chunk files this process has read and checksummed, by (path, checksum kind, value) -> the file's stat then
# (size, mtime_ns, ctime_ns, inode): a later read of the same, unchanged file skips the checksum (its bytes were
# proven once; a file replaced, rewritten or truncated since has another stat and is checked again; files changed
# in the last 2 s are not recorded, as a change within one clock tick could keep the stat). Bounded;
# $DOMAINLENS_VERIFY_EVERY_READ=1 checks on every read; `cache verify` always checks.
_VERIFIED: dict[tuple, tuple] = {}
_VERIFIED_MAX = 1 << 20
_VERIFIED_LOCK = __import__("threading").Lock()


def read_into(header: ChunkHeader, out: np.ndarray, always_verify: bool = False) -> None:
    """Stream the chunk's rows into ``out`` (shape (rows, cols), the stored dtype, C-contiguous) and check the
    chunk's checksum (of its recorded kind); raises :class:`DamagedChunk` on a short read or a checksum mismatch.
    A file this process has already verified and whose stat (size, mtime, ctime, inode, taken from the open file)
    is unchanged is not checksummed again unless ``always_verify`` (see :data:`_VERIFIED`)."""
    view = memoryview(out).cast("B")
    if len(view) != header.data_len:
        raise DamagedChunk("output buffer size mismatch")
    key = (str(header.path), header.check, header.checksum)
    try:
        fd = _open_regular_fd(header.path, DamagedChunk)
    except FileNotFoundError:
        raise DamagedChunk("file disappeared") from None
    try:
        st = file_stat(os.fstat(fd))
        known = _VERIFIED.get(key) == st  # read and proven by this process before: most likely in the page cache
        if not known and hasattr(os, "posix_fadvise"):  # cold: one request for the whole chunk, not a growing
            os.posix_fadvise(fd, header.data_start, header.data_len, os.POSIX_FADV_WILLNEED)  # readahead window
        got = 0
        while got < header.data_len:  # positioned reads straight into ``out``: no file object, no seek
            k = os.preadv(fd, [view[got:]], header.data_start + got)
            if not k:
                break
            got += k
    finally:
        os.close(fd)
    always_verify = always_verify or os.environ.get("DOMAINLENS_VERIFY_EVERY_READ", "0") not in ("", "0")
    if not always_verify and known:
        return
    if checksum(header.check, view) != header.checksum:
        raise DamagedChunk("checksum mismatch")
    if __import__("time").time_ns() - max(st[1], st[2]) < 2_000_000_000:
        return  # changed within the last 2 s: a change in the same clock tick would keep its stat ("racily clean")
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = st


def read_chunk(path: Path, always_verify: bool = True) -> tuple[ChunkHeader, np.ndarray]:
    h = read_header(path)
    if h is None:
        raise DamagedChunk("absent")
    out = np.empty((h.n_rows, h.n_cols), h.dtype)
    read_into(h, out, always_verify)
    return h, out


# ------------------------------------------------------------------------------------------ layer index
INDEX_NAME = "index.json"
INDEX_FORMAT = "domainlens-layer-index-1"
MAX_INDEX = 256 << 20  # bytes; ~150 B per chunk, so ~1.7M chunks
_MAX_INT = 1 << 62


class DamagedIndex(Exception):
    pass


def encode_index(layer: str, chunk: int, n_images: int, headers: list[ChunkHeader]) -> bytes:
    """The index of a complete layer: a one-line JSON head (format, layer, chunk size, image count, number of
    chunks, CRC-32 of the body) and a JSON body listing, per chunk in order, ``[size, mtime_ns, ctime_ns, inode,
    ids_sha, rows, cols, dtype, checksum, data_start, skipped]``; the checksum is the CRC-32 as an int, or
    ``"xxh3_64:<16 hex digits>"`` (the kind recorded with the value)."""
    code = {np.dtype(dt): c for c, dt in _BY_CODE.items()}
    body = json.dumps([[*h.stat, h.ids_sha, h.n_rows, h.n_cols, code[h.dtype], _index_checksum(h), h.data_start,
                        [list(x) for x in h.skipped]] for h in headers], separators=(",", ":")).encode()
    head = json.dumps({"format": INDEX_FORMAT, "layer": layer, "chunk": chunk, "n_images": n_images,
                       "n_chunks": len(headers), "crc32": zlib.crc32(body)}, sort_keys=True).encode()
    return head + b"\n" + body


def _index_checksum(h: ChunkHeader):
    return h.checksum if h.check == "crc32" else f"{h.check}:{h.checksum:016x}"


def _parse_index_checksum(x) -> tuple[int, str]:
    """(value, kind) of an index entry's checksum (an int: CRC-32; ``"xxh3_64:<16 hex>"``)."""
    if type(x) is str:
        kind, _, digits = x.partition(":")
        if kind != "xxh3_64" or len(digits) != 16 or any(c not in "0123456789abcdef" for c in digits):
            raise DamagedIndex("malformed checksum")
        return int(digits, 16), kind
    return _int(x, 0, 0xFFFFFFFF), "crc32"


def _int(x, lo: int = 0, hi: int = _MAX_INT) -> int:
    if type(x) is not int or not lo <= x <= hi:
        raise DamagedIndex("a number out of bounds")
    return x


def _str(x, hi: int = 4096) -> str:
    if type(x) is not str or len(x) > hi:
        raise DamagedIndex("a string out of bounds")
    return x


def read_index(folder: Path, layer: str, chunk: int, n_images: int) -> tuple[int, list[ChunkHeader]] | None:
    """The index of ``folder`` (a layer's folder): (its own mtime_ns, [header per chunk, its ``stat`` the one
    recorded]); ``None`` when absent. Raises
    :class:`DamagedIndex` when it is not a well-formed index of this layer for this chunk size and image count
    (every field is type- and bounds-checked; the index is never trusted beyond what it can prove)."""
    path = folder / INDEX_NAME
    try:
        with _open_regular(path, DamagedIndex) as fh:
            ist = os.fstat(fh.fileno())
            size = ist.st_size
            if size > MAX_INDEX:
                raise DamagedIndex(f"larger than {MAX_INDEX} bytes")
            raw = fh.read(MAX_INDEX + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedIndex("a folder, not a file") from None
    except OSError as e:
        raise DamagedIndex(f"unreadable ({e.strerror or e})") from None
    if len(raw) > MAX_INDEX:
        raise DamagedIndex(f"larger than {MAX_INDEX} bytes")
    nl = raw.find(b"\n", 0, 4096)
    if nl < 0:
        raise DamagedIndex("no head line")
    body = memoryview(raw)[nl + 1:]
    n_chunks = (n_images + chunk - 1) // chunk if chunk > 0 else -1
    try:
        head = json.loads(raw[:nl])
        if type(head) is not dict or head.get("format") != INDEX_FORMAT:
            raise DamagedIndex(f"not a {INDEX_FORMAT} file")
        if head.get("layer") != layer or head.get("chunk") != chunk or head.get("n_images") != n_images \
                or head.get("n_chunks") != n_chunks:
            raise DamagedIndex("written for another layer, chunk size or image count")
        if zlib.crc32(body) != head.get("crc32"):
            raise DamagedIndex("checksum mismatch")
        rows = json.loads(bytes(body))
        if type(rows) is not list or len(rows) != n_chunks:
            raise DamagedIndex("wrong number of chunks")
        out = []
        for ci, e in enumerate(rows):
            if type(e) is not list or len(e) != 11:
                raise DamagedIndex("malformed entry")
            st = tuple(_int(x) for x in e[:4])
            sha, nr, nc = _str(e[4], 128), _int(e[5], 0, chunk), _int(e[6], 0, 1 << 31)
            dt = _BY_CODE.get(e[7]) if type(e[7]) is str else None
            if dt is None:
                raise DamagedIndex("unknown dtype")
            (crc, check), start = _parse_index_checksum(e[8]), _int(e[9], 8, 8 + MAX_HEADER)
            if type(e[10]) is not list or len(e[10]) > chunk:
                raise DamagedIndex("malformed skipped list")
            skipped = []
            for s in e[10]:
                if type(s) is not list or len(s) != 2:
                    raise DamagedIndex("malformed skipped list")
                skipped.append((_str(s[0]), _str(s[1], 1 << 16)))
            data_len = nr * nc * np.dtype(dt).itemsize
            if start + data_len != st[0]:
                raise DamagedIndex("sizes do not add up")
            p = folder / f"c-{ci:05d}.safetensors"
            out.append(ChunkHeader(p, sha, skipped, nr, nc, np.dtype(dt), crc, start, data_len, st, check))
        return ist.st_mtime_ns, out
    except DamagedIndex:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError) as e:
        raise DamagedIndex(f"unreadable ({type(e).__name__})") from None


def write_index(folder: Path, layer: str, chunk: int, n_images: int, headers: list[ChunkHeader]) -> None:
    atomic_write_bytes(folder / INDEX_NAME, encode_index(layer, chunk, n_images, headers))
