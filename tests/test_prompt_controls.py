"""Prompt audit controls (issue 17, item 5) on a synthetic feature model whose prompt leak is known.

Features = a weak image part + a strong vector per distinct prompt text (as a text encoder adds the
prompt's embedding through cross-attention). The class template then leaks the class almost fully; a
control that carries no class must leave class NMI where the empty prompt leaves it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from core.analysis.metrics import nmi
from core.analysis.prompt_audit import (conditions, fixed_wrong_class_prompt, leakage, shuffled_class_prompt,
                                        wrong_class_prompt)
from core.engine.prompts import ExtractionError, PromptSpec

CLASSES = [f"c{i}" for i in range(6)]
DOMAINS = ["d0", "d1", "d2"]


def _text_vector(text: str, dim: int = 16) -> np.ndarray:
    if not text:
        return np.zeros(dim)
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
    return np.random.default_rng(seed).normal(size=dim) * 6.0


def _dataset(n_per_cell: int = 6):
    rng = np.random.default_rng(0)
    ids, cls, dom, img = [], [], [], []
    for d in DOMAINS:
        for c in CLASSES:
            for i in range(n_per_cell):
                ids.append(f"{d}/{c}/{i}.png")
                cls.append(c)
                dom.append(d)
                img.append(rng.normal(size=16))  # the image says nothing about the class
    return ids, cls, dom, np.array(img)


def _class_nmi(spec: PromptSpec, data) -> float:
    ids, cls, dom, img = data
    feats = img + np.stack([_text_vector(spec.for_class(c, d, i)) for i, c, d in zip(ids, cls, dom)])
    return nmi(feats, np.array(cls), n_seeds=2)[0]


def test_per_image_controls_are_near_the_empty_prompt_where_the_fixed_map_leaks():
    data = _dataset()
    conds = conditions(CLASSES, seed=0)
    got = {name: _class_nmi(conds[name], data) for name in ("empty", "class template", "wrong class",
                                                            "shuffled class", "constant")}
    fixed = _class_nmi(fixed_wrong_class_prompt(CLASSES, 0), data)
    assert got["class template"] > 0.9  # the known large leak
    assert fixed > 0.9  # a fixed class -> class map is a relabelling: NMI sees the class as well as before
    # per-image controls: at the empty prompt's level (the wrong class's ceiling is log(6/5)/log(6) = 0.10)
    assert abs(got["shuffled class"] - got["empty"]) < 0.08, got
    assert abs(got["wrong class"] - got["empty"]) < 0.15, got
    assert abs(got["constant"] - got["empty"]) < 0.08, got
    import pandas as pd

    df = pd.DataFrame([{"condition": k, "block": "b", "domain_nmi": 0.0, "class_nmi": v} for k, v in got.items()])
    leak = leakage(df, n_classes=len(CLASSES)).iloc[0]
    assert leak["class_leak"] == pytest.approx(got["class template"] - max(got["empty"], got["shuffled class"],
                                                                           got["constant"], got["wrong class"]))
    assert leak["class_leak"] > 0.7 and leak["class_control"] in ("empty", "shuffled class", "constant",
                                                                   "wrong class")
    assert leak["wrong_class_excess"] == pytest.approx(got["wrong class"] - got["empty"])
    # with 2 classes a wrong class *is* the other class: it leaves the controls
    two = leakage(df.assign(class_nmi=df["class_nmi"].where(df["condition"] != "wrong class", 5.0)), n_classes=2)
    assert two.iloc[0]["class_control"] != "wrong class"


def test_per_image_prompt_is_seeded_per_image_never_the_true_class_and_exact_in_the_key():
    wrong = wrong_class_prompt(CLASSES, seed=3)
    ids = [f"img{i}" for i in range(300)]
    picked = [wrong.class_for_image("c2", i) for i in ids]
    assert "c2" not in picked and set(picked) == set(CLASSES) - {"c2"}  # never the true one, every other one
    assert [wrong.class_for_image("c2", i) for i in reversed(ids)] == picked[::-1]  # order does not matter
    assert wrong.for_class("c2", "d0", "img0") == f"a photo of a {picked[0]}"
    assert picked != [wrong_class_prompt(CLASSES, seed=4).class_for_image("c2", i) for i in ids]  # the seed
    shuffled = [shuffled_class_prompt(CLASSES, seed=3).class_for_image("c2", i) for i in ids]
    assert "c2" in shuffled and set(shuffled) == set(CLASSES)  # independent of the image: the true one too
    assert wrong.mode == "per-image" and wrong != shuffled_class_prompt(CLASSES, 3)  # distinct cache keys
    with pytest.raises(ExtractionError, match="needs each image's id"):
        wrong.for_class("c2", "d0")
    with pytest.raises(ExtractionError, match="per-image prompt is a JSON object"):
        PromptSpec("per-image", '{"template": "no class", "classes": ["a", "b"], "seed": 0, "rule": "wrong"}')
    with pytest.raises(ValueError, match="at least 2 classes"):
        wrong_class_prompt(["only"])
