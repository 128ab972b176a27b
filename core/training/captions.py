"""Training captions of the embedded text-to-image model: descriptive templates per built-in dataset, the
app's class template and the empty prompt."""

from __future__ import annotations

import random
import re


PACS_CLASSES = ("circle", "cross", "house", "square", "star", "triangle")
PACS_STYLES = ("cartoon", "painting", "photo", "sketch")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
ROTATIONS = (0, 15, 30, 45, 60, 75)

# Descriptive templates per dataset; the class template "a photo of a {cls}" (the app's wording) and the
# empty prompt are mixed in separately by :func:`sample_caption`.
PACS_TEMPLATES = (
    "a {style} of a {cls}",
    "a {style} of a {cls}",
    "a {cls} in {style} style",
    "a {style}",
    "a {cls}",
)
DIGIT_TEMPLATES = (
    "a photo of the digit {cls} rotated {angle} degrees",
    "a photo of the digit {cls} rotated {angle} degrees",
    "the digit {cls} rotated {angle} degrees",
    "a digit rotated {angle} degrees",
    "the digit {cls}",
)
CLASS_TEMPLATE = "a photo of a {cls}"


def _angle(domain: str) -> int:
    m = re.fullmatch(r"rot(\d+)", domain)
    return int(m.group(1)) if m else 0


def describe(dataset: str, domain: str, cls: str, template: str) -> str:
    return template.format(style=domain, cls=cls, angle=_angle(domain))


def canonical_caption(dataset: str, domain: str, cls: str) -> str:
    """The single descriptive caption used for evaluation."""
    t = DIGIT_TEMPLATES[0] if dataset == "rotated-digits" else PACS_TEMPLATES[0]
    return describe(dataset, domain, cls, t)


def sample_caption(dataset: str, domain: str, cls: str, rng: random.Random, cfg) -> str:
    u = rng.random()
    if u < cfg.p_empty_caption:
        return ""
    if u < cfg.p_empty_caption + cfg.p_class_template:
        return CLASS_TEMPLATE.format(cls=cls)
    templates = DIGIT_TEMPLATES if dataset == "rotated-digits" else PACS_TEMPLATES
    return describe(dataset, domain, cls, templates[rng.randrange(len(templates))])


def all_caption_words() -> list[str]:
    """Every word any training caption can contain (CLIP pre-tokenisation: letters runs, single digits)."""
    texts = []
    for cls in PACS_CLASSES:
        texts.append(CLASS_TEMPLATE.format(cls=cls))
        for style in PACS_STYLES:
            texts += [describe("synthetic-pacs", style, cls, t) for t in PACS_TEMPLATES]
    for cls in DIGIT_CLASSES:
        texts.append(CLASS_TEMPLATE.format(cls=cls))
        for a in ROTATIONS:
            texts += [describe("rotated-digits", f"rot{a:02d}", cls, t) for t in DIGIT_TEMPLATES]
    words = set()
    for t in texts:
        words.update(re.findall(r"[a-z]+|[0-9]", t.lower()))
    return sorted(words)
