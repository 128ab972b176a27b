"""Tests for the backbone seam (core/backbones: base, registry, sd_unet, baselines) and how the engine,
CLI and pages use it without knowing any family by name."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from core.backbones.registry import load_backbone
from core.engine.extract import ExtractionConfig, cache_key, select_images
from core.engine.prompts import PromptSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- pinned cache keys

# Computed on the pre-seam code (commit 7964f29, core/backbones/loading.py + features.py). They must not
# change: existing caches of SD models and baselines stay valid across the refactor. The dataset
# fingerprint (file sizes and mtimes: it differs per generated copy) is fixed to a constant here; every other
# part of the key is real.
PINNED = [
    ("domainlens-tiny", dict(timestep=50), "e8ded7b12c7b6ed84cefb7e75a771a72"),
    ("domainlens-tiny", dict(timestep=200, prompt=("template", "a photo of a {class}")),
     "4b4660c4e302b17c571c473e8595c6ac"),
    ("domainlens-tiny", dict(timestep=50, seed=1, ensemble=2), "0e5c269741dc384db6459003fee77b8f"),
    ("pixels", {}, "c886b1d4b6248a921560419ae31a1130"),
    ("domainlens-cnn", {}, "ee6b9cf213585c4b25fce868945cb1e1"),
]


def _load(name):
    return load_backbone(name, "cpu")


def _prompt_spec(mode, text):
    return PromptSpec(mode, text)


@pytest.mark.parametrize("name, kw, key", PINNED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PINNED)])
def test_cache_keys_pinned(name, kw, key):
    kw = dict(kw)
    if "prompt" in kw:
        kw["prompt"] = _prompt_spec(*kw["prompt"])
    c = ExtractionConfig(dataset="synthetic-pacs:heldout", model=name, max_per_domain=2, **kw)
    ds, recs = select_images(c)
    ds = dataclasses.replace(ds, fingerprint="pinned-fingerprint")
    assert cache_key(c, _load(name), ds, recs) == key


def test_token_pooling_left_unset_changes_no_key_and_maps_models_refuse_it():
    """``ExtractionConfig.token_pooling`` at None (the default) leaves every pinned key and every config dict
    (specs, memo keys) as they were; a model that pools maps has no choice and says so."""
    from core.backbones.base import ExtractionError

    name, kw, key = PINNED[0]
    c = ExtractionConfig(dataset="synthetic-pacs:heldout", model=name, max_per_domain=2, token_pooling=None, **kw)
    ds, recs = select_images(c)
    ds = dataclasses.replace(ds, fingerprint="pinned-fingerprint")
    assert cache_key(c, _load(name), ds, recs) == key
    assert "token_pooling" not in c.to_dict() and ExtractionConfig.from_dict(c.to_dict()) == c
    assert _load(name).poolings == () and _load(name).with_token_pooling(None) is _load(name)
    for m in (name, "pixels"):
        with pytest.raises(ExtractionError, match="no pooling choice"):
            cache_key(dataclasses.replace(c, model=m, token_pooling="cls"), _load(m), ds, recs)
    for bad in ("", 3):
        with pytest.raises(ExtractionError, match="token_pooling must be None"):
            ExtractionConfig(token_pooling=bad)


# ------------------------------------------------------------- conditioning-exact cache keys


def test_cache_key_holds_exactly_the_declared_conditioning():
    c = ExtractionConfig(dataset="synthetic-pacs:heldout", max_per_domain=2)
    ds, recs = select_images(c)
    sd, px = load_backbone("domainlens-tiny", "cpu"), load_backbone("pixels", "cpu")

    def key(m, **kw):
        return cache_key(dataclasses.replace(c, **kw), m, ds, recs)

    template = PromptSpec("template", "a photo of a {class}")
    base_sd, base_px = key(sd), key(px)
    for kw in (dict(timestep=51), dict(prompt=template), dict(seed=3), dict(ensemble=2)):
        assert key(sd, **kw) != base_sd, kw  # the SD UNet takes them
        assert key(px, **kw) == base_px, kw  # pixels take nothing
    for kw in (dict(class_label=3), dict(noise_mode="clean")):  # declared by neither
        assert key(sd, **kw) == base_sd and key(px, **kw) == base_px, kw
    assert base_sd != base_px


# -------------------------------------------------------------------------- no family branches

BRANCH = re.compile(r"""\.kind\b|["'](diffusion|pixels|cnn)["']""")


def test_no_family_name_branches_outside_backbones():
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "core" / "engine").rglob("*.py"), *(root / "core" / "analysis").rglob("*.py"),
             *(root / "core" / "cli").rglob("*.py"), *(root / "pages").rglob("*.py")]
    assert len(files) > 8
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert not hits, "family names / kind branches outside core/backbones:\n" + "\n".join(hits)


# ------------------------------------------------------------------------------- errors that teach


def test_unsupported_folder_names_what_it_found_and_the_families(tmp_path):
    from core.backbones.registry import FAMILIES, ModelError

    d = tmp_path / "kandinsky"
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    (d / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                        "addition_embed_type": "image"}))
    with pytest.raises(ModelError) as e:
        load_backbone(str(d), "cpu")
    msg = str(e.value)
    assert "KandinskyV22Pipeline" in msg and "unet/config.json _class_name=UNet2DConditionModel" in msg
    assert "Supported families:" in msg and all(f.family in msg for f in FAMILIES)
    t = tmp_path / "vit"
    t.mkdir()
    (t / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"], "model_type": "vit"}))
    (t / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"found: config.json architectures=\['ViTForImageClassification'\]"):
        load_backbone(str(t), "cpu")


def test_pickle_only_checkpoint_is_refused_with_the_fix(tmp_path):
    from core.backbones.registry import ModelError

    d = tmp_path / "pickled"
    (d / "unet").mkdir(parents=True)
    (d / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (d / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ModelError, match=r"only pickle weights \(diffusion_pytorch_model.bin\).*safetensors only.*"
                                         r"safe_serialization=True"):
        load_backbone(str(d), "cpu")


def test_bad_layer_name_lists_the_valid_ones():
    from core.backbones.base import ExtractionError
    from core.engine.extract import get_features

    m = load_backbone("domainlens-tiny", "cpu")
    with pytest.raises(ExtractionError, match=r"unknown layer\(s\) \['up_blocks.7'\].*valid layers: down_blocks.0, "
                                              r"down_blocks.1, down_blocks.2, mid_block, up_blocks.0"):
        with m.hooks(["up_blocks.7"]):
            pass
    with pytest.raises(ExtractionError, match=r"unknown block\(s\) \['features'\].*up_blocks.1"):
        get_features(ExtractionConfig(max_per_domain=2), ["features"], model=m)


# ---------------------------------------------------------------------- inference without training


def test_loading_every_registered_model_never_imports_training():
    """Fresh copies of every core module (the session's own are put back afterwards), then every available
    registered model loaded: no core.training module may come in, at import time or lazily."""
    saved = {k: v for k, v in sys.modules.items() if k == "core" or k.startswith("core.")}
    for k in saved:
        del sys.modules[k]
    try:
        import core.analysis.sweep  # noqa: F401
        import core.backbones.registry as registry
        import core.cli  # noqa: F401
        import core.engine.extract  # noqa: F401

        names = [m["name"] for m in registry.list_models() if m["available"]]
        for n in names:
            registry.load_backbone(n, "cpu")
        bad = sorted(k for k in sys.modules if k.startswith("core.training"))
    finally:
        for k in [k for k in sys.modules if k == "core" or k.startswith("core.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert not bad, bad
    assert {"domainlens-tiny", "pixels", "domainlens-cnn"} <= set(names)


# ------------------------------------------------------------------------- batch-size exactness


def test_features_bit_identical_across_batch_sizes(tmp_path, monkeypatch):
    import numpy as np

    import core.engine.extract as ex

    monkeypatch.setattr(ex.LATENT_MEMO, "max_bytes", 0)  # every run VAE-encodes again
    m = load_backbone("domainlens-tiny", "cpu")
    c = ExtractionConfig(dataset="synthetic-pacs:heldout", max_per_domain=3)  # 12 images: a ragged last micro-batch
    runs = {bs: ex.get_features(c, "all", model=m, batch_size=bs, cache_dir=str(tmp_path / str(bs)))
            for bs in (1, 3, 8)}
    assert all(r.n_unet_images == 12 for r in runs.values())
    for b in m.layers:
        assert np.array_equal(runs[1].features[b], runs[3].features[b]), b
        assert np.array_equal(runs[1].features[b], runs[8].features[b]), b


# -------------------------------------------------------------------------------------------- CLI


def test_cli_notes_options_the_model_ignores(tmp_path, capsys):
    from core.cli import main

    args = ["extract", "--dataset", "synthetic-pacs:heldout", "--max-per-domain", "2", "--no-progress",
            "--cache-dir", str(tmp_path)]
    assert main(args + ["--model", "pixels", "--timesteps", "50,100", "--prompt-template", "a {class}",
                        "--class-label", "3", "--noise-mode", "clean", "--export", str(tmp_path / "p.npz")]) == 0
    out, err = capsys.readouterr()
    assert "note: the timesteps 50, 100 are ignored: 'pixels'" in err and "takes no timestep" in err
    assert "note: the prompt is ignored: 'pixels'" in err and "not conditioned on text" in err
    assert "note: the class label is ignored: 'pixels'" in err and "not class-conditional" in err
    assert "note: noise mode 'clean' is ignored" in err
    import numpy as np

    with np.load(tmp_path / "p.npz") as z:
        assert "pixels" in z.files and not [k for k in z.files if "@" in k]  # `<layer>` keys, one extraction
    # the SD UNet takes timesteps and prompts: only the class label is noted
    assert main(args + ["--model", "domainlens-tiny", "--timesteps", "50,100", "--blocks", "up_blocks.1",
                        "--prompt", "a cat", "--class-label", "3", "--export", str(tmp_path / "s.npz")]) == 0
    out, err = capsys.readouterr()
    assert [ln for ln in err.splitlines() if ln.startswith("note:")] == [
        "note: the class label is ignored: 'domainlens-tiny' (Stable Diffusion 1.x / 2.x UNet "
        "(UNet2DConditionModel)) is not class-conditional"]
    with np.load(tmp_path / "s.npz") as z:
        assert {"up_blocks.1@50", "up_blocks.1@100"} <= set(z.files)


def test_cli_models_lists_families_and_registered_models(capsys):
    from core.backbones.registry import FAMILIES, REGISTERED
    from core.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for f in FAMILIES:
        assert f.family in out and f.family_label in out
    assert "conditioned on: timestep, prompt" in out and "conditioned on: nothing (image only)" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip() and ln.split()[0] in REGISTERED}
    assert set(lines) == set(REGISTERED)
    assert "[available]" in lines["domainlens-tiny"] and "[available]" in lines["pixels"]
    dit = REGISTERED["domainlens-tiny-dit"]
    available = any(f.family == dit.family for f in FAMILIES) and dit.location.is_dir()
    assert ("[available]" if available else "[missing]") in lines["domainlens-tiny-dit"]
