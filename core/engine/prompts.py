"""Prompt choices of an extraction (the empty prompt, a class template, a custom text) and the engine's
error type. Backbones that take no prompt ignore them (and their cache keys leave them out)."""

from __future__ import annotations

from dataclasses import dataclass

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
    "custom" (one text for every image) or "per-class" (``text`` a JSON object class -> prompt, e.g. the
    prompt audit's wrong-class control). The cache key holds (mode, text), so every mode is exact."""

    mode: str = "empty"
    text: str = ""

    def __post_init__(self):
        if self.mode not in ("empty", "template", "custom", "per-class"):
            raise ExtractionError(f"prompt mode must be empty, template, custom or per-class, got {self.mode!r}")
        if self.mode == "template" and "{class}" not in self.text and "{domain}" not in self.text:
            raise ExtractionError(f"a template must contain {{class}} or {{domain}}, e.g. 'a photo of a {{class}}'; "
                                  f"got {self.text!r}")
        check_prompt_text(self.text)
        if self.mode == "per-class":
            self.table()

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

    def for_class(self, cls: str, domain: str = "") -> str:
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
