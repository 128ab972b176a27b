"""Tests for the backbone seam (core/backbones: base, registry, sd_unet, baselines) and how the engine,
CLI and pages use it without knowing any family by name."""

from __future__ import annotations

import dataclasses

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
