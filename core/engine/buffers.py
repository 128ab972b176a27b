"""Host memory for layer reads, recycled: a small pool of large buffers that a finished read's array returns to
once nothing refers to it any more.

Why: a one-layer read writes its whole size into memory the process has not touched yet, and fresh memory is
not free. The kernel zeroes every new page first, and on a virtual machine that hands freed memory back to its
host (free page reporting, as on the Firecracker machines this project runs on) the host faults each page in
again. Measured here (bench 17): a float32 layer read into fresh memory ran at ~0.44x the raw read of its files;
the same read into memory the process had used before ran at ~0.69x. Moving the layer slider reads layer after
layer of the same size, so the previous layer's memory is what the next read wants.

How it stays safe: the pool owns each buffer (a 1-D ``uint8`` array) and hands out views of it. A view, any
view of that view and anything exporting its memory (``memoryview``, ``torch.from_numpy``) keeps a reference to
the owning array, so an owner is free exactly when only the pool refers to it (CPython's reference count; see
:func:`_free`). A buffer is never handed out twice while any array can still see it.

Bounded: the pool keeps at most :data:`MAX_BUFFERS` buffers and :func:`pool_limit` bytes in all (an eighth of
physical memory, at most 4 GiB; ``DOMAINLENS_READ_POOL_MB`` sets it, 0 turns the pool off); a request it cannot
serve within the bound is plain fresh memory. Reads small enough that fresh memory costs little
(:data:`MIN_BYTES`) never use it.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

MIN_BYTES = 8 << 20  # below this, fresh memory is cheap and reuse not worth holding on to
MAX_BUFFERS = 4
_LOCK = threading.Lock()
_OWNERS: list[np.ndarray] = []  # the pool's buffers, most recently handed out last


def memory_setting(env: str, fraction: float, cap: int | None = None) -> int:
    """A memory bound in bytes: ``$<env>`` MiB when set (0 allowed; anything else is an error naming the
    variable), else ``fraction`` of physical memory, at most ``cap``."""
    text = os.environ.get(env, "").strip()
    if text:
        try:
            return max(0, int(text)) << 20
        except ValueError:
            raise ValueError(f"{env} must be a whole number of MiB, got {text!r}") from None
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        phys = 8 << 30
    out = int(phys * fraction)
    return out if cap is None else min(out, cap)


def pool_limit() -> int:
    """Bytes the pool may hold: ``$DOMAINLENS_READ_POOL_MB`` MiB, else an eighth of physical memory (at most
    4 GiB)."""
    return memory_setting("DOMAINLENS_READ_POOL_MB", 1 / 8, 4 << 30)


def _free(i: int) -> bool:
    """Whether pool buffer ``i`` is free: only the pool's list refers to it. ``getrefcount`` counts the list and
    its own argument; a view (of a view ...) refers to the owner directly (numpy collapses ``base`` to the array
    that owns the memory), and so does any buffer export. Index-based, so no local name adds a reference."""
    return sys.getrefcount(_OWNERS[i]) <= 2


def take(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``: a view of a free pool buffer when one is
    large enough (and not more than twice the size), else a new buffer the pool keeps when the bound allows,
    else plain fresh memory. The contents are whatever the memory held before: write every element."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    limit = pool_limit()
    if nbytes < MIN_BYTES or nbytes > limit:
        return np.empty(shape, dtype)
    with _LOCK:
        fits = [i for i in range(len(_OWNERS)) if nbytes <= _OWNERS[i].nbytes <= 2 * nbytes and _free(i)]
        if fits:
            owner = _OWNERS.pop(min(fits, key=lambda i: _OWNERS[i].nbytes))
        else:  # make room: drop free buffers, oldest first, until a new one fits the bound
            i = 0
            while i < len(_OWNERS) and (sum(o.nbytes for o in _OWNERS) + nbytes > limit
                                        or len(_OWNERS) >= MAX_BUFFERS):
                if _free(i):
                    del _OWNERS[i]
                else:
                    i += 1
            if sum(o.nbytes for o in _OWNERS) + nbytes > limit or len(_OWNERS) >= MAX_BUFFERS:
                return np.empty(shape, dtype)  # the pooled buffers are in use: this one is not pooled
            owner = np.empty(nbytes, np.uint8)
        _OWNERS.append(owner)
        return owner[:nbytes].view(dtype).reshape(shape)


def held_bytes() -> tuple[int, int]:
    """(bytes the pool holds, of which free)."""
    with _LOCK:
        return sum(o.nbytes for o in _OWNERS), sum(_OWNERS[i].nbytes for i in range(len(_OWNERS)) if _free(i))


def clear() -> None:
    """Drop every free buffer (buffers still in use leave the pool and are freed with their last array)."""
    with _LOCK:
        _OWNERS.clear()
