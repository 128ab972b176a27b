"""Tests for feature extraction: the SD backbone (core/backbones/sd_unet.py), loading (registry.py) and the
extraction path of the engine (core/engine/extract.py).

Everything runs on the CPU with the tiny random SD-format model of ``core.testing.make_tiny_sd`` (64 px,
7 blocks), loaded through the real loader. The recipe itself is checked against a plain
re-implementation written here from the paper (diffusers components used directly, no core internals).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import core.engine.extract
from core.data.datasets import load_dataset, load_rgb
from core.engine.extract import ExtractionConfig, get_features
from core.backbones.base import ExtractionError, ModelError, Request, image_seed
from core.backbones.base import center_crop as preprocess
from core.backbones.registry import load_backbone as load_model
from core.engine.extract import MICRO_BATCH, run_batches
from core.engine.prompts import PromptSpec
from core.testing import make_domainbed

TINY_BLOCKS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
               "up_blocks.0", "up_blocks.1", "up_blocks.2"]
RESOLUTION = 64  # the tiny model's image size (8x8x4 latents)


# ------------------------------------------------------------------------------------------ helpers


def unet_block_features(model, x0, ids, timestep, prompts, blocks, seed=0, ensemble=1, early_exit=True):
    """One forward per noise draw through the backbone seam: ``{block: (B, C) tensor}``."""
    return model.forward_features(x0, ids, blocks, Request(timestep=timestep, prompts=tuple(prompts), seed=seed,
                                                           ensemble=ensemble), early_exit=early_exit)


def extract_batch(model, pixels, ids, prompts, blocks, timestep, seed=0):
    out = unet_block_features(model, model.encode(pixels), ids, timestep, prompts, blocks, seed)
    return {b: v.numpy() for b, v in out.items()}


def embed(model, prompts):
    return model.encode_prompts(prompts)["encoder_hidden_states"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def no_latent_memo(monkeypatch):
    """Make every extraction VAE-encode its images again (the engine may keep clean latents in memory)."""
    memo = getattr(core.engine.extract, "LATENT_MEMO", None)
    if memo is not None:
        monkeypatch.setattr(memo, "max_bytes", 0)


@pytest.fixture()
def model(tiny_sd_dir):
    return load_model(str(tiny_sd_dir), "cpu")


def cfg(model_dir, **kw) -> ExtractionConfig:
    kw.setdefault("dataset", "synthetic-pacs")
    kw.setdefault("max_per_domain", 8)
    return ExtractionConfig(model=str(model_dir), **kw)


# non-square sizes of several aspect ratios, so that resize + center crop really do something
SIZES = [(80, 64), (64, 96), (100, 70), (70, 140)]



def hooks_everywhere(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def block(unet, name):
    if name == "mid_block":
        return unet.mid_block
    kind, idx = name.split(".")
    return getattr(unet, kind)[int(idx)]


class CallCounter:
    """Counts forward calls of modules with forward *pre*-hooks (which run before any early exit)."""

    def __init__(self, *modules):
        self.calls = [0] * len(modules)
        self.images = 0
        self.handles = [m.register_forward_pre_hook(self._make(i)) for i, m in enumerate(modules)]

    def _make(self, i):
        def pre(module, args, *rest):
            self.calls[i] += 1
            if i == 0 and args:
                self.images += args[0].shape[0]

        return pre

    def remove(self):
        for h in self.handles:
            h.remove()


# ----------------------------------------------------------------- plain re-implementation (paper)


class PlainRecipe:
    """The paper's recipe written out plainly with diffusers/transformers components (no core code
    except ``image_seed`` for the per-image seed derivation)."""

    def __init__(self, folder):
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
        self.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()

    @staticmethod
    def image_tensor(path, resolution=RESOLUTION):
        im = Image.open(path).convert("RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        nw, nh = round(w * scale), round(h * scale)
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        x = torch.tensor(np.array(im), dtype=torch.float32).permute(2, 0, 1) / 127.5 - 1.0
        return x[None]  # (1, 3, R, R)

    @torch.no_grad()
    def embed(self, prompt):
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]  # (1, L, D)

    @torch.no_grad()
    def features(self, path, image_id, blocks=("up_blocks.1",), timestep=50, seed=0, prompt="", draw=0):
        x = self.image_tensor(path)
        x0 = self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor  # (1, 4, 8, 8)
        g = torch.Generator().manual_seed(image_seed(seed, image_id, draw))
        noise = torch.randn(x0.shape[1:], generator=g)[None]
        t = torch.tensor([timestep])
        x_t = self.scheduler.add_noise(x0, noise, t)
        got = {}
        handles = []
        for name in blocks:
            def hook(module, args, out, name=name):
                h = out[0] if isinstance(out, tuple) else out
                got[name] = h.mean(dim=(2, 3))[0].numpy()

            handles.append(block(self.unet, name).register_forward_hook(hook))
        try:
            self.unet(x_t, t, encoder_hidden_states=self.embed(prompt))  # full forward, no early exit
        finally:
            for h in handles:
                h.remove()
        return got


@pytest.fixture(scope="module")
def plain(tiny_sd_dir):
    return PlainRecipe(tiny_sd_dir)


@pytest.fixture()
def small_ds(tmp_path):
    return make_domainbed(tmp_path / "ds", seed=0, sizes=SIZES)


# ---------------------------------------------------------------------------------- shapes, order


def test_block_shapes_and_order(model, tiny_sd_dir):
    assert model.blocks == TINY_BLOCKS
    assert model.resolution == RESOLUTION
    bo = list(model.unet.config.block_out_channels)
    channels = {f"down_blocks.{i}": c for i, c in enumerate(bo)}
    channels["mid_block"] = bo[-1]
    channels.update({f"up_blocks.{i}": c for i, c in enumerate(reversed(bo))})
    fs = get_features(cfg(tiny_sd_dir), list(reversed(TINY_BLOCKS)), model=model)
    assert list(fs.features) == TINY_BLOCKS  # UNet order whatever order they were asked in
    n = len(fs)
    assert n == 32 and len(fs.ids) == len(fs.domains) == len(fs.classes) == len(fs.paths) == n
    assert fs.ids == sorted(fs.ids)
    for b, f in fs.features.items():
        assert f.shape == (n, channels[b]), b
        assert f.dtype == np.float32
        assert np.isfinite(f).all()
    assert fs.features["down_blocks.0"].shape[1] != fs.features["mid_block"].shape[1]  # really per block


def test_all_blocks_in_one_pass_equal_one_block_per_pass(model, tiny_sd_dir, tmp_path):
    c = cfg(tiny_sd_dir)
    counter = CallCounter(model.unet)
    try:
        together = get_features(c, "all", model=model, cache_dir=str(tmp_path / "all"))
    finally:
        counter.remove()
    assert counter.calls[0] == 32 // MICRO_BATCH  # one UNet pass per micro-batch for all 7 blocks together
    for b in TINY_BLOCKS:
        counter = CallCounter(model.unet)
        try:
            alone = get_features(c, [b], model=model, cache_dir=str(tmp_path / b))
        finally:
            counter.remove()
        assert counter.calls[0] == 32 // MICRO_BATCH
        assert list(alone.features) == [b]
        np.testing.assert_array_equal(together.features[b], alone.features[b])


# ------------------------------------------------------------------------------------ early exit


def test_early_exit_equals_full_forward(model, tiny_sd_dir):
    ds = load_dataset("synthetic-pacs")
    recs = ds.subsample(2, None, 0)
    pixels = torch.stack([preprocess(load_rgb(r.path), RESOLUTION) for r in recs])
    cond = [""] * len(recs)
    ids = [r.id for r in recs]
    x0 = model.encode(pixels)
    for blocks in (["down_blocks.0"], ["down_blocks.1", "mid_block"], ["up_blocks.1"], TINY_BLOCKS):
        fast = unet_block_features(model, x0, ids, 50, cond, blocks, early_exit=True)
        full = unet_block_features(model, x0, ids, 50, cond, blocks, early_exit=False)
        assert list(fast) == blocks
        for b in blocks:
            np.testing.assert_array_equal(fast[b].numpy(), full[b].numpy())


@pytest.mark.parametrize("early_exit, expect_later", [(True, 0), (False, 1)])
def test_early_exit_really_stops(model, early_exit, expect_later):
    unet = model.unet
    x0 = torch.randn(2, 4, 8, 8)
    cond = ["", ""]
    counter = CallCounter(unet, unet.down_blocks[0], unet.down_blocks[1], unet.mid_block, unet.up_blocks[2],
                          unet.conv_out)
    try:
        out = unet_block_features(model, x0, ["a", "b"], 50, cond, ["down_blocks.0"], early_exit=early_exit)
    finally:
        counter.remove()
    assert out["down_blocks.0"].shape == (2, 16)
    unet_calls, db0, db1, mid, ub2, conv_out = counter.calls
    assert (unet_calls, db0) == (1, 1)
    assert db1 == mid == ub2 == conv_out == expect_later
    assert hooks_everywhere(unet) == 0


def test_hooks_removed_after_success_and_after_exception(model):
    unet = model.unet
    assert hooks_everywhere(unet) == 0
    x0 = torch.randn(1, 4, 8, 8)
    cond = [""]
    unet_block_features(model, x0, ["a"], 10, cond, ["down_blocks.1", "up_blocks.1"])
    assert hooks_everywhere(unet) == 0
    unet_block_features(model, x0, ["a"], 10, cond, TINY_BLOCKS, early_exit=False)
    assert hooks_everywhere(unet) == 0

    # an error inside the UNet forward, between two requested blocks
    def boom(module, args):
        raise RuntimeError("boom inside the UNet")

    h = unet.mid_block.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom inside the UNet"):
            unet_block_features(model, x0, ["a"], 10, cond, ["down_blocks.0", "up_blocks.1"])
    finally:
        h.remove()
    assert hooks_everywhere(unet) == 0

    # an error in the body of the context manager
    with pytest.raises(KeyError):
        with model.hooks(["down_blocks.0", "up_blocks.2"]):
            assert hooks_everywhere(unet) == 2
            raise KeyError("body")
    assert hooks_everywhere(unet) == 0

    # an unknown block registers nothing
    with pytest.raises(ExtractionError, match=r"unknown layer\(s\) \['up_blocks.7'\].*valid layers: down_blocks.0"):
        with model.hooks(["down_blocks.0", "up_blocks.7"]):
            pass
    assert hooks_everywhere(unet) == 0
    # the UNet still runs normally afterwards
    assert unet(x0, 10, encoder_hidden_states=embed(model, cond)).sample.shape == (1, 4, 8, 8)


# --------------------------------------------------------------------------------- determinism


def test_features_same_across_batch_sizes_and_runs(model, tiny_sd_dir, tmp_path, no_latent_memo):
    c = cfg(tiny_sd_dir, max_per_domain=6)  # 24 images: batch 3 leaves no remainder, batch 32 holds all
    runs = {bs: get_features(c, "all", model=model, batch_size=bs, cache_dir=str(tmp_path / f"bs{bs}"))
            for bs in (1, 3, 32)}
    again = get_features(c, "all", model=model, batch_size=32, cache_dir=str(tmp_path / "again"))
    assert all(fs.n_unet_images == 24 for fs in runs.values())
    ref = runs[32]
    for b in TINY_BLOCKS:
        np.testing.assert_array_equal(again.features[b], ref.features[b])  # same run twice: bit-identical
        for bs in (1, 3):
            assert runs[bs].ids == ref.ids
            # the engine runs fixed micro-batches on the CPU: bit-identical whatever the batch size
            np.testing.assert_array_equal(runs[bs].features[b], ref.features[b])
    assert len({fs.cache_key for fs in runs.values()}) == 1  # batch size is not part of the key


def test_features_independent_of_image_order_and_neighbours(model, tiny_sd_dir, tmp_path):
    ds = load_dataset("synthetic-pacs")
    recs = ds.subsample(2, None, 0)[:6]
    pixels = torch.stack([preprocess(load_rgb(r.path), RESOLUTION) for r in recs])
    ids = [r.id for r in recs]
    fwd = extract_batch(model, pixels, ids, [""] * 6, TINY_BLOCKS, 50)
    perm = [4, 1, 5, 0, 3, 2]
    rev = extract_batch(model, pixels[perm], [ids[i] for i in perm], [""] * 6, TINY_BLOCKS, 50)
    for b in TINY_BLOCKS:
        np.testing.assert_allclose(rev[b], fwd[b][perm], rtol=0, atol=1e-5)
    # the noise belongs to the image id, not to the position: swapping ids changes the features
    swapped = extract_batch(model, pixels, ids[::-1], [""] * 6, ["up_blocks.1"], 50)
    assert not np.allclose(swapped["up_blocks.1"], fwd["up_blocks.1"], atol=1e-4)

    # an image's features do not depend on which other images were selected with it
    small = get_features(cfg(tiny_sd_dir, max_per_domain=4), ["up_blocks.1"], model=model,
                         cache_dir=str(tmp_path / "a"))
    large = get_features(cfg(tiny_sd_dir, max_per_domain=8), ["up_blocks.1"], model=model,
                         cache_dir=str(tmp_path / "b"))
    pos = {i: k for k, i in enumerate(large.ids)}
    assert set(small.ids) < set(large.ids)
    rows = [pos[i] for i in small.ids]
    np.testing.assert_allclose(small.features["up_blocks.1"], large.features["up_blocks.1"][rows],
                               rtol=0, atol=1e-5)


def test_seed_and_timestep_change_features(model):
    ds = load_dataset("synthetic-pacs")
    recs = ds.subsample(1, None, 0)
    pixels = torch.stack([preprocess(load_rgb(r.path), RESOLUTION) for r in recs])
    ids = [r.id for r in recs]
    base = extract_batch(model, pixels, ids, [""] * 4, ["up_blocks.1"], 50, seed=0)["up_blocks.1"]
    again = extract_batch(model, pixels, ids, [""] * 4, ["up_blocks.1"], 50, seed=0)["up_blocks.1"]
    other_seed = extract_batch(model, pixels, ids, [""] * 4, ["up_blocks.1"], 50, seed=1)["up_blocks.1"]
    other_t = extract_batch(model, pixels, ids, [""] * 4, ["up_blocks.1"], 500, seed=0)["up_blocks.1"]
    np.testing.assert_array_equal(base, again)
    assert (np.abs(base - other_seed).max(axis=1) > 1e-5).all()
    assert (np.abs(base - other_t).max(axis=1) > 1e-4).all()


# ---------------------------------------------------------------------- the paper's recipe, plainly


def test_engine_matches_plain_paper_recipe(model, tiny_sd_dir, plain, small_ds, no_latent_memo):
    blocks = ["down_blocks.1", "mid_block", "up_blocks.1"]
    fs = get_features(ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir)), blocks, model=model,
                      batch_size=3)
    assert len(fs) == 8
    for k, (iid, path) in enumerate(zip(fs.ids, fs.paths)):
        ref = plain.features(path, iid, blocks)
        for b in blocks:
            np.testing.assert_allclose(fs.features[b][k], ref[b], rtol=0, atol=1e-5, err_msg=f"{iid} {b}")
    # the paper's default block is up_blocks.1 at t=50 with the empty prompt
    assert model.default_block == "up_blocks.1"
    assert ExtractionConfig().timestep == 50 and ExtractionConfig().prompt == PromptSpec()


def test_preprocess_resizes_short_side_and_center_crops(small_ds):
    for p in sorted(small_ds.rglob("*.png")):
        x = preprocess(load_rgb(str(p)), RESOLUTION)
        assert x.shape == (3, RESOLUTION, RESOLUTION) and x.dtype == torch.float32
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
        np.testing.assert_allclose(x.numpy(), PlainRecipe.image_tensor(p)[0].numpy(), atol=1e-6)


# ----------------------------------------------------------------------------------------- prompts


def test_class_template_encodes_each_prompt_once(model, tiny_sd_dir, monkeypatch, plain, small_ds):
    model._prompt_memo.clear()
    n0 = model.n_prompts_encoded
    spec = PromptSpec.parse(template="a photo of a {class}")
    assert spec.for_class("cat") == "a photo of a cat"
    assert spec.for_class("big_dog") == "a photo of a big dog"
    fs = get_features(cfg(tiny_sd_dir, prompt=spec), ["up_blocks.1"], model=model, batch_size=4)  # 8 batches
    assert len(fs.class_names) == 6 and set(fs.classes) == set(fs.class_names)
    assert model.n_prompts_encoded - n0 == 6  # one per distinct prompt (= class), not per batch or image
    empty = get_features(cfg(tiny_sd_dir), ["up_blocks.1"], model=model, batch_size=32)
    assert empty.ids == fs.ids
    diff = np.abs(empty.features["up_blocks.1"] - fs.features["up_blocks.1"]).max(axis=1)
    assert (diff > 1e-4).all()  # text conditioning changes every image's features

    # per-class prompts equal the plain recipe with "a photo of a <class>"
    fs2 = get_features(ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir), prompt=spec),
                       ["up_blocks.1"], model=model)
    for k, (iid, path, c) in enumerate(zip(fs2.ids, fs2.paths, fs2.classes)):
        ref = plain.features(path, iid, prompt=f"a photo of a {c}")["up_blocks.1"]
        np.testing.assert_allclose(fs2.features["up_blocks.1"][k], ref, rtol=0, atol=1e-5)


def test_prompt_encoder_memoises(model):
    model._prompt_memo.clear()
    n0 = model.n_prompts_encoded
    calls = []
    h = model.text_encoder.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        e1 = embed(model, ["", "a cat", "", "a cat", "a dog"])
        e2 = embed(model, ["a dog", ""])
    finally:
        h.remove()
    assert model.n_prompts_encoded - n0 == 3 and len(calls) == 3  # each distinct prompt once, alone
    assert e1.shape == (5, model.tokenizer.model_max_length, 32)
    torch.testing.assert_close(e1[0], e1[2])
    torch.testing.assert_close(e2[0], e1[4])
    assert not torch.allclose(e1[0], e1[1])


def test_custom_prompt(model, tiny_sd_dir, plain, small_ds):
    spec = PromptSpec.parse(prompt="a sketch")
    assert spec.mode == "custom" and spec.for_class("cat") == "a sketch"
    fs = get_features(ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir), prompt=spec),
                      ["up_blocks.1"], model=model)
    empty = get_features(ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir)), ["up_blocks.1"],
                         model=model)
    assert not np.allclose(fs.features["up_blocks.1"], empty.features["up_blocks.1"], atol=1e-4)
    for k in (0, 5):
        ref = plain.features(fs.paths[k], fs.ids[k], prompt="a sketch")["up_blocks.1"]
        np.testing.assert_allclose(fs.features["up_blocks.1"][k], ref, rtol=0, atol=1e-5)


def test_prompt_spec_errors():
    with pytest.raises(ExtractionError, match=r"must contain \{class\}"):
        PromptSpec("template", "a photo of a thing")
    with pytest.raises(ExtractionError, match=r"must contain \{class\}"):
        PromptSpec.parse(template="a photo")
    with pytest.raises(ExtractionError, match="prompt mode must be empty, template, custom, per-class or per-image"):
        PromptSpec("negative", "x")
    with pytest.raises(ExtractionError, match="either a prompt or a prompt template, not both"):
        PromptSpec.parse(prompt="a cat", template="a {class}")
    assert PromptSpec.parse() == PromptSpec() and PromptSpec().for_class("cat") == ""


# ---------------------------------------------------------------------------------------- ensemble


def test_ensemble_is_mean_of_draws(model, tiny_sd_dir, plain, small_ds, tmp_path):
    c1 = ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir))
    c2 = ExtractionConfig(dataset=str(small_ds), model=str(tiny_sd_dir), ensemble=2)
    one = get_features(c1, ["up_blocks.1"], model=model).features["up_blocks.1"]
    two = get_features(c2, ["up_blocks.1"], model=model)
    again = get_features(c2, ["up_blocks.1"], model=model, cache_dir=str(tmp_path / "other"))
    f2 = two.features["up_blocks.1"]
    np.testing.assert_array_equal(f2, again.features["up_blocks.1"])
    assert again.n_unet_images == 8  # really recomputed, not read from the same cache
    assert not np.allclose(f2, one, atol=1e-4)
    for k in range(len(two)):
        d0 = plain.features(two.paths[k], two.ids[k], draw=0)["up_blocks.1"]
        d1 = plain.features(two.paths[k], two.ids[k], draw=1)["up_blocks.1"]
        np.testing.assert_allclose(one[k], d0, rtol=0, atol=1e-5)
        np.testing.assert_allclose(f2[k], (d0 + d1) / 2, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("timestep", [1000, -1, 5000])
def test_timestep_out_of_range(model, tiny_sd_dir, timestep):
    with pytest.raises(ExtractionError, match=r"must be in \[0, 999\]"):
        get_features(cfg(tiny_sd_dir, timestep=timestep), model=model)


def test_extraction_errors(model, tiny_sd_dir):
    with pytest.raises(ExtractionError, match="must be an integer"):
        get_features(cfg(tiny_sd_dir, timestep=50.5), model=model)
    with pytest.raises(ExtractionError, match=r"unknown block\(s\) \['up_blocks.9'\]"):
        get_features(cfg(tiny_sd_dir), ["up_blocks.1", "up_blocks.9"], model=model)
    with pytest.raises(ExtractionError, match="unknown block"):
        get_features(cfg(tiny_sd_dir), "mid_block,decoder", model=model)
    for empty in ([], ",", " , "):
        with pytest.raises(ExtractionError, match="no block given; pass 'all' or some of"):
            get_features(cfg(tiny_sd_dir), empty, model=model)
    with pytest.raises(ExtractionError, match="`batch_size` must be >= 1, got 0"):
        get_features(cfg(tiny_sd_dir), model=model, batch_size=0)
    with pytest.raises(ExtractionError, match="`ensemble` must be >= 1, got 0"):
        ExtractionConfig(ensemble=0)
    with pytest.raises(ExtractionError, match="`ensemble` must be >= 1, got 0"):
        unet_block_features(model, torch.zeros(1, 4, 8, 8), ["a"], 50, [""], ["mid_block"], ensemble=0)
    with pytest.raises(ExtractionError, match="pooling must be 'mean'"):
        ExtractionConfig(pooling="max")
    with pytest.raises(ExtractionError, match="`resolution` must be >= 8"):
        ExtractionConfig(resolution=4)


def test_model_errors(tiny_sd_dir, tiny_sd_copy, tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="Unknown model 'no-such-model'"):
        load_model("no-such-model", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"is not a supported model folder \(found: no model_index.json.*"
                                         r"Supported families: sd-unet"):
        load_model(str(tmp_path / "empty"), "cpu")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(tmp_path / "file.bin"), "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"not in the local Hugging Face cache.*`hf download "
                                         r"domainlens-test/not-cached-xyz --local-dir DIR`.*local folder"):
        load_model("domainlens-test/not-cached-xyz", "cpu")
    st = tiny_sd_copy / "unet" / "diffusion_pytorch_model.safetensors"
    st.rename(st.with_suffix(".bin"))
    with pytest.raises(ModelError, match=r"holds only pickle weights \(diffusion_pytorch_model\.bin\).*safetensors only"):
        load_model(str(tiny_sd_copy), "cpu")
    with pytest.raises(ModelError, match="Unknown dtype 'float8'"):
        load_model(str(tiny_sd_dir), "cpu", "float8")
    with pytest.raises(ModelError, match="Unknown device 'tpu9'"):
        load_model(str(tiny_sd_dir), "tpu9")


def test_cuda_requested_without_cuda(tiny_sd_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    with pytest.raises(ModelError, match="CUDA was asked for but no CUDA GPU is visible"):
        load_model(str(tiny_sd_dir), "cuda")


def test_auto_device_is_cpu_float32_without_gpu(tiny_sd_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible")
    m = load_model(str(tiny_sd_dir), "auto")
    if m.device.type == "cpu":
        assert m.dtype == torch.float32
        assert next(m.unet.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------------- OOM batch halving


def test_run_batches_halves_on_cuda_oom():
    data = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    attempts, done = [], []

    def fn(sl):
        attempts.append(sl.stop - sl.start)
        if sl.stop - sl.start > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"a": data[sl] * 2, "b": data[sl, :1]}

    out = run_batches(fn, 23, 32, progress=done.append)
    np.testing.assert_array_equal(out["a"], data * 2)
    np.testing.assert_array_equal(out["b"], data[:, :1])
    assert attempts[:4] == [23, 16, 8, 4]  # 32 -> 16 -> 8 -> 4, then carries on at 4
    assert max(done) == 4 and sum(done) == 23
    assert attempts[4:] == [4, 4, 4, 4, 3]  # 23 = 4 + 4 * 4 + 3
    unbatched = run_batches(lambda sl: {"a": data[sl] * 2, "b": data[sl, :1]}, 23, 1)
    np.testing.assert_array_equal(out["a"], unbatched["a"])


def test_run_batches_gives_up_at_batch_one_and_keeps_other_errors():
    def always_oom(sl):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_batches(always_oom, 5, 8)

    def broken(sl):
        raise RuntimeError("not an OOM")

    with pytest.raises(RuntimeError, match="not an OOM"):
        run_batches(broken, 5, 8)


def test_extraction_survives_simulated_oom(model, tiny_sd_dir, tmp_path):
    c = cfg(tiny_sd_dir, max_per_domain=4)
    ref = get_features(c, ["up_blocks.1"], model=model, cache_dir=str(tmp_path / "ref"))
    sizes = []

    def oom_above_4(module, args, kwargs):
        if args[0].shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        sizes.append(args[0].shape[0])

    h = model.unet.register_forward_pre_hook(oom_above_4, with_kwargs=True)
    try:
        fs = get_features(c, ["up_blocks.1"], model=model, batch_size=16, cache_dir=str(tmp_path / "oom"))
    finally:
        h.remove()
    assert sizes == [4, 4, 4, 4] and fs.n_unet_images == 16
    assert hooks_everywhere(model.unet) == 0
    np.testing.assert_allclose(fs.features["up_blocks.1"], ref.features["up_blocks.1"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- unreadable files


def test_unreadable_images_are_skipped_and_reported(model, tiny_sd_dir, tmp_path):
    root = make_domainbed(tmp_path / "ds", per_cell=3, seed=0, sizes=SIZES)
    (root / "art" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (root / "photo" / "dog" / "notes.txt").write_text("not an image")
    c = ExtractionConfig(dataset=str(root), model=str(tiny_sd_dir))
    fs = get_features(c, ["up_blocks.1", "mid_block"], model=model)
    assert len(fs) == 12 and "art/cat/broken.png" not in fs.ids
    assert [s[0] for s in fs.skipped] == ["art/cat/broken.png"]
    assert "cannot decode" in fs.skipped[0][1]
    assert fs.features["up_blocks.1"].shape == (12, 32)
    assert np.isfinite(fs.features["up_blocks.1"]).all()
    again = get_features(c, ["up_blocks.1"], model=model)  # from the cache: still reported
    assert again.n_unet_images == 0 and again.skipped == fs.skipped
    np.testing.assert_array_equal(again.features["up_blocks.1"], fs.features["up_blocks.1"])


# --------------------------------------------------------------------------- partial model folders


@pytest.fixture(scope="module")
def partial_models(tmp_path_factory):
    from core.testing import make_tiny_sd

    base = tmp_path_factory.mktemp("partial")
    return {"no_text": make_tiny_sd(base / "no_text", with_text=False),
            "pixel_space": make_tiny_sd(base / "pixel_space", with_text=False, with_vae=False)}


@pytest.mark.parametrize("kind", ["no_text", "pixel_space"])
def test_models_without_text_encoder_or_vae(partial_models, kind):
    folder = partial_models[kind]
    m = load_model(str(folder), "cpu")
    assert m.text_encoder is None and m.tokenizer is None and not m.uses_prompt
    if kind == "pixel_space":
        assert m.vae is None and m.unet.config.in_channels == 3
        assert m.resolution == m.unet.config.sample_size  # no VAE downsampling
    else:
        assert m.vae is not None and m.resolution == RESOLUTION
    c = ExtractionConfig(model=str(folder), max_per_domain=4)
    fs = get_features(c, "all", model=m)
    assert list(fs.features) == TINY_BLOCKS and len(fs) == 16
    assert all(np.isfinite(f).all() for f in fs.features.values())
    assert get_features(c, "all", model=m).n_unet_images == 0
    with pytest.raises(ExtractionError, match="has no text encoder"):
        get_features(ExtractionConfig(model=str(folder), max_per_domain=4, prompt=PromptSpec.parse("a cat")),
                     model=m)
    with pytest.raises(ExtractionError, match="no text encoder; only the empty prompt works"):
        embed(m, ["", "a cat"])
    assert embed(m, [""]).shape == (1, 1, 32)
