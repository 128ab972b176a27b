"""Exports: the CLI command and JSON configuration that reproduce a page's numbers, and the download panel
(figures as HTML / PNG, tables as CSV)."""

from __future__ import annotations

import io
import json
import shlex
from typing import Any, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core import figures
from core.engine.extract import ExtractionConfig
from core.analysis.metrics import Scores
from core.analysis.reduce import ReductionConfig

from pages._access import png_export_available
from pages._env import APP_PATH


def cli_command(config: ExtractionConfig, blocks: Sequence[str], timesteps: Sequence[int] | None = None,
                n_init: int = 1) -> str:
    """The ``python -m core sweep`` command that reproduces these numbers (``n_init``: the sidebar's k-means
    runs per seed)."""
    ts = timesteps if timesteps is not None else [config.timestep]
    parts = ["python", "-m", "core", "sweep", "--dataset", config.dataset, "--model", config.model,
             "--timesteps", ",".join(str(int(t)) for t in ts), "--blocks", ",".join(blocks)]
    if config.prompt.mode == "template":
        parts += ["--prompt-template", config.prompt.text]
    elif config.prompt.mode == "custom" and config.prompt.text:
        parts += ["--prompt", config.prompt.text]
    if config.max_per_domain:
        parts += ["--max-per-domain", str(config.max_per_domain)]
    if config.max_per_class:
        parts += ["--max-per-class", str(config.max_per_class)]
    parts += ["--seed", str(config.seed)]
    if config.ensemble != 1:
        parts += ["--ensemble", str(config.ensemble)]
    if config.resolution:
        parts += ["--resolution", str(config.resolution)]
    if config.class_label is not None:
        parts += ["--class-label", str(config.class_label)]
    if config.noise_mode != "noised":
        parts += ["--noise-mode", config.noise_mode]
    if config.token_pooling is not None:
        parts += ["--token-pooling", config.token_pooling]
    if n_init != 1:
        parts += ["--n-init", str(int(n_init))]
    return shlex.join(parts)


def reproduce_spec(config: ExtractionConfig, block: str | Sequence[str], reduction: ReductionConfig | None = None,
                   timesteps: Sequence[int] | None = None, n_init: int = 1, **extra: Any) -> dict:
    """The exact configuration as JSON-able data, with the equivalent CLI command."""
    blocks = [block] if isinstance(block, str) else list(block)
    spec: dict[str, Any] = {"extraction": config.to_dict(), "block": blocks[0] if isinstance(block, str) else blocks}
    if reduction is not None:
        spec["reduction"] = reduction.params()
    spec.update(extra)
    if n_init != 1:
        spec["n_init"] = int(n_init)
    spec["cli"] = cli_command(config, blocks, timesteps, n_init)
    return spec


def scores_frame(scores: Scores, **context: Any) -> pd.DataFrame:
    return pd.DataFrame([{**context, **scores.row()}])


def export_panel(stem: str, *, figs: dict[str, Any] | None = None, tables: dict[str, pd.DataFrame] | None = None,
                 spec: dict | None = None, files: dict[str, tuple[bytes, str]] | None = None,
                 key: str = "export") -> None:
    """Download buttons (figures as HTML and, when kaleido finds a browser, PNG; tables as CSV; the
    configuration as JSON) and the CLI command that reproduces the numbers."""
    with st.expander("Export & reproduce", icon=":material/download:"):
        buttons: list[tuple[str, Any, str, str]] = []
        for name, fig in (figs or {}).items():
            buttons.append((f"{name} (HTML)", lambda fig=fig: figures.figure_html(fig), f"{stem}-{name}.html".replace(" ", "_"), "text/html"))
            if png_export_available():
                buttons.append((f"{name} (PNG)", lambda fig=fig: figures.figure_png(fig), f"{stem}-{name}.png".replace(" ", "_"), "image/png"))
        for name, df in (tables or {}).items():
            buttons.append((f"{name} (CSV)", df.to_csv(index=False, float_format="%.6g"), f"{stem}-{name}.csv".replace(" ", "_"), "text/csv"))
        for name, (data, mime) in (files or {}).items():
            buttons.append((name, data, f"{stem}-{name}".replace(" ", "_"), mime))
        if spec is not None:
            buttons.append(("configuration (JSON)", json.dumps(spec, indent=2), f"{stem}-config.json", "application/json"))
        cols = st.columns(4)
        for i, (label, data, fname, mime) in enumerate(buttons):
            cols[i % 4].download_button(label, data=data, file_name=fname, mime=mime, on_click="ignore",
                                        key=f"{key}-{i}", icon=":material/download:", width="stretch")
        if spec is not None:
            st.caption("Reproduce the numbers from the command line:")
            st.code(spec["cli"], language="bash")


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
