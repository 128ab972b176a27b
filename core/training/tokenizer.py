"""A tiny word-level CLIP BPE tokenizer built from the caption vocabulary (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from core.training.captions import all_caption_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_SUFFIX = "</w>"

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the base alphabet of a CLIP BPE vocab)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """A tiny deterministic BPE trainer: merge the most frequent pair (ties: lexicographic) until every
    word is one symbol. Encoding a training word with these merges gives back the whole word."""
    segs = {w: tuple(w[:-1]) + (w[-1] + WORD_SUFFIX,) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for s in segs.values():
            for p in zip(s, s[1:]):
                counts[p] = counts.get(p, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = tuple(out)


def build_tokenizer(folder: str | os.PathLike, max_length: int = 32, words: Sequence[str] | None = None):
    """A word-level CLIPTokenizer: every caption word is one token; any other text falls back to the
    256 byte characters. Writes vocab.json + merges.txt into ``folder`` and loads them with
    ``CLIPTokenizer.from_pretrained`` (the ``vocab_file=`` constructor silently ignores files)."""
    from transformers import CLIPTokenizer

    words = list(words if words is not None else all_caption_words())
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + WORD_SUFFIX for c in base]
    merges = learn_merges(words)
    for a, b in merges:
        tok = a + b
        if tok not in vocab_list:
            vocab_list.append(tok)
    vocab_list += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)
    # Sanity: whole words are single tokens (a silently broken tokenizer would map everything to one id).
    for w in words:
        ids = tok(w, add_special_tokens=False)["input_ids"]
        if ids != [vocab[w + WORD_SUFFIX]]:
            raise RuntimeError(f"tokenizer splits {w!r} into {ids}")
    return tok
