"""Image decoding ahead of the model: a torch DataLoader whose items are whole chunks.

Each item is one chunk's images, decoded and preprocessed in a worker process exactly as the engine does in
process (the same function), so features do not depend on the worker count. Memory is bounded: at most
``workers * prefetch`` chunks are decoded ahead (2 per worker by default); on CUDA the pixels come in pinned
memory for an asynchronous host-to-device copy.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Iterator, Sequence

from core.data.images import UnreadableImage, load_rgb


def load_pixels(model, records: Sequence, resolution: int, pool) -> list:
    """[(pixels (3, R, R) | None, error | None, (decode seconds, resize seconds))] for ``records``: each image
    decoded (:func:`core.data.images.load_rgb`) and preprocessed by the backbone, mapped over ``pool`` (a thread
    pool in process, :class:`_Serial` in a DataLoader worker): the one decoder, so features never depend on it."""
    def one(r):
        t0 = time.perf_counter()
        try:
            im = load_rgb(r.path)
            t1 = time.perf_counter()
            return model.preprocess(im, resolution), None, (t1 - t0, time.perf_counter() - t1)
        except UnreadableImage as e:
            return None, str(e), (time.perf_counter() - t0, 0.0)

    return list(pool.map(one, records))


class _Serial:
    """The ``pool`` argument of the engine's loader, run in the calling (worker) process."""

    @staticmethod
    def map(fn, items):
        return list(map(fn, items))


class Prefetched:
    """A chunk decoded by a worker, handed to the engine in place of its thread pool: ``map(fn, records)``
    returns what the worker computed for those records (the same function the pool would have run)."""

    def __init__(self, loaded: list):
        self.loaded = loaded

    def map(self, fn, records):
        if len(records) != len(self.loaded):
            raise RuntimeError("prefetched chunk does not match its records")
        return self.loaded


def decode_chunk(records: Sequence, model, resolution: int) -> list:
    """[(pixels (3, R, R) float tensor | None, error | None)] for ``records`` (the engine's own decoder, i.e.
    the backbone's ``preprocess``)."""
    return load_pixels(model, records, resolution, _Serial())


class _Chunks:
    def __init__(self, order: Sequence[int], chunk_records: Callable[[int], Sequence], load_fn):
        self.order = list(order)
        self.recs = [list(chunk_records(ci)) for ci in self.order]
        self.load_fn = load_fn

    def __len__(self):
        return len(self.order)

    def __getitem__(self, i):
        return self.order[i], self.load_fn(self.recs[i])


def _first(batch):
    return batch[0]


PREFETCH = 2  # chunks each DataLoader worker decodes ahead


def prefetched_chunks(order: Sequence[int], chunk_records: Callable[[int], Sequence], load_fn=None,
                      workers: int = 0, pin_memory: bool = False, prefetch: int = PREFETCH
                      ) -> Iterator[tuple[int, Prefetched | None]]:
    """(chunk index, decoded chunk or None) in ``order``; None (decode in process) when ``workers == 0``."""
    if workers <= 0 or load_fn is None or not order:
        for ci in order:
            yield ci, None
        return
    from torch.utils.data import DataLoader

    dl = DataLoader(_Chunks(order, chunk_records, load_fn), batch_size=1, shuffle=False,
                    num_workers=min(workers, len(order)), collate_fn=_first, pin_memory=pin_memory,
                    prefetch_factor=prefetch, persistent_workers=False)
    for ci, loaded in dl:
        yield ci, Prefetched(loaded)


def chunk_decoder(model, resolution: int) -> Callable[[Sequence], list]:
    """Workers are forked (Linux), so the backbone is inherited, not pickled."""
    return functools.partial(decode_chunk, model=model, resolution=resolution)
