"""Prompt choices of an extraction (the empty prompt, a class template, a custom text) and the engine's
error type. Backbones that take no prompt ignore them (and their cache keys leave them out)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from core.backbones.base import ExtractionError

__all__ = ["ExtractionError", "PromptSpec"]


# bidirectional overrides and isolates: they reorder what a terminal or spreadsheet shows (text spoofing)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_prompt_text(text: str) -> None:
    """Refuse (never strip: a prompt is part of the cache key and must be exactly what was asked) a prompt
    holding a control character (Unicode category Cc: C0 such as newline, tab, ESC and NUL, DEL, C1) or a
    bidirectional override: they would reach the terminal (ESC sequences rewrite the screen) and the CSV and
    report outputs, and no text encoder reads them as words."""
    import unicodedata

    if not isinstance(text, str):
        raise ExtractionError(f"a prompt must be text, got {type(text).__name__}")
    for i, ch in enumerate(text):
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            what = "a bidirectional override" if ch in _BIDI else "a control character"
            raise ExtractionError(f"the prompt has {what} (U+{ord(ch):04X}) at position {i + 1}; prompts are one "
                                  "line of plain text: remove it (and any line breaks or tabs)")


@dataclass(frozen=True)
class PromptSpec:
    """``mode``: "empty" (the paper's default), "template" (``text`` with ``{class}`` and/or ``{domain}``),
    "custom" (one text for every image), "per-class" (``text`` a JSON object class -> prompt) or "per-image"
    (``text`` a JSON object ``{"template", "classes", "seed", "rule"}``: the template filled with a class
    drawn per image from a seeded hash of (seed, image id), so it never depends on batch or order; ``rule``
    "wrong" = uniform over the classes other than the image's own, "random" = uniform over all classes,
    independent of the image; the prompt audit's controls). The cache key holds (mode, text), so every mode
    is exact."""

    mode: str = "empty"
    text: str = ""

    def __post_init__(self):
        if self.mode not in ("empty", "template", "custom", "per-class", "per-image"):
            raise ExtractionError(f"prompt mode must be empty, template, custom, per-class or per-image, got "
                                  f"{self.mode!r}")
        if self.mode == "template" and "{class}" not in self.text and "{domain}" not in self.text:
            raise ExtractionError(f"a template must contain {{class}} or {{domain}}, e.g. 'a photo of a {{class}}'; "
                                  f"got {self.text!r}")
        check_prompt_text(self.text)
        if self.mode == "per-class":
            self.table()
        if self.mode == "per-image":
            self.rule()

    def table(self) -> dict[str, str]:
        """The class -> prompt table of a "per-class" prompt."""
        import json

        try:
            t = json.loads(self.text)
        except ValueError:
            t = None
        if not isinstance(t, dict) or not t or not all(isinstance(v, str) for v in t.values()):
            raise ExtractionError(f'a per-class prompt is a JSON object {{"class": "prompt", ...}}, got {self.text!r}')
        for v in t.values():
            check_prompt_text(v)
        return t

    def rule(self) -> dict:
        """The ``{"template", "classes", "seed", "rule"}`` object of a "per-image" prompt (parsed once per text)."""
        return _per_image_rule(self.text)

    def class_for_image(self, cls: str, image_id: str) -> str:
        """The class a "per-image" prompt names for one image: a seeded hash of (seed, image id) picks it
        uniformly from the other classes (rule "wrong": never ``cls``) or from all classes (rule "random")."""
        import hashlib

        r = self.rule()
        pool = [c for c in r["classes"] if c != cls] if r["rule"] == "wrong" else list(r["classes"])
        h = hashlib.blake2b(f"{r['seed']}\x00{image_id}".encode(), digest_size=8).digest()
        return pool[int.from_bytes(h, "big") % len(pool)]

    def for_class(self, cls: str, domain: str = "", image_id: str | None = None) -> str:
        if self.mode == "per-image":
            if image_id is None:
                raise ExtractionError("a per-image prompt needs each image's id (for_class(cls, domain, image_id))")
            return self.rule()["template"].replace("{class}", self.class_for_image(cls, image_id).replace("_", " ")
                                                   ).replace("{domain}", domain.replace("_", " "))
        if self.mode == "empty":
            return ""
        if self.mode == "template":
            return self.text.replace("{class}", cls.replace("_", " ")).replace("{domain}", domain.replace("_", " "))
        if self.mode == "per-class":
            table = self.table()
            if cls not in table:
                raise ExtractionError(f"the per-class prompt has no entry for class {cls!r}")
            return table[cls].replace("{domain}", domain.replace("_", " "))
        return self.text

    def example(self) -> str:
        """One prompt this spec gives (for checks that need a sample)."""
        if self.mode == "per-class":
            return next(iter(self.table().values()))
        if self.mode == "per-image":
            return self.for_class(self.rule()["classes"][0], "x", "x")
        return self.for_class("x", "x")

    @property
    def label(self) -> str:
        return "" if self.mode == "empty" else self.text

    @classmethod
    def parse(cls, prompt: str | None = None, template: str | None = None) -> "PromptSpec":
        if prompt and template:
            raise ExtractionError("give either a prompt or a prompt template, not both")
        if template:
            return cls("template", template)
        if prompt:
            return cls("custom", prompt)
        return cls()


@lru_cache(maxsize=64)
def _per_image_rule(text: str) -> dict:
    import json

    try:
        r = json.loads(text)
    except ValueError:
        r = None
    ok = (isinstance(r, dict) and isinstance(r.get("template"), str) and "{class}" in r["template"]
          and isinstance(r.get("classes"), list) and len(r["classes"]) >= 2
          and all(isinstance(c, str) for c in r["classes"]) and isinstance(r.get("seed"), int)
          and r.get("rule") in ("wrong", "random"))
    if not ok:
        raise ExtractionError('a per-image prompt is a JSON object {"template": "... {class} ...", "classes": '
                              f'[2 or more names], "seed": int, "rule": "wrong" or "random"}}, got {text!r}')
    return r

