"""The one-layer read's memory (core.engine.buffers) and its float16 slabs: a pooled buffer is handed out again only
once no array, view or export can see it; the pool keeps to its bound; a read into reused memory is exactly a read
into fresh memory; a float16 layer widened slab by slab (and repaired inside a slab) is bit-identical to widening
each chunk on its own."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

import core.engine.chunks as chunks
from core.engine import buffers
from core.engine.store import read_chunk
from tests.test_index import COLS, Compute, _flip_data, extract, features, records


@pytest.fixture()
def pool(monkeypatch):
    """The pool with every size pooled (the real floor is 8 MiB) and a 1 MiB bound, emptied before and after."""
    monkeypatch.setattr(buffers, "MIN_BYTES", 0)
    monkeypatch.setenv("DOMAINLENS_READ_POOL_MB", "1")
    buffers.clear()
    yield buffers
    buffers.clear()


@pytest.mark.parametrize("hold", [lambda a: a[10:][::2], lambda a: memoryview(a[5:]),
                                  lambda a: torch.from_numpy(a[:3]), lambda a: a.reshape(-1)[7:].view(np.uint8)],
                         ids=["view of a view", "memoryview", "torch tensor", "reshaped byte view"])
def test_a_buffer_is_reused_only_when_nothing_can_see_it(pool, hold):
    a = pool.take((100, 64), np.float32)
    first = a.__array_interface__["data"][0]
    holder = hold(a)
    del a
    b = pool.take((100, 64), np.float32)  # the holder alone keeps the first buffer busy
    assert b.__array_interface__["data"][0] != first
    del holder
    gc.collect()
    c = pool.take((100, 64), np.float32)  # b is alive: only the first buffer is free
    assert c.__array_interface__["data"][0] == first and not np.shares_memory(b, c)


def test_the_pool_keeps_to_its_bound_and_can_be_turned_off(pool, monkeypatch):
    big = [pool.take((256, 256), np.float32) for _ in range(6)]  # 6 x 256 KiB against a 1 MiB bound
    held, _ = pool.held_bytes()
    assert held <= 1 << 20 and len(pool._OWNERS) <= pool.MAX_BUFFERS
    assert all(x.shape == (256, 256) and x.dtype == np.float32 for x in big)
    ptrs = {x.__array_interface__["data"][0] for x in big}
    assert len(ptrs) == 6  # never the same memory twice while in use
    monkeypatch.setenv("DOMAINLENS_READ_POOL_MB", "0")
    del big
    pool.clear()
    pool.take((256, 256), np.float32)
    assert pool.held_bytes() == (0, 0)
    monkeypatch.setenv("DOMAINLENS_READ_POOL_MB", "lots")
    with pytest.raises(ValueError, match="DOMAINLENS_READ_POOL_MB must be a whole number of MiB"):
        pool.take((256, 256), np.float32)


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_reads_into_reused_memory_equal_fresh_reads_and_never_alias(tmp_path, pool, storage):
    p, _ = extract(tmp_path, n=37, storage=storage)
    a1 = p.read_layer("a")
    a2 = p.read_layer("a")  # a1 is alive: other memory
    assert not np.shares_memory(a1, a2) and a1.tobytes() == a2.tobytes()
    ptr = a1.__array_interface__["data"][0]
    a1[:] = np.nan  # what a user's code may do to its copy
    del a1
    b = p.read_layer("b")  # a smaller layer may take a1's memory (at most twice its size is reused)
    a3 = p.read_layer("a")
    assert a3.tobytes() == a2.tobytes()
    np.testing.assert_array_equal(b, features(records(37), "b").astype(storage).astype(np.float32))
    assert ptr in {x.__array_interface__["data"][0] for x in (b, a3)}  # the memory was reused, and overwritten


def test_float16_slabs_widen_exactly_and_repair_inside_a_slab(tmp_path, pool, monkeypatch):
    p, _ = extract(tmp_path, n=37, storage="float16")  # 10 chunks of 4 rows, the last one 1 row
    monkeypatch.setattr(chunks, "_SLAB_BYTES", 3 * 4 * COLS["a"] * 2 + 5)  # 3 chunks a slab, not a row multiple
    assert chunks._slabs(list(range(10)), [min(4 * i, 37) for i in range(11)], 12) == [[0, 1, 2], [3, 4, 5],
                                                                                      [6, 7, 8], [9]]
    ref = np.concatenate([read_chunk(p.cache.layer_chunk_path(p.key, "a", ci))[1] for ci in range(p.n_chunks)])
    got = p.read_layer("a", threads=2)
    assert got.dtype == np.float32 and got.tobytes() == ref.astype(np.float32).tobytes()
    _flip_data(p.cache.layer_chunk_path(p.key, "a", 4))  # the middle of the second slab
    fixed = []
    again = p.read_layer("a", repair=lambda ci, b: fixed.append(ci) or p.run({ci: [b]}, Compute()), threads=2)
    assert fixed == [4] and again.tobytes() == got.tobytes()
