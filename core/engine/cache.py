"""On-disk, content-addressed cache for features and reductions.

Features: ``<cache_dir>/features/<key[:2]>/<key>/L-<layer>/c-00000.safetensors ...`` (see
:mod:`core.engine.store` for the file format and why), where ``key`` hashes everything that changes the
numbers (model identity, dataset fingerprint, image selection, resolution, timestep, prompt, seed, ensemble,
pooling, compute dtype, and the storage dtype when it is not float32). A chunk is a fixed run of
:attr:`FeatureCache.CHUNK` images of one layer, so reading one layer touches no other layer's files, and an
extraction killed half way (or one rank of many) resumes with the missing chunks only.

Caches written before per-layer storage (``<key>/chunk-00000.npz``, all layers in one file) are still read:
a valid old chunk is converted to per-layer files on first use (no model run); when the cache is read-only
the old chunk is recomputed instead (and the write fails with a message).

Results (reductions, scores): ``<cache_dir>/<kind>/<key[:2]>/<key>.npz``.

Safety and integrity: files are written to a temp name and renamed (atomic); nothing is ever unpickled
(npz with ``allow_pickle=False``, safetensors); each file holds a checksum, and a file that fails to open,
fails its checksum or does not match the expected ids is treated as absent and recomputed. Reading never
needs write access. A full disk raises :class:`core.engine.store.CacheError` naming the fix and leaves no
partial file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from core.engine.hashing import stable_hash  # noqa: F401 - the cache key function, kept importable here
from core.engine.store import CacheError, FILE_MODE, atomic_write_bytes, ensure_folder

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DOMAINLENS_CACHE_DIR``, else ``~/.cache/domainlens``."""
    env = os.environ.get("DOMAINLENS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "domainlens"


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays (plus their digest) to ``path`` via a temp file and rename."""
    ensure_folder(path.parent)
    payload = dict(arrays)
    payload["__digest__"] = np.array(_digest(arrays))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            from core.engine.store import _disk_error

            raise _disk_error(e, path) from None
        raise


def safe_load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Load arrays written by :func:`atomic_save_npz`; ``None`` when absent or damaged (never unpickles)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    # RuntimeError (incl. NotImplementedError): zipfile's answer to a damaged header byte
    # ("compression method not supported", "file is encrypted")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as e:
        logger.warning("cache file %s is damaged (%s); recomputing", path, e)
        return None
    stored = arrays.pop("__digest__", None)
    if stored is None or str(stored) != _digest(arrays):
        logger.warning("cache file %s fails its integrity check; recomputing", path)
        return None
    return arrays


class FeatureCache:
    """Chunks of features under one cache folder."""

    CHUNK = 256  # images per chunk; fixed so that chunk boundaries never depend on batch size

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else default_cache_dir()
        if os.environ.get("DOMAINLENS_CHUNK_IMAGES"):  # tests and benchmarks: small chunks for many processes
            self.CHUNK = int(os.environ["DOMAINLENS_CHUNK_IMAGES"])
        if self.root.exists() and not self.root.is_dir():
            raise CacheError(20, f"cannot use {self.root} as a cache folder: it is a file, not a folder; pass "
                                 "another --cache-dir (or DOMAINLENS_CACHE_DIR)")

    def entry_dir(self, key: str) -> Path:
        return self.root / "features" / key[:2] / key

    def layer_chunk_path(self, key: str, layer: str, index: int) -> Path:
        from core.engine.store import layer_dirname

        return self.entry_dir(key) / layer_dirname(layer) / f"c-{index:05d}.safetensors"

    def chunk_path(self, key: str, index: int) -> Path:
        """The pre-per-layer (legacy) chunk file: all layers of a run of images in one npz."""
        return self.entry_dir(key) / f"chunk-{index:05d}.npz"

    def write_meta(self, key: str, meta: dict) -> None:
        """Describe a setting (for ``python -m core cache list``). Written only by a process that computes
        something, and skipped with a warning when the folder is not writable: reading never needs it."""
        p = self.entry_dir(key) / "meta.json"
        meta = dict(meta, written=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:  # a regular file holding a JSON object, else it is replaced (never blocks on a FIFO)
            from core.safeio import read_json_object

            old = read_json_object(p, 1 << 20, "setting description (meta.json)")
            if {k: v for k, v in old.items() if k != "written"} == {k: v for k, v in meta.items() if k != "written"}:
                return
        except (OSError, ValueError):
            pass
        try:
            atomic_write_bytes(p, json.dumps(meta, indent=1, sort_keys=True).encode())
        except CacheError as e:
            if e.errno == errno.ENOSPC:
                raise
            logger.warning("%s", e)

    def load_chunk(self, key: str, index: int, ids: list[str], blocks: list[str]) -> dict | None:
        """A legacy npz chunk's arrays if it exists, is intact, covers exactly ``ids`` and holds every block."""
        arrays = safe_load_npz(self.chunk_path(key, index))
        if arrays is None:
            return None
        done = list(arrays.get("ids", np.array([], dtype=str))) + list(arrays.get("skipped_ids", []))
        if sorted(map(str, done)) != sorted(ids):
            return None
        if any(f"f:{b}" not in arrays for b in blocks):
            return None
        return arrays

    def save_chunk(self, key: str, index: int, arrays: dict[str, np.ndarray], storage: str = "float32",
                   asked_ids: list[str] | None = None) -> None:
        """Store a computed chunk (``ids``, ``skipped_ids``, ``skipped_reasons``, ``f:<layer>``...) as one file per
        layer; ``ids`` + ``skipped_ids`` are the images the chunk was asked for, in order."""
        from core.engine.store import encode_chunk, ids_digest

        if asked_ids is None:  # the images the chunk was asked for, in selection order
            asked_ids = [str(i) for i in arrays["ids"]] + [str(i) for i in arrays["skipped_ids"]]
        sha = ids_digest(asked_ids)
        skipped = list(zip(map(str, arrays["skipped_ids"]), map(str, arrays["skipped_reasons"])))
        for k, v in arrays.items():
            if k.startswith("f:"):
                layer = k[2:]
                atomic_write_bytes(self.layer_chunk_path(key, layer, index),
                                   encode_chunk(v, sha, skipped, storage, layer))

    # --- reductions and other small results --------------------------------------------------
    def load_result(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        return safe_load_npz(self.root / kind / key[:2] / f"{key}.npz")

    def save_result(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store a small result; on a read-only cache it is kept in memory only (a warning, not an error)."""
        try:
            atomic_save_npz(self.root / kind / key[:2] / f"{key}.npz", arrays)
        except CacheError as e:
            if e.errno == errno.ENOSPC:
                raise
            logger.warning("%s", e)

    def size_bytes(self) -> int:
        if not self.root.exists():
            return 0
        return sum(p.stat().st_size for pat in ("*.npz", "*.safetensors") for p in self.root.rglob(pat))
