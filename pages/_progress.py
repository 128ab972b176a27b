"""Running core from a page: a progress bar with image counts, elapsed time and ETA (tqdm's formatter, as the
CLI prints it), and expected errors shown with what to do."""

from __future__ import annotations

import time
from typing import Callable

import streamlit as st


from pages._env import APP_PATH, EXPECTED_ERRORS


def progress_text(label: str, done: int, total: int, elapsed: float, unit: str = "images") -> str:
    """``label: 40 / 120 images [00:05<00:10, 8.00 images/s]``: the counts, elapsed time, ETA and rate as the
    CLI's tqdm bar prints them (tqdm's own formatter)."""
    from tqdm import tqdm

    return f"{label}: " + tqdm.format_meter(done, total or None, elapsed, unit=f" {unit}", unit_scale=False,
                                             bar_format="{n_fmt} / {total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]")


def run_core(fn: Callable, *args, label: str = "Extracting features", stop: bool = True, **kwargs):
    """Call a core function that reports ``progress(done, total)``: a progress bar with image counts and an
    ETA (shown only when the call is slow, i.e. not served from the cache). Expected errors are shown with
    what to do, and the page stops (with ``stop=False``: shown as a warning, and None is returned)."""
    bar = st.empty()
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = time.monotonic() - start
        if elapsed > 0.3:  # a cache hit returns sooner: no flashing bar
            bar.progress(min(1.0, done / total) if total else 1.0, text=progress_text(label, done, total, elapsed))

    try:
        with st.spinner("Computing (extracted features, layouts and scores are cached on disk)…", show_time=True):
            return fn(*args, progress=progress, **kwargs)
    except EXPECTED_ERRORS as e:
        if not stop:
            st.warning(str(e))
            return None
        st.error(f"{e}\n\nChange the setting in the controls or the sidebar and try again.")
        st.stop()
    finally:
        bar.empty()


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
