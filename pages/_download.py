"""The sidebar's "Download…" expander: fetch a catalogue dataset or a Hub model's safetensors on request, with a
progress bar (the same core calls as ``python -m core download``, :mod:`core.data.download`). The button is off,
with the reason, when the environment says offline (``HF_HUB_OFFLINE=1``) or the source cannot be reached."""

from __future__ import annotations

import threading
from typing import Any

import streamlit as st

from core.data import download as dl

MODEL = "Model (Hub id)"
DATASET = "Dataset"


@st.cache_data(ttl=300, show_spinner=False)
def _unavailable(target: str) -> str | None:
    """Why the button is off (offline switch, manual source, host unreachable: a probe of at most 1 s, cached)."""
    return dl.unavailable_reason(target, timeout=1.0)


def downloaded_datasets() -> list[str]:
    """Names of the datasets installed by a download (the dataset picker lists them; ``load_dataset`` resolves
    them inside the data home)."""
    return [name for name, _ in dl.installed_datasets()]


def download_panel(container: Any) -> None:
    """Render the collapsed "Download…" expander into ``container`` (the sidebar)."""
    with container.expander("Download a dataset or model…"):
        kind = st.radio("What", [DATASET, MODEL], horizontal=True, key="dl_kind", label_visibility="collapsed")
        if kind == DATASET:
            target = st.selectbox("Dataset", list(dl.CATALOGUE), key="dl_dataset",
                                  format_func=lambda n: f"{n} — {dl.CATALOGUE[n].description}")
            if dl.installed_root(target) is not None:
                st.caption(f"{target} is installed: pick it in the Dataset list.")
                return
        else:
            target = st.text_input("Hub model id", key="dl_model", placeholder="openai/clip-vit-base-patch16",
                                   help="Only safetensors weights and configs are fetched, into the Hugging Face "
                                        "cache; then type the id under Model → Other.").strip()
            if not target:
                return
            if not dl.HUB_ID.fullmatch(target):
                st.caption("A Hub id has the form owner/name.")
                return
        why = _unavailable(target)
        clicked = st.button("Download", key="dl_go", disabled=why is not None,
                            help=f"Off: {why}" if why else f"Fetch {target} now (python -m core download {target})")
        if why:
            st.caption(f"Off: {why}. Or on a connected machine: `python -m core download {target}`.")
        if clicked:
            _run(kind, target)


def _run(kind: str, target: str) -> None:
    """Run the download in a worker thread (huggingface_hub reports progress from its own threads) and show its
    progress from this script thread."""
    state: dict[str, Any] = {"done": 0, "total": None}

    def progress(done: int, total: int | None) -> None:
        state["done"], state["total"] = done, total

    def work() -> None:
        try:
            if kind == DATASET:
                state["result"] = dl.download_dataset(target, progress=progress)
            else:
                state["result"] = dl.download_model(target, progress=progress)
        except Exception as e:  # noqa: BLE001 - shown below
            state["error"] = e

    worker = threading.Thread(target=work, name=f"download-{target}", daemon=True)
    worker.start()
    bar = st.progress(0.0, text=f"Downloading {target}…")
    while worker.is_alive():
        worker.join(0.3)
        total = state["total"]
        if total:
            bar.progress(min(1.0, state["done"] / total),
                         text=f"Downloading {target}: {state['done'] / 1e6:,.1f} of {total / 1e6:,.1f} MB")
    bar.empty()
    err = state.get("error")
    if err is not None:
        st.error(str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}")
        return
    res = state["result"]
    if kind == DATASET:
        st.success(f"{res.name} is installed at {res.root}: pick it in the Dataset list.")
    else:
        st.success(f"Downloaded {len(res.files)} files ({res.bytes / 1e6:,.1f} MB) of {res.repo}: choose "
                   f"Model → Other and type {res.repo}.")


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    from pages._env import APP_PATH

    st.switch_page(str(APP_PATH))
