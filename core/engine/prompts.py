"""Prompt choices of an extraction (the empty prompt, a class template, a custom text) and the engine's
error type. Backbones that take no prompt ignore them (and their cache keys leave them out)."""

from __future__ import annotations

from dataclasses import dataclass

from core.backbones.base import ExtractionError

__all__ = ["ExtractionError", "PromptSpec"]


@dataclass(frozen=True)
class PromptSpec:
    """``mode``: "empty" (the paper's default), "template" (``text`` with ``{class}``) or "custom"."""

    mode: str = "empty"
    text: str = ""

    def __post_init__(self):
        if self.mode not in ("empty", "template", "custom"):
            raise ExtractionError(f"prompt mode must be empty, template or custom, got {self.mode!r}")
        if self.mode == "template" and "{class}" not in self.text:
            raise ExtractionError(f"a class template must contain {{class}}, e.g. 'a photo of a {{class}}'; "
                                  f"got {self.text!r}")

    def for_class(self, cls: str) -> str:
        if self.mode == "empty":
            return ""
        if self.mode == "template":
            return self.text.replace("{class}", cls.replace("_", " "))
        return self.text

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
