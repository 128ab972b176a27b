"""Cached access to what core loads: models (``st.cache_resource`` keyed by plain strings), dataset summaries
and scans, thumbnails, k-means labels, and the background UMAP warm-up."""

from __future__ import annotations

import os
import sys

import numpy as np
import streamlit as st

from core import figures
from core.data.datasets import load_dataset
from core.analysis.metrics import kmeans_labels
from core.backbones.base import Backbone
from core.backbones.registry import load_backbone

from pages._env import APP_PATH, EXPECTED_ERRORS


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def get_model(name: str, device: str = "auto") -> Backbone:
    """The loaded backbone (one per name and device per server process)."""
    return load_backbone(name, device)


@st.cache_data(ttl=300, show_spinner="Reading the dataset…", max_entries=32)
def dataset_summary(name: str) -> dict:
    """Domains, classes, image counts and warnings of a dataset (built-ins are generated on first use)."""
    ds = load_dataset(name)
    return {"name": ds.name, "n_images": len(ds), "domains": list(ds.domains), "classes": list(ds.classes),
            "warnings": list(ds.warnings), "n_skipped": len(ds.skipped)}


@st.cache_resource(ttl=30, show_spinner="Scanning the dataset…", max_entries=8)
def _scan(name: str):
    return load_dataset(name)


def scanned_dataset(name: str):
    """The scanned dataset, kept for 30 s: slider moves reuse the scan instead of re-statting every image
    (seconds on a DomainNet-sized folder); a file added or changed shows up within 30 s."""
    try:
        return _scan(name)
    except EXPECTED_ERRORS as e:
        st.error(f"{e}\n\nChange the setting in the controls or the sidebar and try again.")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=20000)
def thumbnail(path: str, size: int = 96) -> str:
    """A base64 PNG data URI of the image at ``path``."""
    return figures.thumbnail_data_uri(path, size)


@st.cache_data(show_spinner="k-means…", max_entries=64)
def cluster_labels(features: np.ndarray, n_clusters: int, random_state: int) -> np.ndarray:
    return kmeans_labels(features, n_clusters, random_state)[0]


@st.cache_resource(show_spinner=False)
def png_export_available() -> bool:
    return figures.png_export_available()


class _Warmup:
    """UMAP's numba compilation running in a background thread (one per server process)."""

    def __init__(self, enabled: bool):
        import threading

        self.done = threading.Event()  # every path compiled
        self.small_done = threading.Event()  # the exact-neighbour path (fewer than SMALL_DATA points) compiled
        self.seconds: float | None = None
        self.error: str | None = None
        self.enabled = enabled
        if enabled:
            threading.Thread(target=self._run, name="domainlens-umap-warmup", daemon=True).start()
        else:
            self.small_done.set()
            self.done.set()

    def _stage(self, name: str) -> None:
        if name == "exact":
            self.small_done.set()

    def _run(self) -> None:
        from core.analysis import reduce as _reduce

        try:
            self.seconds = _reduce.warm_umap(on_stage=self._stage)
            print(f"DomainLens: UMAP warm-up finished in {self.seconds:.1f} s", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - a failed warm-up only means the first UMAP compiles itself
            self.error = f"{type(e).__name__}: {e}"
            print(f"DomainLens: UMAP warm-up failed ({self.error})", file=sys.stderr, flush=True)
        finally:
            self.small_done.set()
            self.done.set()


@st.cache_resource(show_spinner=False)
def start_umap_warmup() -> _Warmup:
    """Start compiling UMAP's numba code in the background (app.py calls this when the server starts).
    ``DOMAINLENS_WARM_UMAP=0`` turns it off (the tests do: they never wait for it)."""
    return _Warmup(os.environ.get("DOMAINLENS_WARM_UMAP", "1").strip() not in ("0", "false", "no", ""))


def warm_umap(n_points: int | None = None) -> bool:
    """Wait for the part of the background UMAP warm-up (started at server start) that a layout of
    ``n_points`` needs (below 4096 points only the exact-neighbour path; None: all of it)."""
    from core.analysis.reduce import SMALL_DATA

    w = start_umap_warmup()
    ready = w.small_done if n_points is not None and n_points < SMALL_DATA else w.done
    if w.enabled and not ready.is_set():
        with st.spinner("Preparing UMAP: numba compiles once per server process; it started in the background "
                        "when the server did…", show_time=True):
            ready.wait()
    return True


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
