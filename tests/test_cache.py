"""Tests for the on-disk feature cache (core/cache.py) and how the engine and sweeps use it.

UNet work is counted with a forward pre-hook on ``model.unet`` (it sees every forward, whatever the
engine does inside), so "from the cache" means "the UNet never ran".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

import core.analysis.sweep
from core.engine.cache import FeatureCache, atomic_save_npz, safe_load_npz
from core.engine.extract import MICRO_BATCH, ExtractionConfig, cache_key, get_features, select_images
from core.engine.prompts import PromptSpec
from core.engine.store import DamagedChunk, read_chunk
from core.testing import make_domainbed
from core.backbones.registry import folder_identity
from core.backbones.registry import load_backbone as load_model
from core.analysis.sweep import run_sweep


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def model(tiny_sd_dir):
    return load_model(str(tiny_sd_dir), "cpu")


def cfg(model_dir, **kw) -> ExtractionConfig:
    kw.setdefault("dataset", "synthetic-pacs")
    kw.setdefault("max_per_domain", 8)
    return ExtractionConfig(model=str(model_dir), **kw)


class UNetCounter:
    """Counts UNet forward calls and the images they carried."""

    def __init__(self, unet, fail_on_call: int | None = None):
        self.calls = 0
        self.images = 0
        self.fail_on_call = fail_on_call
        self.handle = unet.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise SimulatedKill(f"killed in UNet call {self.calls}")
        self.images += args[0].shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


class SimulatedKill(Exception):
    pass



def chunk_files(cache_root, key, layer=None):
    """The chunk files of one layer (the first stored one when not given)."""
    entry = FeatureCache(cache_root).entry_dir(key)
    dirs = sorted(entry.glob("L-*")) if layer is None else [entry / f"L-{layer}"]
    return sorted(dirs[0].glob("c-*.safetensors")) if dirs else []


def assert_same_features(a, b):
    assert a.ids == b.ids
    assert list(a.features) == list(b.features)
    for k in a.features:
        np.testing.assert_array_equal(a.features[k], b.features[k])


# ------------------------------------------------------------------------------------------ hits


def test_cache_hit_runs_no_unet(model, tiny_sd_dir, tmp_path):
    from core.engine.limits import probe_activation_bytes

    c = cfg(tiny_sd_dir)
    probe_activation_bytes(model)  # the memory guard's one-image probe, once per loaded model (memoised on it)
    with UNetCounter(model.unet) as first:
        fs1 = get_features(c, "all", model=model, batch_size=8)
    assert first.images == 32 and fs1.n_unet_images == 32
    with UNetCounter(model.unet) as second:
        fs2 = get_features(c, "all", model=model, batch_size=8)
        fs3 = get_features(c, "all", model=model, batch_size=5)  # batch size is not part of the key
        fs4 = get_features(c, ["up_blocks.1", "down_blocks.0"], model=model)  # a subset of stored blocks
    assert second.calls == 0
    assert fs2.n_unet_images == fs3.n_unet_images == fs4.n_unet_images == 0
    assert fs1.cache_key == fs2.cache_key == fs3.cache_key == fs4.cache_key
    assert_same_features(fs1, fs2)
    assert_same_features(fs1, fs3)
    assert list(fs4.features) == ["down_blocks.0", "up_blocks.1"]
    np.testing.assert_array_equal(fs4.features["up_blocks.1"], fs1.features["up_blocks.1"])
    # the files live in the configured cache dir (the per-test DOMAINLENS_CACHE_DIR)
    assert chunk_files(os.environ["DOMAINLENS_CACHE_DIR"], fs1.cache_key)


def test_new_block_keeps_blocks_stored_earlier(model, tiny_sd_dir):
    c = cfg(tiny_sd_dir)
    a = get_features(c, ["mid_block"], model=model)
    b = get_features(c, ["up_blocks.1"], model=model)  # not stored yet: computed
    assert a.n_unet_images == b.n_unet_images == 32
    with UNetCounter(model.unet) as counter:
        both = get_features(c, ["mid_block", "up_blocks.1"], model=model)
    assert counter.calls == 0 and both.n_unet_images == 0
    np.testing.assert_array_equal(both.features["mid_block"], a.features["mid_block"])
    np.testing.assert_array_equal(both.features["up_blocks.1"], b.features["up_blocks.1"])


def test_second_identical_sweep_runs_no_unet_and_no_scoring(model, tiny_sd_dir, monkeypatch):
    base = cfg(tiny_sd_dir)
    with UNetCounter(model.unet) as first:
        df1 = run_sweep(base, ["mid_block", "up_blocks.1"], [50, 500], model=model, n_seeds=2)
    assert first.images == 64  # 32 images x 2 timesteps, both blocks in one pass

    scored = []
    real = core.analysis.sweep.score_features
    monkeypatch.setattr(core.analysis.sweep, "score_features", lambda *a, **k: scored.append(1) or real(*a, **k))
    with UNetCounter(model.unet) as second:
        df2 = run_sweep(base, ["mid_block", "up_blocks.1"], [50, 500], model=model, n_seeds=2)
    assert second.calls == 0 and scored == []
    assert len(df2) == 4
    assert df1.equals(df2)


# ---------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("how", ["progress", "unet"])
def test_resume_after_kill_computes_only_the_rest(model, tiny_sd_dir, monkeypatch, tmp_path, how):
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)  # 32 images -> 4 chunks of 8
    ref = get_features(c, ["up_blocks.1", "mid_block"], model=model, cache_dir=str(tmp_path / "ref"))
    assert len(chunk_files(tmp_path / "ref", ref.cache_key)) == 4

    seen = []

    def progress(done, total):
        seen.append(done)
        if how == "progress" and done > 8:  # the first report from inside the second chunk
            raise SimulatedKill("killed by the progress callback")

    # the engine runs micro-batches of MICRO_BATCH images on the CPU: the first call of chunk 2 is the kill
    with UNetCounter(model.unet, fail_on_call=8 // MICRO_BATCH + 1 if how == "unet" else None):
        with pytest.raises(SimulatedKill):
            get_features(c, ["up_blocks.1", "mid_block"], model=model, batch_size=4, progress=progress,
                         cache_dir=str(tmp_path / "run"))
    files = chunk_files(tmp_path / "run", ref.cache_key)
    assert [f.name for f in files] == ["c-00000.safetensors"]
    assert [f.name for f in chunk_files(tmp_path / "run", ref.cache_key, "up_blocks.1")] == ["c-00000.safetensors"]
    assert not [p for p in files[0].parent.iterdir() if p.name.startswith(".tmp")]  # no half-written file

    with UNetCounter(model.unet) as counter:
        fs = get_features(c, ["up_blocks.1", "mid_block"], model=model, batch_size=4,
                          cache_dir=str(tmp_path / "run"))
    assert fs.n_unet_images == 24 and counter.images == 24
    assert len(chunk_files(tmp_path / "run", ref.cache_key)) == 4
    assert fs.ids == ref.ids
    for b in ref.features:
        np.testing.assert_allclose(fs.features[b], ref.features[b], rtol=0, atol=1e-5)
    with UNetCounter(model.unet) as counter:
        assert get_features(c, ["up_blocks.1"], model=model, cache_dir=str(tmp_path / "run")).n_unet_images == 0
    assert counter.calls == 0


# ---------------------------------------------------------------------------------------- damage


def _flip_middle(p):
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 2, len(b) // 2 + 16):
        b[i] ^= 0xFF
    p.write_bytes(bytes(b))


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p):
    p.write_bytes(os.urandom(300))


def _empty(p):
    p.write_bytes(b"")


def _rewrite(p, change):
    """Re-encode a chunk file with ``change(tensors, metadata)`` applied (a well-formed safetensors file)."""
    import safetensors
    import safetensors.numpy

    with safetensors.safe_open(str(p), "numpy") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    p.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def _wrong_digest(p):
    """Feature values changed, stored checksum kept."""
    _rewrite(p, lambda t, m: t.update(f=t["f"] + 1.0))


def _no_digest(p):
    _rewrite(p, lambda t, m: [m.pop(k, None) for k in ("crc32", "xxh3_64")])


def _bad_header_length(p):
    b = bytearray(p.read_bytes())
    b[0:8] = (len(b) * 4).to_bytes(8, "little")
    p.write_bytes(bytes(b))


def _wrong_dtype(p):
    _rewrite(p, lambda t, m: t.update(f=t["f"].astype(np.float64)))


def _other_ids(p):
    """Intact and with a valid checksum, but for other images (e.g. a different selection)."""
    _rewrite(p, lambda t, m: m.update(ids_sha="0" * 32))


def _folder(p):
    p.unlink()
    p.mkdir()


DAMAGES = [_flip_middle, _truncate, _garbage, _empty, _wrong_digest, _no_digest, _bad_header_length,
           _wrong_dtype, _other_ids, _folder]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.__name__.strip("_") for d in DAMAGES])
def test_damaged_chunk_is_recomputed(model, tiny_sd_dir, monkeypatch, damage):
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)
    fs = get_features(c, ["up_blocks.1", "down_blocks.1"], model=model)
    files = chunk_files(os.environ["DOMAINLENS_CACHE_DIR"], fs.cache_key)
    assert len(files) == 4
    damage(files[1])
    with UNetCounter(model.unet) as counter:
        again = get_features(c, ["up_blocks.1", "down_blocks.1"], model=model)
        feats = {b: again.features[b] for b in again.features}  # a damaged data byte is found on reading
    assert again.n_unet_images == 8 and counter.images == 8  # only the damaged chunk
    assert again.ids == fs.ids
    for b in fs.features:
        np.testing.assert_allclose(feats[b], fs.features[b], rtol=0, atol=1e-6)
    # the recomputed chunk was written back intact
    read_chunk(files[1])
    again = get_features(c, ["up_blocks.1", "down_blocks.1"], model=model)
    [again.features[b] for b in again.features]
    assert again.n_unet_images == 0


def test_safe_load_survives_any_single_byte_flip(tmp_path):
    """A one-byte corruption of a chunk file (any header byte, a sample of the data bytes) loads as absent
    (None) or as the original arrays; none raises and none returns wrong numbers."""
    arrays = {"ids": np.array(["d/c/0.png", "d/c/1.png"]), "skipped_ids": np.array([], dtype=str),
              "f:mid_block": np.arange(8, dtype=np.float32).reshape(2, 4)}
    p = tmp_path / "c.npz"
    atomic_save_npz(p, arrays)
    raw = p.read_bytes()
    q = tmp_path / "d.npz"
    logging.disable(logging.WARNING)  # thousands of "damaged" warnings would dominate the run time
    try:
        for i in _header_bytes(p) + list(range(0, len(raw), 11)):
            _check_flip(raw, i, q, arrays)
        for n in range(0, len(raw), 3):
            q.write_bytes(raw[:n])
            assert safe_load_npz(q) is None, n
    finally:
        logging.disable(logging.NOTSET)


def _header_bytes(p) -> list[int]:
    """Positions of every zip and .npy header byte (where a flip changes how the file is read)."""
    with zipfile.ZipFile(p) as zf:
        out = list(range(zf.start_dir, p.stat().st_size))  # central directory + end record
        for info in zf.infolist():
            out += range(info.header_offset, info.header_offset + 30 + len(info.filename) + 12)
    return sorted(set(out))


def _check_flip(raw, i, q, arrays):
    b = bytearray(raw)
    b[i] ^= 0xFF
    q.write_bytes(bytes(b))
    got = safe_load_npz(q)  # must not raise
    if got is not None:
        assert set(got) == set(arrays), i
        for k in arrays:
            np.testing.assert_array_equal(got[k], arrays[k], err_msg=f"byte {i}")


class _Payload:
    """Unpickling this creates a folder: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_loading_never_unpickles(model, tiny_sd_dir, monkeypatch, tmp_path):
    """An old-format (npz) chunk carrying a pickle is never unpickled: it is recomputed."""
    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    c = cfg(tiny_sd_dir)
    fs = get_features(c, ["up_blocks.1"], model=model)
    ref = fs.features["up_blocks.1"]
    cache = FeatureCache()
    marker = tmp_path / "unpickled"
    recs = select_images(c)[1]
    ids = [r.id for r in recs[16:24]]
    np.savez(cache.chunk_path(fs.cache_key, 2), ids=np.array([_Payload(marker)] + ids[1:], dtype=object),
             skipped_ids=np.array([], dtype=str), skipped_reasons=np.array([], dtype=str),
             **{"f:up_blocks.1": ref[16:24]})
    chunk_files(os.environ["DOMAINLENS_CACHE_DIR"], fs.cache_key)[2].unlink()

    assert safe_load_npz(cache.chunk_path(fs.cache_key, 2)) is None
    with UNetCounter(model.unet) as counter:
        again = get_features(c, ["up_blocks.1"], model=model)
    assert not marker.exists()
    assert again.n_unet_images == 8 and counter.images == 8
    np.testing.assert_allclose(again.features["up_blocks.1"], ref, rtol=0, atol=1e-6)

    # the payload is live: a loader that allowed pickles would have run it
    evil = tmp_path / "evil.npz"
    np.savez(evil, ids=np.array([_Payload(marker)], dtype=object))
    assert safe_load_npz(evil) is None and not marker.exists()
    with np.load(evil, allow_pickle=True) as z:
        z["ids"]
    assert marker.exists()


def test_result_cache_rejects_damage(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.save_result("scores", "abcdef", {"x": np.arange(3.0)})
    np.testing.assert_array_equal(cache.load_result("scores", "abcdef")["x"], np.arange(3.0))
    p = next((tmp_path / "scores").rglob("abcdef.npz"))
    _wrong_digest_any(p)
    assert cache.load_result("scores", "abcdef") is None


def _wrong_digest_any(p):
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x"] = arrays["x"] + 1
    with open(p, "wb") as f:
        np.savez(f, **arrays)


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "sub" / "chunk-00000.npz"
    atomic_save_npz(p, {"a": np.ones(3)})

    def fail(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_npz(p, {"a": np.zeros(3)})
    assert sorted(x.name for x in p.parent.iterdir()) == ["chunk-00000.npz"]  # no temp file left
    np.testing.assert_array_equal(safe_load_npz(p)["a"], np.ones(3))  # the old file is untouched


# ------------------------------------------------------------------------------------- cache key


def _key(config, model, dataset=None):
    ds, recs = select_images(config, dataset)
    return cache_key(config, model, ds, recs)


def test_cache_key_changes_with_every_setting(model, tiny_sd_dir):
    base = cfg(tiny_sd_dir)
    k0 = _key(base, model)
    assert _key(cfg(tiny_sd_dir), model) == k0  # stable
    variants = {
        "timestep": cfg(tiny_sd_dir, timestep=51),
        "seed": cfg(tiny_sd_dir, seed=1),
        "custom prompt": cfg(tiny_sd_dir, prompt=PromptSpec.parse(prompt="a sketch")),
        "template prompt": cfg(tiny_sd_dir, prompt=PromptSpec.parse(template="a photo of a {class}")),
        "other template": cfg(tiny_sd_dir, prompt=PromptSpec.parse(template="a sketch of a {class}")),
        "resolution": cfg(tiny_sd_dir, resolution=32),
        "ensemble": cfg(tiny_sd_dir, ensemble=2),
        "selection": cfg(tiny_sd_dir, max_per_domain=9),
    }
    keys = {name: _key(c, model) for name, c in variants.items()}
    for name, k in keys.items():
        assert k != k0, name
    assert len(set(keys.values())) == len(keys)
    # the model's own resolution spelled out is the same setting
    assert _key(cfg(tiny_sd_dir, resolution=model.resolution), model) == k0


def test_cache_key_ignores_batch_size(model, tiny_sd_dir):
    c = cfg(tiny_sd_dir, max_per_domain=4)
    a = get_features(c, ["mid_block"], model=model, batch_size=3)
    with UNetCounter(model.unet) as counter:
        b = get_features(c, ["mid_block"], model=model, batch_size=16)
    assert a.cache_key == b.cache_key and b.n_unet_images == 0 and counter.calls == 0


def test_cache_key_follows_dataset_content(model, tiny_sd_dir, tmp_path):
    root = make_domainbed(tmp_path / "ds", seed=1)
    c = ExtractionConfig(dataset=str(root), model=str(tiny_sd_dir))
    k0 = _key(c, model)
    assert _key(c, model) == k0

    f = root / "art" / "cat" / "img0.png"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touched (or rewritten)
    k1 = _key(c, model)
    assert k1 != k0

    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "photo" / "dog" / "new.png")  # a file added
    k2 = _key(c, model)
    assert k2 not in (k0, k1)

    # and the engine follows: the touched dataset is extracted again
    fs = get_features(c, ["mid_block"], model=model)
    assert fs.cache_key == k2 and fs.n_unet_images == 9


def _perturb_unet_weights(folder):
    from safetensors.torch import load_file, save_file

    p = folder / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(p)
    name = sorted(sd)[0]
    sd[name] = sd[name] + 1e-3
    save_file(sd, p, metadata={"format": "pt"})


def test_cache_key_follows_model_weights(model, tiny_sd_dir, tiny_sd_copy):
    c = cfg(tiny_sd_dir)
    k0 = _key(c, model)
    # the identity is the folder's content, not its path
    assert folder_identity(tiny_sd_copy) == folder_identity(tiny_sd_dir) == model.identity
    _perturb_unet_weights(tiny_sd_copy)
    assert folder_identity(tiny_sd_copy) != model.identity
    changed = load_model(str(tiny_sd_copy), "cpu")
    assert changed.identity != model.identity
    assert _key(cfg(tiny_sd_copy), changed) != k0
    # a copy of the unchanged model shares the cache entry
    same = tiny_sd_copy.parent / "same"
    shutil.copytree(tiny_sd_dir, same)
    assert _key(cfg(same), load_model(str(same), "cpu")) == k0


def test_chunk_layout_is_safetensors_per_layer(model, tiny_sd_dir, monkeypatch):
    import safetensors.numpy

    monkeypatch.setattr(FeatureCache, "CHUNK", 8)
    fs = get_features(cfg(tiny_sd_dir, max_per_domain=4), ["up_blocks.1", "mid_block"], model=model)
    entry = FeatureCache().entry_dir(fs.cache_key)
    assert sorted(p.name for p in entry.iterdir()) == ["L-mid_block", "L-up_blocks.1", "meta.json"]
    files = chunk_files(os.environ["DOMAINLENS_CACHE_DIR"], fs.cache_key, "up_blocks.1")
    assert [f.name for f in files] == ["c-00000.safetensors", "c-00001.safetensors"]
    for f in files:
        t = safetensors.numpy.load_file(f)  # any safetensors reader opens it
        assert list(t) == ["f"] and t["f"].dtype == np.float32 and t["f"].shape == (8, 32)
        assert f.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the documented policy: like any user file
    assert (entry / "meta.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_weight_hash_memo_follows_cache_dir_set_after_import(tiny_sd_copy, tmp_path, monkeypatch):
    """The weight-hash memo goes to the DOMAINLENS_CACHE_DIR of the moment (core was imported long
    before this test set it), never to a directory fixed at import time such as the user's home."""
    where = tmp_path / "elsewhere"
    monkeypatch.setenv("DOMAINLENS_CACHE_DIR", str(where))
    ident = folder_identity(tiny_sd_copy)
    memo = where / "weight-hashes.json"
    assert memo.is_file()
    assert any(str(tiny_sd_copy.resolve()) in k for k in json.loads(memo.read_text()))
    assert folder_identity(tiny_sd_copy) == ident  # served from the memo, same answer
