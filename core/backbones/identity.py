"""A model folder's identity: the hash of its weight, config and tokenizer files (content, not path), with a
memo of per-file SHA-256s keyed by path, size and mtime so that a warm lookup reads no weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from core.safeio import MiB, read_json_object


def _hash_memo_path() -> Path:
    """Read at call time (not import time), so DOMAINLENS_CACHE_DIR set after import is honoured."""
    return Path(os.environ.get("DOMAINLENS_CACHE_DIR", Path.home() / ".cache" / "domainlens")) / "weight-hashes.json"


def _file_sha256(path: Path) -> str:
    memo_path = _hash_memo_path()
    st = path.stat()
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo: dict[str, str] = {}
    try:  # a memo that is not a regular, small JSON file is ignored (and rewritten)
        memo = read_json_object(memo_path, 64 * MiB, "weight-hash memo", max_depth=2)
    except (OSError, ValueError):
        pass
    if memo_key in memo:
        return memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    memo[memo_key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return digest


def folder_identity(folder: str | os.PathLike) -> str:
    """Hash of every weight, config and tokenizer file in a model folder (content, not path)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in {".safetensors", ".json", ".txt", ".model"} and not p.name.startswith("."):
            if p.name in {"training_log.json"}:
                continue
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(_file_sha256(p).encode())
    return h.hexdigest()[:20]
