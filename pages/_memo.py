"""A small server-wide memo for the research pages (film strip, layer similarity, stability, prompt audit):
their results gather several cached feature sets, so a widget move that only changes what is *shown*
(a frame, a colour, a difference) reuses the gathered result instead of reloading every feature set.

Keys hold the whole request (configuration, model, device, the dataset's fingerprint), so a changed
dataset or setting never meets an old result; the on-disk caches in ``core`` stay the source of truth.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Callable

import streamlit as st

from pages._access import scanned_dataset
from pages._progress import run_core

MAX_ENTRIES = 16


@st.cache_resource(show_spinner=False)
def _store() -> OrderedDict:
    return OrderedDict()


def memo_run(key: dict, fn: Callable, *args, label: str = "Extracting features", **kwargs) -> Any:
    """``run_core(fn, *args, **kwargs)`` once per ``key`` (JSON-able) per server process."""
    k = json.dumps(key, sort_keys=True, default=str)
    store = _store()
    if k in store:
        store.move_to_end(k)
        return store[k]
    out = run_core(fn, *args, label=label, **kwargs)
    store[k] = out
    while len(store) > MAX_ENTRIES:
        store.popitem(last=False)
    return out


def request_key(view: str, s, config, **extra) -> dict:
    """The memo key of a view: its name, the configuration, device and dataset fingerprint, and extras."""
    return {"view": view, "config": config.to_dict(), "device": s.device,
            "cache": os.environ.get("DOMAINLENS_CACHE_DIR", ""),
            "fingerprint": scanned_dataset(config.dataset).fingerprint, **extra}
