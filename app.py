"""DomainLens dashboard: ``streamlit run app.py``.

Builds the navigation over the pages in ``pages/`` and renders the shared sidebar (dataset, model, images
per domain, seed, device) before the chosen page runs, so the sidebar keeps its state across pages.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports torch, numba (UMAP) or tokenizers.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "domainlens" / "numba"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads otherwise spin after every op and starve the t-SNE / k-means that follow in
# the same process: on 2 busy cores a 40-point t-SNE took 50 s after an extraction, 1.7 s with this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from pages._access import start_umap_warmup  # noqa: E402
from pages._sidebar import sidebar

# A local icon: a material-symbol or emoji icon makes the browser fetch it from a font / emoji CDN on every load.
st.set_page_config(page_title="DomainLens", page_icon=str(Path(__file__).parent / "assets" / "favicon.png"),
                   layout="wide", menu_items={"About": "DomainLens: how diffusion UNet features separate image domains."})

PAGES = [
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:", default=True),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_on:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/pseudo_domains.py", title="Pseudo-domains", icon=":material/hub:"),
    st.Page("pages/dg.py", title="Domain generalization", icon=":material/alt_route:"),
    st.Page("pages/filmstrip.py", title="Film strip", icon=":material/movie:"),
    st.Page("pages/layer_similarity.py", title="Layer similarity", icon=":material/stacked_line_chart:"),
    st.Page("pages/stability.py", title="Stability", icon=":material/ssid_chart:"),
    st.Page("pages/prompt_audit.py", title="Prompt audit", icon=":material/text_fields:"),
]

# UMAP's numba code compiles once per process (~15-40 s): start it now in the background, so the first UMAP a
# user asks for is a warm one (pages/_access.warm_umap waits for it if it is still running).
start_umap_warmup()

# Less empty space above the page title (wide layout on laptops and projectors).
st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem;}</style>")

# Our own page links: `client.showSidebarNavigation = false` (.streamlit/config.toml) hides the list Streamlit
# builds from the pages/ folder on a cold start (it would offer pages/_env.py as an "env" page), and
# that option hides st.navigation's sidebar menu too, so the menu is drawn here.
page = st.navigation(PAGES, position="hidden")
for p in PAGES:
    st.sidebar.page_link(p, label=p.title, icon=p.icon)
if sidebar() is None:  # the problem is shown with what to do; the page needs valid settings
    st.stop()
page.run()
