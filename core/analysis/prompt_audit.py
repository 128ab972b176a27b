"""Prompt audit: how much of a score change is the prompt naming the label rather than the image?

Conditions (all on the same images, seed and timestep; every block from one pass per condition):

* empty - the paper's default, no text;
* class template - "a photo of a {class}": the prompt names each image's true class;
* domain template - "a {domain} of an object": the prompt names each image's true domain;
* wrong class - the class template with a *per-image* random wrong class: a seeded hash of (seed, image id)
  picks one of the other classes uniformly, never the true one. (The earlier control, one fixed class ->
  class derangement, still carried the class: NMI ignores relabelling, so a fixed map leaks as much as the
  true template. :func:`derangement` is kept for that comparison only.) With C classes the per-image wrong
  class still carries log(C / (C - 1)) nats about the class (it rules one class out); its NMI ceiling is
  about log(C / (C - 1)) / log(C): 1 for C = 2 (a wrong class among two *is* the other class), 0.10 for
  C = 6, 0.05 for C = 10. It is therefore reported but not used as a leakage reference below 5 classes.
* shuffled class - the class template filled with a class drawn per image uniformly from all classes,
  independent of the image (a seeded hash as above; the true class 1 / C of the time, as under a random
  shuffle of the labels): the text varies exactly as much as in the class template and carries no
  information about the image. The null of :func:`leakage`.
* constant - one unrelated sentence for every image.

Text that names the label can put the label into the features: a domain NMI that rises with the domain
template (or a class NMI with the class template) and not with the controls measures the prompt's
leakage, not what the image holds.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.engine.extract import ExtractionConfig, PromptSpec, get_features

CLASS_TEMPLATE = "a photo of a {class}"
DOMAIN_TEMPLATE = "a {domain} of an object"
CONSTANT_PROMPT = "a bowl of soup on a wooden table"
CONDITIONS = ("empty", "class template", "domain template", "wrong class", "shuffled class", "constant")
NAMES_LABEL = {"empty": None, "class template": "class", "domain template": "domain", "wrong class": None,
               "shuffled class": None, "constant": None}
LABEL_FREE = ("empty", "shuffled class", "constant")  # prompts independent of the image's labels
WRONG_CLASS_MIN_CLASSES = 5  # below this the wrong class carries > 0.14 of the class entropy
COLUMNS = ["condition", "prompt", "block", "domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std",
           "n_images", "n_classes"]


def load(name: str, device: str = "auto"):
    """The loaded model by name (works with the backbone registry and the older loader)."""
    try:
        from core.backbones.registry import load_backbone as _load
    except ImportError:
        from core.backbones.loading import load_model as _load
    return _load(name, device)


def derangement(items: Sequence[str], seed: int = 0) -> dict[str, str]:
    """A seeded permutation of ``items`` with no fixed point (each maps to a different item).

    Raises ValueError for fewer than 2 items (no wrong class exists)."""
    items = list(dict.fromkeys(items))
    if len(items) < 2:
        raise ValueError(f"a wrong-class control needs at least 2 classes, got {len(items)}")
    rng = np.random.default_rng(seed)
    while True:  # rejection sampling: about e tries on average
        perm = rng.permutation(len(items))
        if not np.any(perm == np.arange(len(items))):
            return {a: items[int(j)] for a, j in zip(items, perm)}


def fixed_wrong_class_prompt(class_names: Sequence[str], seed: int = 0, template: str = CLASS_TEMPLATE
                             ) -> PromptSpec:
    """The class template with a deranged class per class (one fixed class -> class map), as an exact
    per-class prompt. Not a control: the map is a relabelling, and NMI ignores relabelling."""
    mapping = derangement(class_names, seed)
    return PromptSpec("per-class", json.dumps({c: template.replace("{class}", w.replace("_", " "))
                                               for c, w in mapping.items()}, sort_keys=True))


def wrong_class_prompt(class_names: Sequence[str], seed: int = 0, template: str = CLASS_TEMPLATE) -> PromptSpec:
    """The class template with a per-image random wrong class (seeded by (seed, image id); never the true
    class). Raises ValueError for fewer than 2 classes."""
    return _per_image(class_names, seed, template, "wrong")


def shuffled_class_prompt(class_names: Sequence[str], seed: int = 0, template: str = CLASS_TEMPLATE) -> PromptSpec:
    """The class template with a per-image class drawn uniformly from all classes, independent of the image."""
    return _per_image(class_names, seed, template, "random")


def _per_image(class_names: Sequence[str], seed: int, template: str, rule: str) -> PromptSpec:
    names = list(dict.fromkeys(class_names))
    if len(names) < 2:
        raise ValueError(f"a wrong-class or shuffled-class control needs at least 2 classes, got {len(names)}")
    return PromptSpec("per-image", json.dumps({"template": template, "classes": names, "seed": int(seed),
                                               "rule": rule}, sort_keys=True))


def conditions(class_names: Sequence[str], seed: int = 0, constant: str = CONSTANT_PROMPT,
               class_template: str = CLASS_TEMPLATE, domain_template: str = DOMAIN_TEMPLATE
               ) -> dict[str, PromptSpec]:
    return {"empty": PromptSpec(), "class template": PromptSpec("template", class_template),
            "domain template": PromptSpec("template", domain_template),
            "wrong class": wrong_class_prompt(class_names, seed, class_template),
            "shuffled class": shuffled_class_prompt(class_names, seed, class_template),
            "constant": PromptSpec("custom", constant)}


def prompt_audit(config: ExtractionConfig, blocks: Sequence[str] | str | None = None, *,
                 which: Sequence[str] = CONDITIONS, model=None, device: str = "auto", batch_size: int = 32,
                 cache_dir: str | None = None, n_seeds: int = 5, progress: Callable[[int, int], None] | None = None,
                 dataset=None, constant: str = CONSTANT_PROMPT) -> pd.DataFrame:
    """One row per (condition, block) with domain and class NMI (:data:`COLUMNS`); ``which``: the conditions
    (:data:`CONDITIONS`, all by default)."""
    from core.analysis.sweep import cached_scores
    from core.data.datasets import load_dataset
    from core.engine.cache import FeatureCache

    model = model or load(config.model, device)
    if not model.uses_prompt:
        raise ValueError(f"model {config.model!r} takes no text prompt, so there is nothing to audit; pick a "
                         "diffusion model with a text encoder")
    unknown = [w for w in which if w not in CONDITIONS]
    if unknown or not which:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    ds = dataset or load_dataset(config.dataset)
    conds = conditions(ds.classes, config.seed, constant)
    blocks = list(model.blocks) if blocks in (None, "all") else (
        [b.strip() for b in blocks.split(",")] if isinstance(blocks, str) else list(blocks))
    cache = FeatureCache(cache_dir)
    rows = []
    for i, name in enumerate(which):
        step = (lambda d, n, i=i: progress(i * n + d, len(which) * n)) if progress else None
        fs = get_features(replace(config, prompt=conds[name]), "all", device=device, batch_size=batch_size,
                          cache_dir=cache_dir, progress=step, model=model, dataset=ds)
        for b in blocks:
            if b not in fs.features:
                raise ValueError(f"unknown block {b!r}; this model has {list(model.blocks)}")
            s = cached_scores(fs, b, n_seeds=n_seeds, cache=cache)
            rows.append({"condition": name, "prompt": conds[name].label, "block": b, "domain_nmi": s.domain_nmi,
                         "domain_nmi_std": s.domain_nmi_std, "class_nmi": s.class_nmi,
                         "class_nmi_std": s.class_nmi_std, "n_images": s.n_images,
                         "n_classes": len(set(fs.classes))})
    return pd.DataFrame(rows, columns=COLUMNS)


def leakage(df: pd.DataFrame, n_classes: int | None = None) -> pd.DataFrame:
    """Per block: how much each label-naming template moves its own label's NMI beyond the controls.

    ``domain_leak`` = domain NMI(domain template) - max(domain NMI of the label-free controls: empty, shuffled
    class, constant); ``class_leak`` likewise with class NMI and the class template. The per-image wrong class
    joins the controls only when ``n_classes`` >= :data:`WRONG_CLASS_MIN_CLASSES` (with fewer classes it
    names the class too well; see the module docstring). ``class_control`` / ``domain_control`` name the
    control that gave the maximum. ``wrong_class_excess`` = class NMI(wrong class) - class NMI(empty): near 0
    for a control that carries no class. Positive leak: the text adds the label beyond what any prompt
    without the true label does (the difference of two k-means NMI means; compare it with the rows' stds).
    """
    if n_classes is None and "n_classes" in df.columns and len(df):
        n_classes = int(df["n_classes"].iloc[0])
    out = []
    for b, g in df.groupby("block", sort=False):
        by = g.set_index("condition")
        use = LABEL_FREE + (("wrong class",) if n_classes and n_classes >= WRONG_CLASS_MIN_CLASSES else ())
        controls = [c for c in use if c in by.index]
        row = {"block": b}
        if controls and "domain template" in by.index:
            row["domain_control"] = by.loc[controls, "domain_nmi"].idxmax()
            row["domain_leak"] = by.loc["domain template", "domain_nmi"] - by.loc[controls, "domain_nmi"].max()
        if controls and "class template" in by.index:
            row["class_control"] = by.loc[controls, "class_nmi"].idxmax()
            row["class_leak"] = by.loc["class template", "class_nmi"] - by.loc[controls, "class_nmi"].max()
        if "wrong class" in by.index and "empty" in by.index:
            row["wrong_class_excess"] = by.loc["wrong class", "class_nmi"] - by.loc["empty", "class_nmi"]
        out.append(row)
    return pd.DataFrame(out)
