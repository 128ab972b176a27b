"""Tests for the backbone seam (core/backbones: base, registry, sd_unet, baselines) and how the engine,
CLI and pages use it without knowing any family by name."""

from __future__ import annotations

import pytest

from core.engine.extract import ExtractionConfig, cache_key, select_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------- pinned cache keys

# Computed on the pre-seam code (commit 7964f29, core/backbones/loading.py + features.py). They must not
# change: existing caches of SD models and baselines stay valid across the refactor.
PINNED = [
    ("domainlens-tiny", dict(timestep=50), "5ecbbaf6a0e96e21198d34f133d2454d"),
    ("domainlens-tiny", dict(timestep=200, prompt=("template", "a photo of a {class}")),
     "ec8b4704870e2efd1d13b22da7c409c4"),
    ("domainlens-tiny", dict(timestep=50, seed=1, ensemble=2), "7b513a3e659d481e7dc9498dda6408b4"),
    ("pixels", {}, "063f5343e89f923cbe606fd846681517"),
    ("domainlens-cnn", {}, "224d19cae61e64c6521fd17092678cac"),
]


def _load(name):
    try:
        from core.backbones.registry import load_backbone
    except ImportError:  # pre-seam code
        from core.backbones.loading import load_model as load_backbone
    return load_backbone(name, "cpu")


def _prompt_spec(mode, text):
    try:
        from core.engine.prompts import PromptSpec
    except ImportError:  # pre-seam code
        from core.backbones.features import PromptSpec
    return PromptSpec(mode, text)


@pytest.mark.parametrize("name, kw, key", PINNED, ids=[f"{p[0]}-{i}" for i, p in enumerate(PINNED)])
def test_cache_keys_pinned(name, kw, key):
    kw = dict(kw)
    if "prompt" in kw:
        kw["prompt"] = _prompt_spec(*kw["prompt"])
    c = ExtractionConfig(dataset="synthetic-pacs:heldout", model=name, max_per_domain=2, **kw)
    ds, recs = select_images(c)
    assert cache_key(c, _load(name), ds, recs) == key
