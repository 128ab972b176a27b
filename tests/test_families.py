"""Every model family through the public loader, with tiny random models saved in each family's Hub layout
(core/tiny_families.py): detected, loaded offline, layers in execution order, all layers from one pass,
deterministic across runs and batch sizes, early exit, cache keys that hold exactly the conditioning the
family takes, and `python -m core extract` on a folder of each kind."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.backbones.base import ExtractionError, Request
from core.backbones.registry import detect_family, load_backbone
from core.engine.extract import ExtractionConfig, cache_key
from core.engine.prompts import PromptSpec
from core.tiny_families import TINY, make_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# kind -> (family, files of the real Hub layout, takes: timestep / prompt / class label)
KINDS = {
    "dit": ("dit", ["model_index.json", "transformer/config.json", "vae/config.json",
                    "scheduler/scheduler_config.json"], (True, False, True)),
    "dit-legacy": ("dit", ["transformer/config.json"], (True, False, True)),
    "sdxl": ("sdxl", ["unet/config.json", "text_encoder_2/config.json", "tokenizer_2/tokenizer_config.json",
                      "vae/config.json"], (True, True, False)),
    "sd3": ("sd3", ["transformer/config.json", "text_encoder_2/config.json", "vae/config.json"], (True, True, False)),
    "sd3-t5": ("sd3", ["text_encoder_3/config.json", "tokenizer_3/tokenizer.json"], (True, True, False)),
    "flux": ("flux", ["transformer/config.json", "text_encoder_2/config.json"], (True, True, False)),
    "flux-dev": ("flux", ["transformer/config.json"], (True, True, False)),
    "pixart": ("pixart", ["transformer/config.json", "text_encoder/config.json"], (True, True, False)),
    "ddpm": ("ddpm", ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"],
             (True, False, False)),
    "ddpm-pipeline": ("ddpm", ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"],
                      (True, False, False)),
    "clip": ("hf-vision", ["config.json", "model.safetensors", "preprocessor_config.json"], (False, False, False)),
    "siglip": ("hf-vision", ["config.json", "model.safetensors", "preprocessor_config.json"], (False, False, False)),
    "dinov2": ("hf-vision", ["config.json", "model.safetensors", "preprocessor_config.json"], (False, False, False)),
    "dinov2-registers": ("hf-vision", ["config.json", "model.safetensors"], (False, False, False)),
    "mae": ("hf-vision", ["config.json", "model.safetensors", "preprocessor_config.json"], (False, False, False)),
}
IDS = ["img/a", "img/b", "img/c"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {k: make_tiny(k, root / k) for k in KINDS}


@pytest.fixture(scope="module")
def pixels_of():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 48, 3), dtype=np.uint8)) for i in range(3)]

    def inputs(bb):
        px = torch.stack([bb.preprocess(im, bb.resolution) for im in images])
        return bb.encode(px)

    return inputs


def _request(bb, **kw) -> Request:
    prompts = ("", "a photo of a dog", "") if bb.uses_prompt else ()
    return Request(timestep=50, prompts=kw.pop("prompts", prompts), **kw)


def _run_counts(bb):
    """Forward-pre-hooks counting how often each layer module runs, and the order they first ran in."""
    counts, order, handles = {}, [], []
    for name in bb.layers:
        def pre(module, args, name=name):
            counts[name] = counts.get(name, 0) + 1
            if name not in order:
                order.append(name)
        handles.append(bb.module(name).register_forward_pre_hook(pre))
    return counts, order, handles


@pytest.mark.parametrize("kind", list(KINDS))
def test_family_loads_extracts_and_exits_early(kind, folders, pixels_of):
    family, files, (takes_t, takes_prompt, takes_label) = KINDS[kind]
    folder = folders[kind]
    for f in files:  # the real Hub repository's layout
        assert (folder / f).is_file(), f"{kind}: {f} missing"
    assert detect_family(folder).family == family
    bb = load_backbone(str(folder), "cpu", "float32")
    assert bb.family == family
    assert (bb.uses_timestep, bb.uses_prompt, bb.uses_class_label) == (takes_t, takes_prompt, takes_label)
    assert bb.default_layer in bb.layers and len(bb.layers) >= 3
    if not takes_t:
        assert bb.key_conditioning(50, ("empty", ""), None, 0, 1, "noised")["timestep"] is None

    x0 = pixels_of(bb)
    req = _request(bb)
    # layers in execution order; all layers from one forward pass of the whole network
    counts, order, handles = _run_counts(bb)
    root_calls = []
    handles.append(bb.root.register_forward_pre_hook(lambda m, a, k=None: root_calls.append(1), with_kwargs=False))
    try:
        feats = bb.forward_features(x0, IDS, bb.layers, req, early_exit=False)
    finally:
        for h in handles:
            h.remove()
    assert order == bb.layers, f"{kind}: layers are not listed in execution order"
    assert len(root_calls) == 1 and all(counts[name] == 1 for name in bb.layers)
    assert list(feats) == bb.layers or set(feats) == set(bb.layers)
    for name, v in feats.items():
        assert v.dtype == torch.float32 and v.ndim == 2 and v.shape[0] == 3 and torch.isfinite(v).all(), name

    # deterministic across runs and batch sizes
    again = bb.forward_features(x0, IDS, bb.layers, req)
    assert all(torch.equal(feats[n], again[n]) for n in bb.layers)
    one = bb.forward_features(x0[1:2], IDS[1:2], bb.layers,
                              dataclasses.replace(req, prompts=req.prompts[1:2] if req.prompts else ()))
    for n in bb.layers:
        torch.testing.assert_close(one[n][0], feats[n][1], rtol=1e-5, atol=1e-5)

    # early exit: nothing after the deepest requested layer runs
    first = bb.layers[0]
    counts, order, handles = _run_counts(bb)
    try:
        out = bb.forward_features(x0, IDS, [first], req, early_exit=True)
    finally:
        for h in handles:
            h.remove()
    assert set(counts) == {first}, f"{kind}: layers after {first} ran: {sorted(set(counts) - {first})}"
    assert torch.equal(out[first], feats[first])

    # the un-pooled default layer as a spatial map (token sequences reshaped row-major)
    maps = bb.spatial_maps(x0, IDS, bb.default_layer, req)
    assert maps.ndim == 4 and maps.shape[:2] == (3, feats[bb.default_layer].shape[1])


@pytest.mark.parametrize("kind", ["dit", "sd3", "flux-dev", "pixart", "sdxl", "ddpm", "dinov2"])
def test_cache_key_holds_exactly_the_conditioning_the_family_takes(kind, folders, pixels_of):
    _, _, (takes_t, takes_prompt, takes_label) = KINDS[kind]
    bb = load_backbone(str(folders[kind]), "cpu", "float32")
    ds = SimpleNamespace(fingerprint="fixed")
    recs = [SimpleNamespace(id=i) for i in IDS]
    base = ExtractionConfig(dataset="x", model=str(folders[kind]), timestep=50)
    k0 = cache_key(base, bb, ds, recs)
    variants = {
        "timestep": (dataclasses.replace(base, timestep=100), takes_t),
        "prompt": (dataclasses.replace(base, prompt=PromptSpec("custom", "a sketch")), takes_prompt),
        "class_label": (dataclasses.replace(base, class_label=3), takes_label),
    }
    for what, (cfg, takes) in variants.items():
        assert (cache_key(cfg, bb, ds, recs) != k0) == takes, f"{kind}: a {what} change vs its key"
    # and the features really move where the key does
    x0 = pixels_of(bb)
    ref = bb.forward_features(x0, IDS, [bb.default_layer], Request(timestep=50))[bb.default_layer]
    if takes_t:
        other = bb.forward_features(x0, IDS, [bb.default_layer], Request(timestep=500))[bb.default_layer]
        assert not torch.allclose(ref, other)
    if takes_prompt:
        other = bb.forward_features(x0, IDS, [bb.default_layer],
                                    Request(timestep=50, prompts=("a sketch",) * 3))[bb.default_layer]
        assert not torch.allclose(ref, other)
    if takes_label:
        other = bb.forward_features(x0, IDS, [bb.default_layer], Request(timestep=50, class_label=3))[bb.default_layer]
        assert not torch.allclose(ref, other)


def test_dit_defaults_noise_modes_and_labels(folders, pixels_of):
    bb = load_backbone(str(folders["dit"]), "cpu", "float32")
    assert bb.default_layer == "transformer_blocks.2"  # block 14 of 28, scaled to 4 blocks
    assert bb.conditioning.null_class == 1000 and bb.conditioning.noise_modes == ("noised", "clean")
    assert not bb.transformer.training  # a DiT in train mode drops class labels at random
    x0 = pixels_of(bb)
    layer = [bb.default_layer]
    null = bb.forward_features(x0, IDS, layer, Request(timestep=50))[layer[0]]
    assert torch.equal(null, bb.forward_features(x0, IDS, layer, Request(timestep=50, class_label=1000))[layer[0]])
    clean = bb.forward_features(x0, IDS, layer, Request(timestep=50, noise_mode="clean"))[layer[0]]
    assert not torch.allclose(clean, null)
    # "clean": no noise is drawn, so seed and ensemble change neither the features nor the key
    assert torch.equal(clean, bb.forward_features(x0, IDS, layer, Request(timestep=50, noise_mode="clean", seed=7,
                                                                           ensemble=3))[layer[0]])
    k = lambda **kw: bb.key_conditioning(**{**dict(timestep=50, prompt=("empty", ""), class_label=None, seed=0,  # noqa: E731
                                                    ensemble=1, noise_mode="clean"), **kw})
    assert k() == k(seed=5, ensemble=2) != k(noise_mode="noised") and k() != k(timestep=60)
    with pytest.raises(ExtractionError, match="class label must be in"):
        bb.forward_features(x0, IDS, layer, Request(timestep=50, class_label=1001))
    with pytest.raises(ExtractionError, match="timestep"):
        bb.forward_features(x0, IDS, layer, Request(timestep=1000))


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "dinov2-registers", "mae"])
def test_vision_layers_equal_hidden_states_and_pooling_is_keyed(kind, folders, pixels_of):
    bb = load_backbone(str(folders[kind]), "cpu", "float32")
    x = pixels_of(bb)
    kw = {"noise": torch.arange(16.0).expand(3, -1)} if kind == "mae" else {}
    with torch.inference_mode():
        hs = bb.model(pixel_values=x, output_hidden_states=True, **kw).hidden_states
    n_prefix = {"clip": 1, "siglip": 0, "dinov2": 1, "dinov2-registers": 5, "mae": 1}[kind]
    assert bb.n_prefix == n_prefix and hs[1].shape[1] == n_prefix + 16  # every patch kept (MAE: no masking)
    poolings = ["mean"] if kind == "siglip" else ["cls", "mean"]
    assert bb.pooling == poolings[0]  # default: CLS where there is one
    keys = set()
    for p in poolings:
        b = bb.with_pooling(p)
        out = b.forward_features(x, IDS, b.layers, Request())
        for i, name in enumerate(b.layers):
            want = hs[i + 1][:, 0] if p == "cls" else hs[i + 1][:, n_prefix:].mean(1)  # registers skipped
            torch.testing.assert_close(out[name], want.float(), rtol=1e-5, atol=1e-5)
        keys.add(str(b.key_conditioning(50, ("empty", ""), None, 0, 1, "noised")))
    assert len(keys) == len(poolings)
    assert tuple(bb.spatial_maps(x, IDS, bb.default_layer, Request()).shape[2:]) == (4, 4)
    if kind == "siglip":
        with pytest.raises(ExtractionError, match="no CLS token"):
            bb.with_pooling("cls")
    # the checkpoint's own processor: another resolution rescales resize and crop
    img = Image.fromarray(np.zeros((50, 70, 3), np.uint8))
    assert tuple(bb.preprocess(img, bb.resolution).shape) == (3, 32, 32)
    assert tuple(bb.preprocess(img, 48).shape) == (3, 48, 48)


def test_token_pooling_through_config_engine_and_cli(folders, tmp_path, capsys):
    """ExtractionConfig.token_pooling: None is the backbone's default (same key as naming it), another choice
    is another key and other features, a choice the model lacks is an error naming the valid ones; the CLI's
    --token-pooling gives what core gives, and `models MODEL` lists the poolings and the default."""
    from core.cli import main
    from core.engine.extract import get_features, select_images

    clip = str(folders["clip"])
    bb = load_backbone(clip, "cpu", "float32")
    assert (bb.poolings, bb.default_pooling) == (("cls", "mean"), "cls")

    def cfg(tp, model=clip):
        return ExtractionConfig(dataset="synthetic-pacs", model=model, max_per_domain=1, token_pooling=tp)

    ds, recs = select_images(cfg(None))
    key = lambda tp, m=bb: cache_key(cfg(tp), m, ds, recs)  # noqa: E731
    assert key(None) == key("cls") == key(None, bb.with_pooling("mean")) != key("mean") == key("mean", bb.with_pooling("mean"))
    assert cfg("mean").to_dict()["token_pooling"] == "mean" and ExtractionConfig.from_dict(cfg("mean").to_dict()) == cfg("mean")
    with pytest.raises(ExtractionError, match="'max' is not offered .*use one of cls, mean"):
        key("max")
    siglip = load_backbone(str(folders["siglip"]), "cpu", "float32")
    assert (siglip.poolings, siglip.default_pooling) == (("mean",), "mean")
    with pytest.raises(ExtractionError, match="use one of mean .*no CLS token"):
        get_features(cfg("cls", str(folders["siglip"])), model=siglip)

    default = get_features(cfg(None), "all", model=bb)
    mean = get_features(cfg("mean"), "all", model=bb)
    assert default.cache_key != mean.cache_key and not np.allclose(default.features["layer.2"], mean.features["layer.2"])
    out = tmp_path / "mean.npz"
    assert main(["extract", "--dataset", "synthetic-pacs", "--model", clip, "--max-per-domain", "1",
                 "--token-pooling", "mean", "--export", str(out), "--no-progress"]) == 0
    with np.load(out) as z:
        assert list(z["paths"]) == mean.paths
        for layer in bb.layers:
            np.testing.assert_allclose(z[layer], mean.features[layer], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["extract", "--dataset", "synthetic-pacs", "--model", str(folders["dit"]), "--max-per-domain", "1",
                 "--token-pooling", "cls", "--no-progress"]) == 2
    assert "no pooling choice" in capsys.readouterr().err
    assert main(["models", clip]) == 0
    assert "token poolings: cls, mean (default cls" in capsys.readouterr().out


def test_every_tiny_family_has_a_test_folder():
    assert set(TINY) == set(KINDS)  # the CLI test below runs a folder of every family tiny_families builds


@pytest.mark.parametrize("kind", list(TINY))
def test_cli_extract_exports_layer_keys(kind, folders, tmp_path):
    """`python -m core extract --blocks all --timesteps 50 --export` on a folder of every tiny family: keys
    `<layer>@<timestep>` for timestep-taking families, `<layer>` otherwise; every declared layer; the rows are
    the selection."""
    from core.cli import main
    from core.engine.extract import select_images

    out = tmp_path / "out.npz"
    rc = main(["extract", "--dataset", "synthetic-pacs", "--model", str(folders[kind]), "--blocks", "all",
               "--timesteps", "50", "--max-per-domain", "1", "--export", str(out), "--no-progress"])
    assert rc == 0
    bb = load_backbone(str(folders[kind]), "cpu", "float32")
    _, records = select_images(ExtractionConfig(dataset="synthetic-pacs", model=str(folders[kind]),
                                                max_per_domain=1))
    with np.load(out) as z:
        keys = set(z.files) - {"paths", "domains", "classes"}
        want = {f"{n}@50" for n in bb.layers} if bb.uses_timestep else set(bb.layers)
        assert keys == want
        assert sorted(z["paths"].tolist()) == sorted(r.path for r in records) and len(records) == 4
        assert list(z["domains"]) == [next(r.domain for r in records if r.path == p) for p in z["paths"]]
        for k in keys:
            assert z[k].shape[0] == len(records) and z[k].ndim == 2 and np.isfinite(z[k]).all(), k


def test_unsupported_folder_names_what_it_found(tmp_path):
    from core.backbones.base import ModelError

    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(ModelError, match="BertModel.*Supported families: .*dit.*hf-vision"):
        detect_family(tmp_path)


def test_families_benchmark_rows(tmp_path):
    from bench.suite import BENCHMARKS, Ctx, bench_families

    assert BENCHMARKS[12][1] is bench_families
    out = bench_families(Ctx(quick=True, work=tmp_path, log=lambda m: None), kinds=("dit",), batch=2, reps=1)
    assert [r["unit"] for r in out["rows"]] == ["img/s"] * 2 and all(r["value"] > 0 for r in out["rows"])
    assert out["details"]["dit"]["layers_run_for_default"] == 3  # blocks 0..2 of 4: early exit skipped block 3
    assert not (tmp_path / "tiny-families").exists()


def test_flux_needs_a_resolution_its_packing_can_take(folders):
    bb = load_backbone(str(folders["flux"]), "cpu", "float32")
    with pytest.raises(ExtractionError, match="resolution divisible by 8"):
        bb.encode(torch.zeros(1, 3, 36, 36))
