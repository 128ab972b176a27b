"""The chunk loop of an extraction: which chunks are missing, computing them (this process's share), and
reading a finished setting back one layer at a time.

What is cached is learnt from each layer's index file (``L-<layer>/index.json``, :mod:`core.engine.store`) when
it is present and its chunk files still have the stat it recorded, else from the chunk headers (and the index
is then rewritten as soon as the layer is complete).

A setting's images (in selection order) are cut into chunks of :attr:`FeatureCache.CHUNK`; chunk ``c`` of
layer ``L`` is one file (:mod:`core.engine.store`). Chunk boundaries never depend on batch size, process
count or shard, so any mix of runs (1 process, N ranks, Slurm array shards, a re-run after a kill) fills the
same files with the same bytes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from core.engine import buffers
from core.engine.cache import FeatureCache
from core.engine.store import (INDEX_NAME, STORAGE_DTYPES, CacheError, DamagedChunk, DamagedIndex, file_stat,
                               ids_digest, read_header, read_index, read_into, write_index)

logger = logging.getLogger(__name__)

# compute(chunk_index, records, layers, pool, progress_in_chunk) -> arrays as FeatureCache.save_chunk takes
READ_THREADS = max(1, min(8, int(os.environ.get("DOMAINLENS_READ_THREADS", 0)) or (os.cpu_count() or 1)))
_SLAB_BYTES = 128 << 20  # a float16 layer is staged this much at a time, then widened (fewer, larger widenings:
# after each one torch's OpenMP threads spin for a few ms, taking the cores from the reader threads)
_WIDEN_LOCK = threading.Lock()
ComputeFn = Callable[[int, Sequence, list, object, Callable[[int], None]], dict]


@dataclass
class ChunkPlan:
    cache: FeatureCache
    key: str
    records: Sequence  # ImageRecord, selection order
    blocks: list[str]
    storage: str = "float32"
    headers: dict = field(default_factory=dict)  # (block, chunk) -> ChunkHeader of an intact, matching file
    memo: dict = field(default_factory=dict)  # values derived from ``records`` (kept per selection by the caller)

    def __post_init__(self):
        if self.storage not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be one of {list(STORAGE_DTYPES)}, got {self.storage!r}")
        self.chunk = self.cache.CHUNK

    @property
    def n_chunks(self) -> int:
        return (len(self.records) + self.chunk - 1) // self.chunk

    def chunk_records(self, ci: int) -> Sequence:
        return self.records[ci * self.chunk:(ci + 1) * self.chunk]

    # ------------------------------------------------------------------------------ what is missing
    def _header(self, block: str, ci: int, sha: str):
        path = self.cache.layer_chunk_path(self.key, block, ci)
        try:
            h = read_header(path)
        except DamagedChunk as e:
            logger.warning("cache file %s is damaged (%s); recomputing", path, e)
            return None
        except OSError as e:
            logger.warning("cache file %s cannot be read (%s); recomputing", path, e)
            return None
        if h is None:
            return None
        if h.ids_sha != sha:
            logger.warning("cache file %s is for other images; recomputing", path)
            return None
        return h

    def layer_folder(self, block: str):
        return self.cache.layer_chunk_path(self.key, block, 0).parent

    def _indexed(self, block: str) -> dict:
        """{chunk: header} that the layer's index vouches for: entries whose file has the stat recorded."""
        folder = self.layer_folder(block)
        try:
            idx = read_index(folder, block, self.chunk, len(self.records))
        except DamagedIndex as e:
            logger.warning("layer index %s is ignored (%s); reading the chunk headers instead", folder / INDEX_NAME, e)
            return {}
        except OSError:
            return {}
        if idx is None:
            return {}
        written, hs = idx
        out = {}
        for ci, h in enumerate(hs):
            if h.stat[1] >= written or h.stat[2] >= written:
                continue  # changed in the tick the index was written in? (racily clean): read its header
            try:
                if file_stat(os.stat(h.path)) == h.stat:
                    out[ci] = h
            except OSError:  # deleted (or unreadable): its header is looked at below
                pass
        return out

    def missing(self, chunks: Sequence[int], blocks: Sequence[str] | None = None) -> dict[int, list[str]]:
        """{chunk: layers without an intact file} for ``chunks`` (the layer index or headers only: no feature bytes
        are read)."""
        blocks = list(blocks or self.blocks)
        indexed = {b: self._indexed(b) for b in blocks}
        out = {}
        for ci in chunks:
            hs = {b: indexed[b].get(ci) for b in blocks}
            if any(h is None for h in hs.values()):
                recs = self.chunk_records(ci)
                sha = ids_digest([r.id for r in recs])
                hs = {b: h or self._header(b, ci, sha) for b, h in hs.items()}
                if any(h is None for h in hs.values()) and self._convert_legacy(ci, recs, [b for b, h in hs.items()
                                                                                         if h is None]):
                    hs = {b: h or self._header(b, ci, sha) for b, h in hs.items()}
            present = [h for h in hs.values() if h is not None]
            if len({tuple(h.skipped) for h in present}) > 1:  # layers disagree on which images were readable
                logger.warning("chunk %d of %s: layers disagree on skipped images; recomputing", ci, self.key)
                hs = {b: None for b in hs}
            for b, h in hs.items():
                if h is not None:
                    self.headers[(b, ci)] = h
                if h is not indexed[b].get(ci):
                    indexed[b].pop(ci, None)  # the index does not hold what is there now
            lacking = [b for b, h in hs.items() if h is None]
            if lacking:
                out[ci] = lacking
        for b in blocks:
            if len(indexed[b]) < self.n_chunks:
                self.write_index(b)
        return out

    def write_index(self, block: str) -> bool:
        """Write the layer's index when every chunk of it is known to be present and intact (headers read by
        this process); returns whether it was written. Never fails the caller (a read-only cache has none)."""
        hs = [self.headers.get((block, ci)) for ci in range(self.n_chunks)]
        if not hs or any(h is None or not h.stat for h in hs):
            return False
        try:
            write_index(self.layer_folder(block), block, self.chunk, len(self.records), hs)
        except OSError as e:
            logger.info("layer index of %s not written (%s)", self.layer_folder(block), e)
            return False
        return True

    def _convert_legacy(self, ci, recs, blocks) -> bool:
        """A valid pre-per-layer npz chunk becomes per-layer files (no model run)."""
        if self.storage != "float32" or not self.cache.chunk_path(self.key, ci).is_file():
            return False
        arrays = self.cache.load_chunk(self.key, ci, [r.id for r in recs], blocks)
        if arrays is None:
            return False
        keep = {k: v for k, v in arrays.items() if not k.startswith("f:") or k[2:] in blocks}
        try:
            self.cache.save_chunk(self.key, ci, keep, self.storage, [r.id for r in recs])
        except CacheError as e:
            logger.warning("old-format chunk %d cannot be converted (%s); it is recomputed", ci, e)
            return False
        return True

    # ---------------------------------------------------------------------------------- computing
    def run(self, todo: dict[int, list[str]], compute: ComputeFn, progress=None, workers: int = 0,
            load_fn=None, total: int | None = None, done0: int = 0, pin_memory: bool = False, profile=None,
            background_writes: bool = True) -> int:
        """Compute and store the missing layers of the chunks in ``todo`` (in chunk order); returns the number
        of images that went through the model. ``load_fn(records)`` (decode + preprocess, as the engine does)
        runs in ``workers`` DataLoader worker processes ahead of the model when ``workers > 0``. With
        ``background_writes`` a chunk's files are written (and read back) by one writer thread while the next
        chunk is computed; at most one chunk waits to be written, a write error stops the loop at the next chunk,
        and the call returns only once every chunk is on disk. ``profile`` (:class:`core.engine.profile.StageTimes`)
        gets the time spent waiting for decoded images and writing."""
        from core.engine.loader import prefetched_chunks

        order = sorted(todo)
        total = total if total is not None else sum(len(self.chunk_records(ci)) for ci in order)
        done = [done0]
        n_model = 0

        def store(ci, recs, arrays):
            t0 = time.perf_counter()
            self.cache.save_chunk(self.key, ci, arrays, self.storage, [r.id for r in recs])
            sha = ids_digest([r.id for r in recs])
            for b in todo[ci]:
                h = self._header(b, ci, sha)
                if h is None:
                    raise CacheError(5, f"a chunk just written to {self.cache.root} does not read back: "
                                        "is the cache folder on a failing or full disk?")
                self.headers[(b, ci)] = h
            if profile is not None:
                profile.add("write", time.perf_counter() - t0)

        pending = None
        with ThreadPoolExecutor(max_workers=4) as pool, ThreadPoolExecutor(max_workers=1) as writer:
            try:
                chunks = iter(prefetched_chunks(order, self.chunk_records, load_fn, workers, pin_memory))
                while True:
                    t0 = time.perf_counter()
                    nxt = next(chunks, None)
                    if nxt is None:
                        break
                    ci, pre = nxt
                    if profile is not None and pre is not None:
                        profile.add("waiting for images", time.perf_counter() - t0)
                    recs = self.chunk_records(ci)
                    arrays = compute(ci, recs, todo[ci], pre if pre is not None else pool,
                                     lambda k: progress(done[0] + k, total) if progress else None)
                    if pending is not None:
                        pending.result()  # the previous chunk is on disk (or its error is raised here)
                        pending = None
                    if background_writes:
                        pending = writer.submit(store, ci, recs, arrays)
                    else:
                        store(ci, recs, arrays)
                    n_model += len(arrays["ids"])
                    done[0] += len(recs)
                    if progress:
                        progress(done[0], total)
                if pending is not None:
                    pending.result()
            finally:
                if pending is not None:  # an error above: let the write in flight finish (never leave it running)
                    pending.exception()
        for b in dict.fromkeys(b for ci in order for b in todo[ci]):
            self.write_index(b)
        return n_model

    # ----------------------------------------------------------------------------------- reading
    def read_layer(self, block: str, repair: Callable[[int, str], None] | None = None,
                   threads: int | None = None) -> np.ndarray:
        """One layer of every chunk, streamed into one (n_readable_images, channels) float32 array (read in the
        stored dtype, so a float16 setting reads half the bytes); a chunk that fails its checksum is recomputed
        through ``repair`` (or raises).

        Chunks are read by ``threads`` threads (default :data:`READ_THREADS`: one per core) with positioned reads
        straight into disjoint row ranges of the output; file reads and the checksum (XXH3-64, or CRC-32 for
        older chunks) release the GIL. A float16 layer is read a slab (:data:`_SLAB_BYTES`) at a time into a
        staging buffer, then widened to float32 by torch over the whole slab (:func:`_widen`). The output comes
        from :mod:`core.engine.buffers` (memory a previous read's array no longer uses). Bit-identical to
        ``threads=1``."""
        hs = [self.headers[(block, ci)] for ci in range(self.n_chunks)]
        cols = max((h.n_cols for h in hs if h.n_rows), default=0)
        stored = np.dtype(STORAGE_DTYPES[self.storage][1])
        starts = [int(x) for x in np.cumsum([0] + [h.n_rows for h in hs])]
        out = buffers.take((starts[-1], cols), np.float32)
        todo = [ci for ci, h in enumerate(hs) if h.n_rows]
        threads = READ_THREADS if threads is None else max(1, int(threads))
        pool = ThreadPoolExecutor(max_workers=min(threads, len(todo))) if threads > 1 and len(todo) > 1 else None

        def one(item: tuple[int, np.ndarray]) -> tuple[int, DamagedChunk] | None:
            ci, dest = item
            try:
                if hs[ci].n_cols != cols or hs[ci].dtype != stored:
                    raise DamagedChunk("shape or dtype differs from the other chunks")
                read_into(hs[ci], dest)
                return None
            except DamagedChunk as e:
                return ci, e

        def read(items: list) -> list[tuple[int, DamagedChunk]]:
            return [f for f in (pool.map(one, items) if pool else map(one, items)) if f is not None]

        try:
            if stored == out.dtype:
                failed = read([(ci, out[starts[ci]:starts[ci + 1]]) for ci in todo])
            else:
                failed = []
                for part in _slabs(todo, starts, max(1, _SLAB_BYTES // max(1, cols * stored.itemsize))):
                    first, last = starts[part[0]], starts[part[-1] + 1]
                    stage = buffers.take((last - first, cols), stored)
                    failed += read([(ci, stage[starts[ci] - first:starts[ci + 1] - first]) for ci in part])
                    _widen(stage, out[first:last])  # a failed chunk's rows are overwritten below
                    del stage
        finally:
            if pool:
                pool.shutdown()
        for ci, e in failed:  # recomputed one by one in this thread (the model is not thread-safe)
            h = hs[ci]
            if repair is None:
                raise CacheError(5, f"cache file {h.path} is damaged ({e}); run the extraction again")
            logger.warning("cache file %s is damaged (%s); recomputing", h.path, e)
            repair(ci, block)
            h2 = hs[ci] = self.headers[(block, ci)]
            if h2.n_rows != h.n_rows or h2.n_cols != cols:
                raise CacheError(5, f"recomputed chunk {h.path} has another shape; clear the cache entry")
            buf = np.empty((h2.n_rows, cols), stored)
            if one((ci, buf)) is not None:
                raise CacheError(5, f"recomputed chunk {h.path} is damaged again; clear the cache entry")
            _widen(buf, out[starts[ci]:starts[ci + 1]])
        return out

    def kept_records(self) -> list:
        """Records of the readable images (every chunk's skipped ones left out), in order."""
        first = self.blocks[0]
        skipped = {i for ci in range(self.n_chunks) for i, _ in self.headers[(first, ci)].skipped}
        return [r for r in self.records if r.id not in skipped] if skipped else list(self.records)

    def skipped(self) -> list[tuple[str, str]]:
        first = self.blocks[0]
        return [tuple(s) for ci in range(self.n_chunks) for s in self.headers[(first, ci)].skipped]


def _slabs(todo: list[int], starts: list[int], max_rows: int) -> list[list[int]]:
    """``todo`` (chunk indices, ascending) cut into runs of at most ``max_rows`` rows (a chunk larger than that
    is a run of its own)."""
    runs: list[list[int]] = []
    for ci in todo:
        if runs and starts[ci + 1] - starts[runs[-1][0]] <= max_rows:
            runs[-1].append(ci)
        else:
            runs.append([ci])
    return runs


def _widen(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` (float16 -> float32 or a plain copy, exact). torch's conversion is vectorised and
    uses its intra-op threads (~7 GB/s of float16 per core here, numpy's ~1.2 GB/s); numpy when torch is not
    importable. One conversion at a time in the process (:data:`_WIDEN_LOCK`): two threads entering torch's
    thread team at once spin against each other (20x slower measured on 2 cores), and the copy is bound by memory
    anyway."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the engine
        np.copyto(dst, src)
        return
    with _WIDEN_LOCK:
        torch.from_numpy(dst).copy_(torch.from_numpy(src))


class LayerFeatures(Mapping):
    """``FeatureSet.features``: block -> (n_images, channels) float32, read from the cache on first access (one
    layer's files only) and kept while the layers kept stay within a memory budget (:func:`kept_bytes_budget`):
    past it the least recently used layers are let go (a caller holding one keeps it; asking again re-reads
    it, into memory :mod:`core.engine.buffers` took back). So going through every block of a DomainNet-sized
    setting (nine SD blocks: ~16 GB of float32) holds a few layers at a time, not all of them; the most recent
    layer is always kept."""

    def __init__(self, plan: ChunkPlan, repair: Callable[[int, str], None] | None = None,
                 budget: int | None = None):
        self._plan = plan
        self._repair = repair
        self._budget = kept_bytes_budget() if budget is None else int(budget)
        self._loaded: dict[str, np.ndarray] = {}  # least recently used first

    def __getitem__(self, block: str) -> np.ndarray:
        if block not in self._plan.blocks:
            raise KeyError(block)
        x = self._loaded.pop(block, None)
        if x is None:
            x = self._plan.read_layer(block, self._repair)
        self._loaded[block] = x
        held = sum(a.nbytes for a in self._loaded.values())
        while held > self._budget and len(self._loaded) > 1:
            held -= self._loaded.pop(next(iter(self._loaded))).nbytes
        return x

    def __contains__(self, block) -> bool:  # Mapping's default would read the layer
        return block in self._plan.blocks

    def __iter__(self):
        return iter(self._plan.blocks)

    def __len__(self) -> int:
        return len(self._plan.blocks)

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def __repr__(self) -> str:
        return f"LayerFeatures({self._plan.blocks}, loaded={self.loaded()})"


def kept_bytes_budget() -> int:
    """Bytes of layers a :class:`LayerFeatures` keeps: ``$DOMAINLENS_LAYER_MEMORY_MB`` MiB, else a quarter of
    physical memory."""
    return buffers.memory_setting("DOMAINLENS_LAYER_MEMORY_MB", 1 / 4)


def split_evenly(items: Sequence, part: int, parts: int) -> list:
    """The ``part``-th of ``parts`` contiguous, near-equal slices of ``items`` (no padding, no duplicates)."""
    n = len(items)
    return list(items[part * n // parts:(part + 1) * n // parts])
