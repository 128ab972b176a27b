"""On-disk, content-addressed cache for features and reductions.

Layout: ``<cache_dir>/features/<key[:2]>/<key>/chunk-00000.npz ...`` where ``key`` hashes everything that
changes the numbers (model identity, dataset fingerprint, image selection, resolution, timestep, prompt,
seed, ensemble, pooling, compute dtype). A chunk holds a fixed run of images (all requested blocks
together, plus image ids and skipped files), so an extraction killed half way resumes with the missing
chunks only.

Safety and integrity: files are written to a temp name and renamed (atomic); they are read with
``allow_pickle=False`` (never unpickled); each holds a SHA-256 of its arrays, and a file that fails to
open, fails the digest or does not match the expected ids is treated as absent and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$DOMAINLENS_CACHE_DIR``, else ``~/.cache/domainlens``."""
    env = os.environ.get("DOMAINLENS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "domainlens"


def stable_hash(obj: Any, n: int = 24) -> str:
    """SHA-256 of a canonical JSON rendering."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays)
    payload["__digest__"] = np.array(_digest(arrays))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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

    def entry_dir(self, key: str) -> Path:
        return self.root / "features" / key[:2] / key

    def chunk_path(self, key: str, index: int) -> Path:
        return self.entry_dir(key) / f"chunk-{index:05d}.npz"

    def write_meta(self, key: str, meta: dict) -> None:
        d = self.entry_dir(key)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".meta-{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, d / "meta.json")

    def load_chunk(self, key: str, index: int, ids: list[str], blocks: list[str]) -> dict | None:
        """The chunk's arrays if it exists, is intact, covers exactly ``ids`` and holds every block."""
        arrays = safe_load_npz(self.chunk_path(key, index))
        if arrays is None:
            return None
        done = list(arrays.get("ids", np.array([], dtype=str))) + list(arrays.get("skipped_ids", []))
        if sorted(map(str, done)) != sorted(ids):
            return None
        if any(f"f:{b}" not in arrays for b in blocks):
            return None
        return arrays

    def save_chunk(self, key: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_save_npz(self.chunk_path(key, index), arrays)

    # --- reductions and other small results --------------------------------------------------
    def load_result(self, kind: str, key: str) -> dict[str, np.ndarray] | None:
        return safe_load_npz(self.root / kind / key[:2] / f"{key}.npz")

    def save_result(self, kind: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        atomic_save_npz(self.root / kind / key[:2] / f"{key}.npz", arrays)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.npz")) if self.root.exists() else 0
