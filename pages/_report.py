"""The "Report" button: the same report as ``python -m core report`` for the current selection, with
progress and ETA, then downloads (HTML, markdown, LaTeX tables). Every number comes from core.analysis.report."""

from __future__ import annotations

import time
from typing import Sequence

import streamlit as st

from core.analysis.report import ReportConfig, build_report
from core.figures.report import render_html, render_latex, render_markdown
from pages._access import get_model
from pages._controls import ensure_state
from pages._env import EXPECTED_ERRORS
from pages._sidebar import current_model, model_choices, model_label, OTHER_MODEL, Settings


def eta_text(done: int, total: int, elapsed: float) -> str:
    """"done / total images · ETA 12 s" (no ETA before any progress)."""
    if total <= 0 or done <= 0:
        return f"{done} / {total} images"
    left = elapsed * (total - done) / done
    return f"{done} / {total} images · ETA {left:.0f} s"


SELECT_LABELS = {"default": "each model's default (the paper's)",
                 "best": "best, chosen on held-out images"}


@st.cache_data(show_spinner="Writing the report…", max_entries=4)
def _build(config: ReportConfig, device: str) -> tuple[str, str, str]:
    """The report's HTML, markdown and LaTeX (after :func:`build_report` ran once with a progress bar, every
    feature, k-means and layout comes from the disk cache)."""
    loaded = {m: get_model(m, device) for m in config.models}
    rep = build_report(config, device=device, models=loaded, command=config.command("report.html", "all"))
    return render_html(rep), render_markdown(rep), render_latex(rep)


def report_button(s: Settings, blocks: Sequence[str], timesteps: Sequence[int], key: str = "report") -> None:
    """A button that builds the report of ``s.dataset`` x (the sidebar's model + chosen others) at ``blocks``
    and ``timesteps``; the files stay offered for download until the selection changes."""
    st.subheader("Report")
    others = [m for m in model_choices() if m not in (s.model, OTHER_MODEL)]
    ensure_state(f"{key}_others", lambda v: isinstance(v, list) and all(m in others for m in v), [])
    extra = st.multiselect("Also in the report", others, key=f"{key}_others", format_func=model_label,
                           help="More model columns (e.g. the baselines); each at its own layers.")
    ensure_state(f"{key}_select", lambda v: v in SELECT_LABELS, "default")
    select = st.radio("Layer and timestep", list(SELECT_LABELS), key=f"{key}_select", format_func=SELECT_LABELS.get,
                      horizontal=True,
                      help="The paper's protocol fixes the layer. 'Best' chooses on the data: on the built-in "
                           ":train split (or a seeded half of a folder's images) and reports disjoint images.")
    config = ReportConfig(datasets=(s.dataset,), models=(s.model, *extra), blocks=tuple(blocks) or None,
                          timesteps=tuple(int(t) for t in timesteps), max_per_domain=s.max_per_domain, seed=s.seed,
                          select=select)
    clicked = st.button("Build report", key=f"{key}_build", icon=":material/description:",
                        help="The paper's table shape with 95 % intervals, AMI and chance floors, heatmaps, t-SNE "
                             "panels, stability and a reproducibility footer, as one self-contained HTML file (and a "
                             "markdown twin and LaTeX tables). Cached features are reused.")
    if clicked:
        st.session_state[f"{key}_request"] = config  # a UI choice: what the user asked to report
    if st.session_state.get(f"{key}_request") != config:
        st.caption("Builds the report for this dataset, model(s), blocks and timesteps.")
        return
    for m in config.models:
        current_model(s, m)
    n_model = None
    try:
        if clicked:  # compute what is missing with a progress bar (features, scores, layouts go to the disk cache)
            bar = st.progress(0.0, text="Building the report…")
            start = time.monotonic()

            def progress(done: int, total: int) -> None:
                bar.progress(min(1.0, done / total) if total else 1.0,
                             text=eta_text(done, total, time.monotonic() - start))

            try:
                n_model = build_report(config, device=s.device, progress=progress,
                                       models={m: get_model(m, s.device) for m in config.models}).n_model_images
            finally:
                bar.empty()
        html_text, md_text, tex_text = _build(config, s.device)  # from the disk cache: runs no model
    except EXPECTED_ERRORS as e:
        st.error(f"{e}\n\nChange the selection and try again.")
        return
    cost = "" if n_model is None else f"; {n_model} image(s) went through a model, 0 = all from the cache"
    st.caption(f"Report ready ({len(html_text) / 1e6:.1f} MB HTML{cost}). Reproduce with:")
    st.code(config.command("report.html", "all"), language="bash")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Report (HTML)", html_text, file_name="domainlens-report.html", mime="text/html",
                       key=f"{key}_dl_html", on_click="ignore", icon=":material/download:")
    c2.download_button("Report (markdown)", md_text, file_name="domainlens-report.md", mime="text/markdown",
                       key=f"{key}_dl_md", on_click="ignore", icon=":material/download:")
    c3.download_button("Tables (LaTeX)", tex_text, file_name="domainlens-report.tex", mime="text/x-tex",
                       key=f"{key}_dl_tex", on_click="ignore", icon=":material/download:",
                       help="The headline tables with their intervals (booktabs), for a paper")
