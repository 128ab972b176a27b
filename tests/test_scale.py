"""Scale: per-layer cache files, fp16 storage, `cache` subcommands, read-only and full disks, and extraction
split over processes through the real launcher (torchrun, gloo on CPU)."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import core.engine.store as store
from core.analysis.metrics import nmi
from core.cli import main as cli_main
from core.engine.cache import FeatureCache, atomic_save_npz
from core.engine.extract import ExtractionConfig, cache_key, feature_key, get_features, select_images
from core.engine.store import CacheError, read_chunk
from core.backbones.registry import load_backbone as load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def model(tiny_sd_dir):
    return load_model(str(tiny_sd_dir), "cpu")


def cfg(model_dir, **kw) -> ExtractionConfig:
    kw.setdefault("dataset", "synthetic-pacs")
    kw.setdefault("max_per_domain", 4)
    return ExtractionConfig(model=str(model_dir), **kw)


def layer_files(root, key, layer):
    return sorted(FeatureCache(root).layer_chunk_path(key, layer, 0).parent.glob("c-*.safetensors"))


# ------------------------------------------------------------------------------------ processes


def _torchrun(tiny_sd_dir, cache, per_domain, env_extra=None, popen=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", DOMAINLENS_CHUNK_IMAGES="4", DOMAINLENS_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO), **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(20000 + (os.getpid() * 7 + per_domain + len(str(cache))) % 20000), "-m", "core", "extract",
           "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--max-per-domain", str(per_domain),
           "--device", "cpu", "--batch-size", "4", "--no-progress"]
    if popen:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _same(a, b):
    assert a.ids == b.ids
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])  # bit-identical


def test_two_ranks_through_torchrun_equal_one_process_and_survive_a_killed_rank(model, tiny_sd_dir, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("DOMAINLENS_CHUNK_IMAGES", "4")
    small, big = cfg(tiny_sd_dir, max_per_domain=4), cfg(tiny_sd_dir, max_per_domain=8)  # 16 / 32 images
    ref_small = get_features(small, "all", model=model, batch_size=4, cache_dir=str(tmp_path / "ref"))
    ref_big = get_features(big, "all", model=model, batch_size=4, cache_dir=str(tmp_path / "ref"))

    # a fresh 2-process run: each rank says what it did, the K's add up to N, features equal 1 process
    r = _torchrun(tiny_sd_dir, tmp_path / "a", 4)
    assert r.returncode == 0, r.stderr[-3000:]
    ks = {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"rank (\d)/2 computed (\d+) of 16 images", r.stdout)}
    assert set(ks) == {0, 1} and sum(ks.values()) == 16 and min(ks.values()) > 0, r.stdout
    index = FeatureCache(tmp_path / "a").layer_chunk_path(ref_small.cache_key, "mid_block", 0).parent / "index.json"
    assert index.is_file()  # rank 0 wrote each layer's index once every rank's chunks were in
    _same(get_features(small, "all", model=model, cache_dir=str(tmp_path / "a"), only_cached=True), ref_small)

    # kill -9 one rank once the first chunk file exists; the launcher stops the other; re-run completes
    import psutil

    proc = _torchrun(tiny_sd_dir, tmp_path / "b", 8, popen=True)
    layer = FeatureCache(tmp_path / "b").layer_chunk_path(ref_big.cache_key, "up_blocks.1", 0).parent
    deadline = time.monotonic() + 120
    while not (layer.is_dir() and any(layer.glob("c-*"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "no worker processes"
    os.kill(max(workers, key=lambda p: p.pid).pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    n_before = len(list(layer.glob("c-*.safetensors")))
    assert n_before < 8, "the run finished before the kill: nothing was tested"
    for f in FeatureCache(tmp_path / "b").entry_dir(ref_big.cache_key).rglob("c-*.safetensors"):
        read_chunk(f)  # nothing torn: every chunk file that exists is whole and passes its checksum

    r = _torchrun(tiny_sd_dir, tmp_path / "b", 8)
    assert r.returncode == 0, r.stderr[-3000:]
    ks = [int(k) for k in re.findall(r"rank \d/2 computed (\d+) of 32 images", r.stdout)]
    assert len(ks) == 2 and sum(ks) <= 32 - 4 * n_before  # only what was missing
    _same(get_features(big, "all", model=model, cache_dir=str(tmp_path / "b"), only_cached=True), ref_big)


def test_shards_split_chunks_without_a_process_group(model, tiny_sd_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOMAINLENS_CHUNK_IMAGES", "4")
    args = ["extract", "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--max-per-domain", "4",
            "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "c"), "--blocks", "mid_block"]
    got = []
    for i in range(3):
        assert cli_main(args + ["--shard", f"{i}/3"]) == 0
        out = capsys.readouterr().out
        got.append(int(re.search(rf"rank {i}/3 computed (\d+) of 16 images", out).group(1)))
    assert got == [4, 4, 8]  # 4 chunks of 4 images dealt out contiguously, no padding
    assert cli_main(args + ["--shard", "3/3"]) == 2
    assert "need 0 <= i < n" in capsys.readouterr().err
    fs = get_features(cfg(tiny_sd_dir), ["mid_block"], model=model, cache_dir=str(tmp_path / "c"), only_cached=True)
    assert len(fs) == 16


# ----------------------------------------------------------------------------------- per layer


def test_going_through_every_layer_keeps_a_bounded_number_of_them(model, tiny_sd_dir, monkeypatch):
    """FeatureSet.features lets the least recently used layers go past its memory budget (the most recent one is
    always kept): a sweep over every block of a DomainNet-sized setting holds a few layers, not ~16 GB. A layer
    let go and asked for again is read again, equal."""
    import core.engine.chunks as chunks

    real_budget = chunks.kept_bytes_budget
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)
    want = {b: x.copy() for b, x in get_features(c, "all", model=model).features.items()}
    assert len(want) >= 3
    sizes = sorted(x.nbytes for x in want.values())
    budget = sizes[-1] + sizes[0]  # room for two layers at most, never for all
    monkeypatch.setattr(chunks, "kept_bytes_budget", lambda: budget)
    fs = get_features(c, "all", model=model)
    reads = []
    real = chunks.ChunkPlan.read_layer
    monkeypatch.setattr(chunks.ChunkPlan, "read_layer", lambda self, b, *a, **k: reads.append(b) or real(self, b, *a, **k))
    for b in want:
        np.testing.assert_array_equal(fs.features[b], want[b])
        kept = fs.features.loaded()
        assert kept[-1] == b and sum(want[k].nbytes for k in kept) <= max(budget, want[b].nbytes)
    assert len(fs.features.loaded()) < len(want) and reads == list(want)
    first = next(iter(want))
    np.testing.assert_array_equal(fs.features[first], want[first])  # let go earlier: read again
    assert reads == list(want) + [first]
    np.testing.assert_array_equal(fs.features[first], want[first])  # kept now: not read again
    assert reads == list(want) + [first]
    monkeypatch.setenv("DOMAINLENS_LAYER_MEMORY_MB", "some")
    with pytest.raises(ValueError, match="DOMAINLENS_LAYER_MEMORY_MB must be a whole number of MiB"):
        real_budget()


def test_reading_one_layer_touches_no_other_layer(model, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)
    full = get_features(c, "all", model=model)
    assert "up_blocks.1" in full.features and full.features.loaded() == []  # nothing read until asked for
    want = full.features["mid_block"]
    time.sleep(0.02)  # past the tick the layer index was written in (a chunk of that tick is re-checked)
    get_features(c, ["mid_block"], model=model)  # which rewrites it once
    opened = []
    real_open = store._open_regular_fd  # every cache read goes through it (regular files only, never blocks)
    monkeypatch.setattr(store, "_open_regular_fd", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    fs = get_features(c, ["mid_block"], model=model)
    x = fs.features["mid_block"]
    np.testing.assert_array_equal(x, want)
    assert opened and all("/L-mid_block/" in p for p in opened), opened
    assert len(opened) == 1 + 2  # the layer's index at lookup (no chunk header) + one data read per chunk
    assert opened[0].endswith("/L-mid_block/index.json")
    assert full.features.loaded() == ["mid_block"] and fs.features.loaded() == ["mid_block"]


# ----------------------------------------------------------------------------------------- fp16


def test_float16_storage_has_its_own_key_and_close_scores(model, tiny_sd_dir):
    c32, c16 = cfg(tiny_sd_dir, storage_dtype="float32"), cfg(tiny_sd_dir, storage_dtype="float16")
    ds, recs = select_images(c32)
    # float32 keys are exactly the keys from before storage options existed (auto means float32 on CPU)
    assert feature_key(c32, model, ds, recs) == feature_key(cfg(tiny_sd_dir), model, ds, recs) == \
        cache_key(c32, model, ds, recs)
    assert feature_key(c16, model, ds, recs) != feature_key(c32, model, ds, recs)
    a = get_features(c32, ["up_blocks.1"], model=model)
    b = get_features(c16, ["up_blocks.1"], model=model)
    assert b.n_unet_images == 16 and a.cache_key != b.cache_key
    f32 = layer_files(os.environ["DOMAINLENS_CACHE_DIR"], a.cache_key, "up_blocks.1")
    f16 = layer_files(os.environ["DOMAINLENS_CACHE_DIR"], b.cache_key, "up_blocks.1")
    assert read_chunk(f16[0])[1].dtype == np.float16 and read_chunk(f32[0])[1].dtype == np.float32
    assert sum(p.stat().st_size for p in f16) < 0.6 * sum(p.stat().st_size for p in f32)
    np.testing.assert_allclose(b.features["up_blocks.1"], a.features["up_blocks.1"], rtol=1e-3, atol=1e-4)
    # scores from fp16-rounded features: within 0.005 NMI on a larger clustered set
    from bench.common import clustered_features

    X, dom, cls = clustered_features(3000, 256, n_domains=4, n_classes=6, seed=3)
    for y in (dom, cls):
        assert abs(nmi(X, y, 2)[0] - nmi(X.astype(np.float16), y, 2)[0]) <= 0.005


# ------------------------------------------------------------------------------------ cache CLI


def test_cache_list_verify_prune(model, tiny_sd_dir, tmp_path, capsys):
    root = tmp_path / "cc"
    keys = []
    for i, t in enumerate((50, 100, 200)):
        fs = get_features(cfg(tiny_sd_dir, timestep=t), ["mid_block"], model=model, cache_dir=str(root))
        keys.append(fs.cache_key)
        for p in FeatureCache(root).entry_dir(fs.cache_key).rglob("*"):
            os.utime(p, (1e9 + i * 1e5, 1e9 + i * 1e5))  # oldest first: t=50, 100, 200
    base = ["cache", "--cache-dir", str(root)]
    assert cli_main(base[:1] + ["list"] + base[1:]) == 0
    out = capsys.readouterr().out
    assert "3 setting(s)" in out and all(k in out for k in keys) and "synthetic-pacs" in out and "float32" in out
    assert cli_main(["cache", "verify", "--cache-dir", str(root)]) == 0
    assert "all intact" in capsys.readouterr().out
    victim = layer_files(root, keys[1], "mid_block")[0]
    b = bytearray(victim.read_bytes())
    b[-3] ^= 0xFF
    victim.write_bytes(bytes(b))
    assert cli_main(["cache", "verify", "--cache-dir", str(root)]) == 1
    assert f"DAMAGED {victim}" in capsys.readouterr().out
    sizes = {k: sum(p.stat().st_size for p in FeatureCache(root).entry_dir(k).rglob("*") if p.is_file()) for k in keys}
    budget = sizes[keys[2]] + sizes[keys[1]]
    assert cli_main(["cache", "prune", "--cache-dir", str(root), "--max-size", f"{budget}B"]) == 0
    out = capsys.readouterr().out
    assert f"removed {keys[0]}" in out and keys[1] not in out
    assert not FeatureCache(root).entry_dir(keys[0]).exists() and FeatureCache(root).entry_dir(keys[2]).exists()
    assert cli_main(["cache", "prune", "--cache-dir", str(root), "--older-than", "1"]) == 0
    out = capsys.readouterr().out  # t=100 was written just now (the damaged file), t=200 long ago
    assert "1 setting(s)" in out and f"removed {keys[2]}" in out
    assert [p.name for p in (root / "features").glob("*/*")] == [keys[1]]
    assert cli_main(["cache", "prune", "--cache-dir", str(root), "--max-size", "lots"]) == 2
    assert "like 50GB" in capsys.readouterr().err


# ------------------------------------------------------------------------- read-only, disk full


def _read_only(monkeypatch):
    """Simulate a read-only mount (root ignores permission bits, and mounting needs privileges): every way the
    cache creates or replaces a file or folder fails with EROFS."""
    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", erofs)
    monkeypatch.setattr(os, "replace", erofs)
    monkeypatch.setattr(os, "mkdir", erofs)


def test_read_only_cache_is_readable(model, tiny_sd_dir, monkeypatch, caplog):
    from core.analysis.explore import explore_view
    from core.analysis.reduce import ReductionConfig

    c = cfg(tiny_sd_dir)
    ref = get_features(c, "all", model=model)
    _read_only(monkeypatch)
    fs = get_features(c, "all", model=model)  # fully populated: no write needed, none attempted
    assert fs.n_unet_images == 0
    _same(fs, ref)
    r = explore_view(c, "mid_block", ReductionConfig("pca"), model=model, n_seeds=1)  # results kept in memory
    assert len(r.embedding) == 16
    with pytest.raises(CacheError, match="not writable"):  # something missing: a clear message
        get_features(cfg(tiny_sd_dir, timestep=60), ["mid_block"], model=model)


def test_disk_full_leaves_nothing_partial_and_resumes(model, tiny_sd_dir, monkeypatch, capsys):
    monkeypatch.setattr(FeatureCache, "CHUNK", 4)
    c = cfg(tiny_sd_dir)
    calls = []
    real = store._write_all

    def full_after_3(f, data):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(store, "_write_all", full_after_3)
    with pytest.raises(CacheError, match="disk is full") as e:
        get_features(c, ["mid_block", "up_blocks.1"], model=model)
    assert "run the same command again to resume" in str(e.value)
    entry = FeatureCache().entry_dir(feature_key(c, model, *select_images(c)))
    assert not [p for p in entry.rglob(".tmp-*")]  # nothing partial
    for p in entry.rglob("c-*.safetensors"):
        read_chunk(p)
    # the CLI says it in one line
    assert cli_main(["extract", "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--max-per-domain", "4",
                     "--device", "cpu", "--no-progress", "--blocks", "mid_block,up_blocks.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the disk is full") and "Traceback" not in err
    monkeypatch.setattr(store, "_write_all", real)  # space freed
    fs = get_features(c, ["mid_block", "up_blocks.1"], model=model)
    assert 0 < fs.n_unet_images < 16  # only the missing chunks
    _same(fs, get_features(c, ["mid_block", "up_blocks.1"], model=model, cache_dir=None))


def test_cache_dir_under_a_regular_file(model, tiny_sd_dir, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(CacheError, match="is a file, not a folder"):
        get_features(cfg(tiny_sd_dir), ["mid_block"], model=model, cache_dir=str(f / "sub"))
    assert cli_main(["extract", "--dataset", "synthetic-pacs", "--model", str(tiny_sd_dir), "--max-per-domain", "2",
                     "--device", "cpu", "--no-progress", "--cache-dir", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- old format


def test_old_npz_cache_is_read_without_the_model(model, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)
    ref = get_features(c, ["mid_block", "up_blocks.1"], model=model)
    cache = FeatureCache()
    recs = select_images(c)[1]
    for ci in range(2):  # rewrite the setting in the old layout: one npz per chunk, every layer inside
        sl = slice(ci * 8, ci * 8 + 8)
        atomic_save_npz(cache.chunk_path(ref.cache_key, ci), {
            "ids": np.array([r.id for r in recs[sl]]), "skipped_ids": np.array([], dtype=str),
            "skipped_reasons": np.array([], dtype=str),
            **{f"f:{b}": ref.features[b][sl] for b in ("mid_block", "up_blocks.1")}})
    import shutil

    for d in cache.entry_dir(ref.cache_key).glob("L-*"):
        shutil.rmtree(d)
    fs = get_features(c, ["mid_block", "up_blocks.1"], model=model)
    assert fs.n_unet_images == 0  # converted, not recomputed
    _same(fs, ref)
    assert len(layer_files(cache.root, ref.cache_key, "mid_block")) == 2


def test_warm_explore_move_with_faithfulness_reads_no_feature_bytes(model, tiny_sd_dir):
    from core.analysis.explore import explore_faithfulness, explore_view
    from core.analysis.faithfulness import cached_faithfulness
    from core.analysis.reduce import ReductionConfig

    c = cfg(tiny_sd_dir)
    r = explore_view(c, "mid_block", ReductionConfig("pca"), model=model, n_seeds=1)
    first = explore_faithfulness(r.features, "mid_block", r.embedding)
    assert first == cached_faithfulness(r.features.features["mid_block"], r.embedding, r.features.domains)
    warm = explore_view(c, "mid_block", ReductionConfig("pca"), model=model, n_seeds=1)
    assert explore_faithfulness(warm.features, "mid_block", warm.embedding) == first
    assert warm.features.features.loaded() == []  # layout, scores and faithfulness from the cache


@pytest.mark.parametrize("method", ["tsne"])  # UMAP's transform takes the same path (its numba compile is costly here)
def test_layout_at_scale_fits_a_stratified_sample_and_places_the_rest_on_request(method):
    """Above the layout sample t-SNE / UMAP place the sample only (the rest NaN: "sample of N"); with
    place_all the fitted embedding's transform places every other point, next to its own cluster."""
    from core.analysis.reduce import ReductionConfig, layout_at_scale, reduce, stratified_sample

    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], [160, 120, 80])
    X = (rng.normal(size=(360, 20)) + 6 * np.eye(20)[np.searchsorted(["a", "b", "c"], labels)]).astype(np.float32)
    base = ReductionConfig(method, pca_dims=10, n_neighbors=10, perplexity=15)
    idx = stratified_sample(labels, 90, 0)
    assert [int((labels[idx] == c).sum()) for c in "abc"] == [40, 30, 20]  # in proportion

    emb, fitted = layout_at_scale(X, labels, base, max_points=90)
    placed = np.isfinite(emb).all(1)
    assert fitted == 90 and placed.sum() == 90 and np.array_equal(np.flatnonzero(placed), idx)
    if method == "tsne":  # the sample's layout is the plain reduce() of the sample
        np.testing.assert_allclose(emb[idx], reduce(X[idx], base), rtol=1e-5, atol=1e-5)

    calls = []
    full = replace(base, place_all=True)
    assert "place_all" not in base.params() and full.params()["place_all"] is True  # its own layout cache key
    emb2, fitted2 = layout_at_scale(X, labels, full, max_points=90, progress=lambda d, t: calls.append((d, t)))
    assert fitted2 == 90 and np.isfinite(emb2).all() and calls[-1] == (270, 270)
    rest = np.setdiff1d(np.arange(360), idx)
    d = ((emb2[rest, None, :] - emb2[None, idx, :]) ** 2).sum(-1)
    assert (labels[idx][d.argmin(1)] == labels[rest]).mean() > 0.95  # each placed point lands by its own cluster


def test_cache_list_tells_settings_apart():
    """Rows of one dataset, model and timestep differ by seed, sample, prompt, ensemble: `cache list` says which."""
    from core.engine.cachetool import setting_text
    from core.engine.extract import ExtractionConfig, PromptSpec

    base = ExtractionConfig(dataset="d", model="m", max_per_domain=100)
    texts = [setting_text(c.to_dict()) for c in (
        base, replace(base, seed=1), replace(base, max_per_domain=None), replace(base, ensemble=4),
        replace(base, prompt=PromptSpec("template", "a photo of a {class}")), replace(base, noise_mode="clean"))]
    assert len(set(texts)) == len(texts), texts
    assert texts[0] == "seed 0 · 100/domain" and 'template "a photo of a {class}"' in texts[4]
    assert setting_text({}) == "?"
