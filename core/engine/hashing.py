"""Content addresses: the stable hash of a JSON-able object behind every cache key."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, n: int = 24) -> str:
    """SHA-256 of a canonical JSON rendering (sorted keys, no spaces), first ``n`` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]
