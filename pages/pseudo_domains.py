"""Pseudo-domains (GUIDE): k-means on the diffusion features, compared with the true domains and classes."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core import figures
from core.analysis.pseudo_domains import PseudoDomains, centroid_frame, pseudo_domains
from core.analysis.dg import cluster_agreement
from core.engine.extract import get_features
from pages._access import thumbnail
from pages._controls import ensure_state, setting_controls
from pages._exports import export_panel, npy_bytes, reproduce_spec
from pages._output import PLOT_CONFIG
from pages._progress import run_core
from pages._sidebar import current_model, n_domains, settings


@st.cache_data(show_spinner="k-means…", max_entries=32)
def pseudo(features: np.ndarray, n_clusters: int, domains: tuple[str, ...], classes: tuple[str, ...],
           domain_names: tuple[str, ...], class_names: tuple[str, ...], seed: int) -> PseudoDomains:
    return pseudo_domains(features, n_clusters, domains, classes, random_state=seed,
                                  domain_names=domain_names, class_names=class_names)


s = settings()
model = current_model(s)

st.title("Pseudo-domains")
st.caption("GUIDE-style: k-means (k-means++) on the features of one block, without any domain label. Each "
           "image's pseudo-domain is its nearest centroid. How well do the clusters line up with the true "
           "domains, and how little with the classes?")

c_block, c_time, c_prompt, c_k = st.columns([5, 4, 4, 2], gap="large")
block, timestep, prompt, cond = setting_controls(model, prefix="pd_", columns=(c_block, c_time, c_prompt))
n_dom = n_domains(s)
ensure_state("pd_k", lambda v: isinstance(v, int) and 2 <= v <= 100, n_dom)
k = int(c_k.number_input("Clusters K", min_value=2, max_value=100, step=1, key="pd_k",
                         help="Default: the number of domains. GUIDE used K = classes × {1, 3, 5}."))

config = s.extraction(timestep, prompt, **cond)
fs = run_core(get_features, config, "all", model=model, device=s.device)
if len(fs) < k:
    st.error(f"K = {k} clusters but only {len(fs)} images: lower K or raise the images per domain.")
    st.stop()
pdm = pseudo(fs.features[block], k, tuple(fs.domains), tuple(fs.classes), tuple(fs.domain_names),
             tuple(fs.class_names), s.seed)

agree = cluster_agreement(fs.domains, pdm.labels)
m1, m2, m3, m4, m5 = st.columns(5)
m1.metric("Clusters ↔ domains NMI", f"{pdm.domain_nmi:.3f}", help="Higher: the pseudo-domains recover the domains.")
m2.metric("Domain homogeneity", f"{agree['homogeneity']:.3f}",
          help="1 = every pseudo-domain holds images of one domain only (what GUIDE needs). NMI also penalises "
               "splitting a domain over several pseudo-domains, so above K = domains it falls while this stays 1.")
m3.metric("Domain purity", f"{agree['purity']:.3f}", help="Share of images in their pseudo-domain's majority domain.")
m4.metric("Clusters ↔ classes NMI", f"{pdm.class_nmi:.3f}", help="Lower: the pseudo-domains ignore the classes.")
m5.metric("Images", f"{len(fs):,}")

fig_dom = figures.confusion_heatmap(pdm.by_domain, title="Pseudo-domain × domain")
fig_cls = figures.confusion_heatmap(pdm.by_class, title="Pseudo-domain × class", colorscale="Oranges")
c1, c2 = st.columns(2)
c1.plotly_chart(fig_dom, theme=None, config=PLOT_CONFIG, key="pd_by_domain")
c2.plotly_chart(fig_cls, theme=None, config=PLOT_CONFIG, key="pd_by_class")

st.subheader("Exemplars (nearest to each centroid)")
summary = pdm.summary()
for row in summary.itertuples(index=False):
    st.markdown(f"**cluster {row.cluster}** · {row.images} images · mostly *{row[2]}* ({row[3]:.0%}) · "
                f"class *{row[4]}* ({row[5]:.0%})")
    ex = pdm.exemplars[row.cluster]
    st.image([thumbnail(fs.paths[i], 96) for i in ex], caption=[f"{fs.domains[i]} · {fs.classes[i]}" for i in ex],
             width=96)

assignments = pdm.assignments(fs.ids, fs.paths, fs.domains, fs.classes)
centroids = centroid_frame(pdm.centroids)
spec = reproduce_spec(config, block, n_clusters=k, kmeans_random_state=s.seed)
export_panel("pseudo-domains", figs={"pseudo-domain x domain": fig_dom, "pseudo-domain x class": fig_cls},
                tables={"assignments": assignments, "centroids": centroids, "clusters": summary},
                files={"centroids.npy": (npy_bytes(pdm.centroids), "application/octet-stream")},
                spec=spec, key="pd-export")
