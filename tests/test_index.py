"""The per-layer index of the feature cache (``L-<layer>/index.json``): written when a layer is complete, used
instead of the chunk headers, never trusted when a chunk changed after it or when it is damaged; and the
threaded one-layer read. Most tests drive :class:`ChunkPlan` with a stand-in compute (no model: fast)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import numpy as np
import pytest

import core.engine.chunks as chunks
import core.engine.store as store
from core.cli import main as cli_main
from core.data.datasets import ImageRecord
from core.engine.cache import FeatureCache
from core.engine.chunks import ChunkPlan
from core.engine.distributed import Split
from core.engine.store import INDEX_NAME, read_chunk

BLOCKS = ["a", "b"]
COLS = {"a": 6, "b": 3}


def records(n=20):
    return [ImageRecord(f"d{i % 2}/c/{i:04d}.jpg", f"/nowhere/{i}.jpg", f"d{i % 2}", "c") for i in range(n)]


def features(recs, block):
    """Deterministic per-image features (so a recomputed chunk equals the first one)."""
    x = np.array([[int(r.id[-8:-4]) * 10 + j + COLS[block] for j in range(COLS[block])] for r in recs], np.float32)
    return x / 7.0


class Compute:
    def __init__(self):
        self.images = 0

    def __call__(self, ci, recs, blocks, pool, progress):
        self.images += len(recs)
        return {"ids": np.array([r.id for r in recs]), "skipped_ids": np.array([], dtype=str),
                "skipped_reasons": np.array([], dtype=str), **{f"f:{b}": features(recs, b) for b in blocks}}


def plan(root, n=20, storage="float32", blocks=BLOCKS):
    cache = FeatureCache(root)
    cache.CHUNK = 4
    return ChunkPlan(cache, "ab" * 16, records(n), list(blocks), storage)


def extract(root, **kw):
    """What get_features does: find what is missing, compute it; returns (plan, images computed)."""
    p = plan(root, **kw)
    c = Compute()
    p.run(p.missing(range(p.n_chunks)), c)
    return p, c.images


def read_all(p, compute=None):
    return {b: p.read_layer(b, repair=lambda ci, b: p.run({ci: [b]}, compute or Compute())) for b in p.blocks}


def settle(root):
    """Let file times move past the index's tick, and refresh the index once (as the next read would)."""
    time.sleep(0.02)
    plan(root).missing(range(5))


@pytest.fixture()
def header_reads(monkeypatch):
    n = []
    real = store.read_header
    monkeypatch.setattr(chunks, "read_header", lambda p: n.append(p) or real(p))
    return n


def test_index_is_written_when_complete_and_used_instead_of_headers(tmp_path, header_reads):
    p, n = extract(tmp_path)
    assert n == 20
    for b in BLOCKS:
        head, body = (p.layer_folder(b) / INDEX_NAME).read_bytes().split(b"\n", 1)
        assert json.loads(head)["n_chunks"] == 5 and len(json.loads(body)) == 5
    want = read_all(p)
    settle(tmp_path)
    header_reads.clear()
    q = plan(tmp_path)
    assert q.missing(range(q.n_chunks)) == {}
    assert header_reads == []  # one index file per layer, no chunk header opened
    got = read_all(q)
    for b in BLOCKS:
        np.testing.assert_array_equal(got[b], want[b])
        np.testing.assert_array_equal(got[b], features(records(), b))


def _replace_other_ids(path):
    h, x = read_chunk(path)
    store.atomic_write_bytes(path, store.encode_chunk(x, "0" * 32, [], "float32", "a"))


def _replace_same(path):  # a concurrent identical write by another rank: same bytes, new file
    store.atomic_write_bytes(path, path.read_bytes())


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


def _flip_data(path):  # same size; found by the CRC on reading
    b = bytearray(path.read_bytes())
    b[-2] ^= 0xFF
    path.write_bytes(bytes(b))


CHANGES = {"replaced": _replace_other_ids, "deleted": os.unlink, "truncated": _truncate, "flipped": _flip_data,
           "identical": _replace_same}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_chunk_changed_after_the_index_is_found_and_recomputed(tmp_path, header_reads, change):
    p, _ = extract(tmp_path)
    settle(tmp_path)
    victim = p.cache.layer_chunk_path(p.key, "a", 2)
    CHANGES[change](victim)
    header_reads.clear()
    q = plan(tmp_path)
    c = Compute()
    todo = q.missing(range(q.n_chunks))
    if change in ("flipped", "identical"):  # header intact: the data is checked when read
        assert todo == {} and header_reads == [victim]
    else:
        assert todo == {2: ["a"]}
    q.run(todo, c)
    got = read_all(q, c)
    for b in BLOCKS:  # nothing lost
        np.testing.assert_array_equal(got[b], features(records(), b))
    assert c.images == (0 if change == "identical" else 4)
    read_chunk(victim)
    settle(tmp_path)  # the index was rewritten: the next lookup opens no header again
    header_reads.clear()
    assert plan(tmp_path).missing(range(5)) == {} and header_reads == []


def _garbage(path):
    path.write_bytes(os.urandom(5000))


def _other_chunk_size(path):
    head, body = path.read_bytes().split(b"\n", 1)
    h = json.loads(head)
    h["chunk"] = 8
    path.write_bytes(json.dumps(h).encode() + b"\n" + body)


def _body_edited(path):  # a lie about a chunk (rows), with the body checksum made to match: bounds catch it
    head, body = path.read_bytes().split(b"\n", 1)
    rows = json.loads(body)
    rows[1][5] = 3
    body = json.dumps(rows).encode()
    h = json.loads(head)
    h["crc32"] = __import__("zlib").crc32(body)
    path.write_bytes(json.dumps(h).encode() + b"\n" + body)


def _bit_flip(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x04
    path.write_bytes(bytes(b))


def _deep(path):
    path.write_bytes(b'{"format":"domainlens-layer-index-1"}\n' + b"[" * 100_000)


def _oversized(path):
    with open(path, "r+b") as f:
        f.truncate(store.MAX_INDEX + 1)  # sparse: no disk used


def _a_folder(path):
    path.unlink()
    path.mkdir()


def _empty(path):
    path.write_bytes(b"")


BAD = [_garbage, _other_chunk_size, _body_edited, _bit_flip, _deep, _oversized, _a_folder, _empty]


@pytest.mark.parametrize("damage", BAD, ids=[d.__name__.strip("_") for d in BAD])
def test_a_damaged_index_is_ignored_with_a_warning_and_rewritten(tmp_path, caplog, header_reads, damage):
    p, _ = extract(tmp_path)
    settle(tmp_path)
    damage(p.layer_folder("a") / INDEX_NAME)
    header_reads.clear()
    q = plan(tmp_path)
    with caplog.at_level(logging.WARNING, logger="core.engine.chunks"):
        assert q.missing(range(q.n_chunks)) == {}
    if damage is not _empty:
        assert "layer index" in caplog.text and "is ignored" in caplog.text
    else:  # an empty file: ignored all the same
        assert "is ignored" in caplog.text
    assert len(header_reads) == 5  # layer a from its headers, layer b from its index
    got = read_all(q)
    for b in BLOCKS:
        np.testing.assert_array_equal(got[b], features(records(), b))
    settle(tmp_path)
    header_reads.clear()
    assert plan(tmp_path).missing(range(5)) == {} and header_reads == []  # rewritten whole


def test_shards_write_no_partial_index_and_concurrent_writes_are_harmless(tmp_path):
    p = plan(tmp_path)
    for part in range(2):  # two independent shard jobs: each knows only its own chunks
        s = Split(rank=part, world=2)
        q = plan(tmp_path)
        mine = chunks.split_evenly(range(q.n_chunks), s.rank, s.world)
        q.run(q.missing(mine), Compute())
        assert not (p.layer_folder("a") / INDEX_NAME).exists()
    q = plan(tmp_path)
    assert q.missing(range(q.n_chunks)) == {}  # the first complete lookup writes it
    want = (q.layer_folder("a") / INDEX_NAME).read_bytes()
    ts = [threading.Thread(target=q.write_index, args=("a",)) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert (q.layer_folder("a") / INDEX_NAME).read_bytes() == want
    assert sorted(x.name for x in q.layer_folder("a").iterdir())[-1] == INDEX_NAME  # no temp file left


def test_read_only_cache_without_index_still_reads(tmp_path, monkeypatch, caplog):
    extract(tmp_path)
    for b in BLOCKS:
        (plan(tmp_path).layer_folder(b) / INDEX_NAME).unlink()

    def erofs(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkstemp", erofs)
    q = plan(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert q.missing(range(q.n_chunks)) == {}
    assert "Read-only" not in caplog.text  # not a warning on every slider move
    np.testing.assert_array_equal(q.read_layer("a"), features(records(), "a"))


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_threaded_read_is_bit_identical_to_sequential(tmp_path, storage):
    p, _ = extract(tmp_path, n=37, storage=storage)  # a short last chunk
    seq = p.read_layer("a", threads=1)
    par = p.read_layer("a", threads=4)
    assert par.dtype == seq.dtype == np.float32 and par.shape == (37, COLS["a"])
    assert seq.tobytes() == par.tobytes()
    ref = np.concatenate([read_chunk(p.cache.layer_chunk_path(p.key, "a", ci))[1] for ci in range(p.n_chunks)])
    assert par.tobytes() == ref.astype(np.float32).tobytes()


def test_threaded_read_repairs_a_damaged_chunk(tmp_path):
    p, _ = extract(tmp_path)
    _flip_data(p.cache.layer_chunk_path(p.key, "b", 3))
    fixed = []
    got = p.read_layer("b", repair=lambda ci, b: fixed.append(ci) or p.run({ci: [b]}, Compute()), threads=4)
    assert fixed == [3]
    np.testing.assert_array_equal(got, features(records(), "b"))
    with pytest.raises(store.CacheError, match="damaged"):
        _flip_data(p.cache.layer_chunk_path(p.key, "b", 0))
        p.read_layer("b", threads=4)


def test_cache_verify_checks_the_index(tmp_path, capsys):
    cache = tmp_path / "c"
    p, _ = extract(cache)
    settle(cache)
    assert cli_main(["cache", "verify", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "all intact" in out and "note" not in out
    _replace_same(p.cache.layer_chunk_path(p.key, "a", 1))  # harmless: the index is stale, rebuilt on use
    assert cli_main(["cache", "verify", "--cache-dir", str(cache)]) == 0
    assert "stale for 1 chunk(s)" in capsys.readouterr().out
    _bit_flip(p.layer_folder("b") / INDEX_NAME)
    assert cli_main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    assert f"DAMAGED {p.layer_folder('b') / INDEX_NAME}: unreadable layer index" in capsys.readouterr().out
