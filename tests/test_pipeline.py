"""The overlapped extraction path (background writes, device-resident latents, DataLoader workers), its stage
profile, the GPU speed options, and the chunk checksum kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.backbones.base import Request
from core.data.datasets import load_dataset, load_rgb
from core.engine.cache import FeatureCache
from core.engine.extract import MICRO_BATCH, ExtractionConfig, get_features
from core.testing import make_domainbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tiny_sd_dir, tmp_path_factory):
    from core.backbones.registry import load_backbone

    root = make_domainbed(tmp_path_factory.mktemp("pipe") / "db", per_cell=5, sizes=((48, 40), (64, 64), (30, 50)))
    (root / "art" / "cat" / "img4.png").write_bytes(b"not a png")  # one unreadable image
    model = load_backbone(str(tiny_sd_dir), "cpu", "float32")
    return root, model


def _reference(model, ds, blocks, config, chunk):
    """Today's sequential recipe, by hand from the backbone seam: per cache chunk of ``chunk`` selected images,
    decode + preprocess the readable ones, encode and forward them in fixed micro-batches of MICRO_BATCH (the last
    one padded with its last image)."""
    from core.data.datasets import UnreadableImage

    sel = list(ds.subsample(config.max_per_domain, config.max_per_class, config.seed))
    ids, out = [], {b: [] for b in blocks}
    for c in range(0, len(sel), chunk):
        recs = []
        for r in sel[c:c + chunk]:
            try:
                recs.append((r.id, model.preprocess(load_rgb(r.path), model.resolution)))
            except UnreadableImage:
                pass
        cids = [i for i, _ in recs]
        pixels = torch.stack([x for _, x in recs])
        for a in range(0, len(recs), MICRO_BATCH):
            idx = list(range(a, min(a + MICRO_BATCH, len(recs))))
            real = len(idx)
            idx += [idx[-1]] * (MICRO_BATCH - real)
            x0 = model.encode(pixels[idx])
            f = model.forward_features(x0, [cids[i] for i in idx], blocks,
                                       Request(timestep=config.timestep, prompts=[""] * MICRO_BATCH))
            for b in blocks:
                out[b].append(f[b][:real].numpy())
        ids += cids
    return ids, {b: np.concatenate(v) for b, v in out.items()}


def test_overlapped_path_is_bit_identical_to_the_sequential_one_and_to_the_recipe(setup, tmp_path, monkeypatch):
    """Features from the overlapped path (background writes; decoding threads or 2 DataLoader workers; profiled
    or not) equal the sequential path's and a by-hand run of the recipe, byte for byte; several chunks."""
    from core.engine import extract

    root, model = setup
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)  # 19 readable images: 3 chunks, the last one short
    blocks = ["down_blocks.1", "up_blocks.1"]
    cfg = ExtractionConfig(dataset=str(root), model="tiny", timestep=120)
    ds = load_dataset(str(root))
    ids, ref = _reference(model, ds, blocks, cfg, 8)
    runs = {}
    for name, kw in {"sequential": dict(overlap=False), "overlapped": dict(), "workers": dict(workers=2)}.items():
        extract.LATENT_MEMO._d.clear()  # every run decodes and encodes
        fs = get_features(cfg, blocks, model=model, cache_dir=str(tmp_path / name), dataset=ds, batch_size=5, **kw)
        assert fs.n_unet_images == len(ids) == 19 and fs.ids == ids and len(fs.skipped) == 1
        runs[name] = {b: fs.features[b] for b in blocks}
    for name, got in runs.items():
        for b in blocks:
            assert got[b].tobytes() == ref[b].tobytes(), (name, b)
    # every chunk file is on disk once the call returns (writes ran in the background)
    files = sorted((tmp_path / "overlapped").rglob("c-*.safetensors"))
    assert len(files) == 2 * 3


def test_profile_times_every_stage_and_adds_up(setup, tmp_path):
    from core.engine import extract
    from core.engine.profile import STAGES, StageTimes

    root, model = setup
    extract.LATENT_MEMO._d.clear()
    prof = StageTimes(model.device)
    cfg = ExtractionConfig(dataset=str(root), model="tiny", timestep=50)
    with prof.timing():
        fs = get_features(cfg, "all", model=model, cache_dir=str(tmp_path), profile=prof)
    assert prof.images == fs.n_unet_images == 19
    for stage in ("decode", "resize", "VAE", "model", "pooling", "write"):
        assert prof.seconds[stage] > 0, stage
    assert set(prof.seconds) == set(STAGES)
    rows = {r["stage"]: r for r in prof.table()}
    main = sum(r["share"] for r in rows.values() if not r["background"])
    assert main == pytest.approx(1.0, abs=1e-6)  # the main thread's stages and "other" make up the wall time
    assert rows["model"]["seconds"] == pytest.approx(prof.seconds["model"] - prof.seconds["pooling"])
    text = prof.format()
    assert "19 image(s)" in text and all(s in text for s in STAGES)
    assert "pool" not in model.__dict__  # the pooling timer is removed again


def test_cli_extract_profile_prints_the_stage_table(tiny_sd_dir, tmp_path, capsys):
    from core.cli import main

    root = make_domainbed(tmp_path / "db", per_cell=2)
    assert main(["extract", "--dataset", str(root), "--model", str(tiny_sd_dir), "--blocks", "up_blocks.1",
                 "--cache-dir", str(tmp_path / "c"), "--no-progress", "--profile"]) == 0
    out = capsys.readouterr()
    assert "profile: 8 image(s)" in out.out and "share of wall" in out.out and "host->device" in out.out
    assert "AttnProcessor2_0" in out.err  # attention already runs through PyTorch SDPA


def test_speed_options_agree_with_the_default_path(setup, tmp_path):
    """channels-last weights and torch.compile (below the hooked layers; the eager backend here: the wiring, not
    inductor's kernels) keep hooks and early exit working and the features equal to float rounding."""
    import copy

    from core.engine import speedups

    root, model = setup
    blocks = ["down_blocks.0", "down_blocks.2"]
    pixels = torch.rand(3, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    req = Request(timestep=300, prompts=[""] * 3)
    ids = ["a", "b", "c"]

    x0 = model.encode(pixels)

    def feats(m):  # the VAE's compiled units are traced only when called: the UNet's are enough here
        return m.forward_features(x0, ids, blocks, req)

    ref = feats(model)
    fast = copy.deepcopy(model)
    assert speedups.channels_last(fast) >= 2
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.encode(pixels), x0, rtol=1e-4, atol=1e-5)
    cl = feats(fast)
    assert speedups.compile_model(fast, backend="eager") > 5
    assert fast.module("up_blocks.1")._compiled_call_impl is None  # hooked layers themselves stay uncompiled
    comp = fast.forward_features(x0, ids, blocks[:1], req)  # early exit after the first block: few units traced
    for b in blocks:
        assert torch.allclose(cl[b], ref[b], rtol=1e-4, atol=1e-5), b
    assert torch.allclose(comp[blocks[0]], ref[blocks[0]], rtol=1e-4, atol=1e-5)
    assert speedups.attention_kernels(model) == ["AttnProcessor2_0"]


def test_new_chunks_use_xxh3_and_crc32_chunks_still_verify(tmp_path, monkeypatch):
    """Chunks record their checksum kind; XXH3-64 is written now, CRC-32 chunks (older caches) still verify, and a
    flipped byte fails either kind; the layer index carries the kind."""
    import zlib

    from core.engine import store

    f = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float16)
    new = tmp_path / "L-x" / "c-00000.safetensors"
    store.atomic_write_bytes(new, store.encode_chunk(f, "s" * 32, [], "float16", "x"))
    h = store.read_header(new)
    assert h.check == "xxh3_64" and h.checksum == store.checksum("xxh3_64", f.tobytes())
    monkeypatch.setattr(store, "xxhash", None)  # an older writer: CRC-32
    old = tmp_path / "L-x" / "c-00001.safetensors"
    store.atomic_write_bytes(old, store.encode_chunk(f, "s" * 32, [], "float16", "x"))
    monkeypatch.undo()
    h_old = store.read_header(old)
    assert h_old.check == "crc32" and h_old.checksum == zlib.crc32(f.tobytes())
    for path in (new, old):
        np.testing.assert_array_equal(store.read_chunk(path)[1], f)
    # the index keeps each chunk's kind
    store.write_index(tmp_path / "L-x", "x", 5, 10, [h, h_old])
    _, hs = store.read_index(tmp_path / "L-x", "x", 5, 10)
    assert [(x.check, x.checksum) for x in hs] == [("xxh3_64", h.checksum), ("crc32", h_old.checksum)]
    for path in (new, old):
        b = bytearray(path.read_bytes())
        b[-3] ^= 0x10
        path.write_bytes(bytes(b))
        with pytest.raises(store.DamagedChunk, match="checksum"):
            store.read_chunk(path)


def test_tsne_above_its_cap_is_fitted_on_a_smaller_sample_and_says_why(monkeypatch, tmp_path):
    """Core's policy: t-SNE above TSNE_SAMPLE points is fitted on a stratified sample of that size (UMAP keeps the
    larger LAYOUT_SAMPLE) and ``layout_note`` gives the reason the page shows; small sets keep their cache key."""
    from types import SimpleNamespace

    from core.analysis import explore
    from core.analysis import reduce as layouts
    from core.analysis.reduce import ReductionConfig

    monkeypatch.setattr(layouts, "TSNE_SAMPLE", 30)
    monkeypatch.setattr(layouts, "LAYOUT_SAMPLE", 80)
    asked = []

    def fake_layout(X, labels, config, max_points):  # the sample size cached_layout asks for (no t-SNE run)
        asked.append((config.method, max_points))
        return np.zeros((len(X), 2), np.float32), min(len(X), max_points)

    monkeypatch.setattr(explore, "layout_at_scale", fake_layout)
    dom = np.repeat(np.arange(3), 20)
    fs = SimpleNamespace(cache_key="k" * 32, ids=[f"i{i}" for i in range(60)], features={"b": np.zeros((60, 4))},
                         domain_labels=dom)
    cache = FeatureCache(tmp_path)
    assert explore.cached_layout(fs, "b", ReductionConfig("tsne"), cache)[1] == 30
    assert explore.cached_layout(fs, "b", ReductionConfig("umap"), cache)[1] == 60
    assert asked == [("tsne", 30), ("umap", 80)]
    note = layouts.layout_note("tsne", 60, 30)
    assert "30 of 60" in note and "UMAP" in note
    assert layouts.layout_note("umap", 60, 60) == "" and "Place every point" in layouts.layout_note("umap", 90, 80)
    assert layouts.layout_sample("tsne", 30) == 80  # at or below the cap: the key of every earlier layout


def test_a_verified_unchanged_chunk_is_not_checksummed_again_but_a_changed_one_is(tmp_path, monkeypatch):
    import os
    import time

    from core.engine import store

    f = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "c-00000.safetensors"
    store.atomic_write_bytes(path, store.encode_chunk(f, "s" * 32, [], "float32", "x"))
    calls = []
    real = store.checksum
    monkeypatch.setattr(store, "checksum", lambda kind, data: calls.append(kind) or real(kind, data))
    out = np.empty_like(f)
    store.read_into(store.read_header(path), out)
    store.read_into(store.read_header(path), out)
    assert len(calls) == 2  # just written: within 2 s a change could keep the stat, so every read checks
    old = (os.stat(path).st_mtime_ns - 10**10) // 10**9
    os.utime(path, (old, old))  # an older file (its ctime is now, though): still checked
    store.read_into(store.read_header(path), out)
    assert len(calls) == 3
    monkeypatch.setattr(time, "time_ns", lambda: os.stat(path).st_ctime_ns + 5 * 10**9)  # 5 s later
    store.read_into(store.read_header(path), out)
    store.read_into(store.read_header(path), out)
    assert len(calls) == 4  # verified once, unchanged since: not checksummed again
    np.testing.assert_array_equal(out, f)
    store.read_chunk(path)
    assert len(calls) == 5  # `cache verify` (read_chunk) always checks
    b = bytearray(path.read_bytes())
    b[-2] ^= 0x08
    path.write_bytes(bytes(b))  # rewritten: another ctime, so checked again, and the damage is found
    monkeypatch.setattr(time, "time_ns", lambda: os.stat(path).st_ctime_ns + 5 * 10**9)
    with pytest.raises(store.DamagedChunk, match="checksum"):
        store.read_into(store.read_header(path), out)


def test_tsne_finds_exact_neighbours_up_to_its_cap_and_the_rule_is_in_the_cache_key(monkeypatch):
    """t-SNE's k-NN search is exact (brute force) up to TSNE_EXACT_KNN_MAX points and openTSNE's approximate
    choice above; the rule is part of the layout's cache key (layouts cached under the old rule are not reused)."""
    import openTSNE

    from core.analysis import reduce as layouts
    from core.analysis.reduce import ReductionConfig

    seen = []

    class Stop(Exception):
        pass

    class Spy:
        def __init__(self, **kw):
            seen.append(kw.get("neighbors"))
            raise Stop

    monkeypatch.setattr(openTSNE, "TSNE", Spy)
    X = np.random.default_rng(0).normal(size=(1200, 8)).astype(np.float32)
    for cap, want in ((50_000, "exact"), (1000, "auto")):
        monkeypatch.setattr(layouts, "TSNE_EXACT_KNN_MAX", cap)
        with pytest.raises(Stop):
            layouts.reduce(X, ReductionConfig("tsne"))
        assert seen[-1] == want
    monkeypatch.undo()
    assert ReductionConfig("tsne").params()["neighbors"] == f"exact<={layouts.TSNE_EXACT_KNN_MAX},auto"
    assert "neighbors" not in ReductionConfig("umap").params() and "neighbors" not in ReductionConfig().params()
    from openTSNE.nearest_neighbors import Sklearn

    idx, dist = Sklearn(X, k=90, n_jobs=1).build()  # what neighbors="exact" builds: brute force, no random trees
    d = ((X[:20, None, :] - X[None, :, :]) ** 2).sum(-1)
    d[np.arange(20), np.arange(20)] = np.inf
    want_idx = np.argsort(d, axis=1, kind="stable")[:, :90]
    np.testing.assert_allclose(dist[:20], np.sqrt(np.take_along_axis(d, want_idx, 1)), rtol=1e-4)
