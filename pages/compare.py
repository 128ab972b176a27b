"""Compare: two settings (model, block, timestep, prompt) side by side on the same images.

Layout B is rotated, scaled and shifted onto layout A (Procrustes on the images both share), so the same
image sits in a comparable place; the scores show B's difference from A.
"""

from __future__ import annotations

import streamlit as st

from core import figures
from core.analysis.align import align_by_ids
from core.analysis.explore import compare_settings, explore_faithfulness, explore_view
from core.analysis.moved import DEFAULT_K, what_moved
from pages._access import scanned_dataset, thumbnail
from pages._controls import colour_control, ensure_state, reduction_controls, setting_controls
from pages._exports import export_panel, reproduce_spec
from pages._output import faithfulness_metrics, hover_texts, labels_for, PLOT_CONFIG, score_metrics
from pages._progress import run_core
from pages._sidebar import (contrast_model, current_model, model_choices, model_label, OTHER_MODEL, settings,
                            short_model_name)

s = settings()

st.title("Compare")
st.caption("Two feature spaces on the same images, e.g. a diffusion block against a baseline or another "
           "timestep. Layout B is Procrustes-aligned to layout A.")

choices = list(dict.fromkeys([s.model] + [m for m in model_choices() if m != OTHER_MODEL]))
defaults = {"A": s.model, "B": contrast_model(current_model(s), choices)}
ctrl = dict(zip("AB", st.columns(2, gap="large")))
sides = {}
for name, col in ctrl.items():
    prefix = f"cmp_{name.lower()}_"
    with col:
        st.subheader(f"Setting {name}")
        ensure_state(f"{prefix}model", lambda v: v in choices, defaults[name])
        model_name = st.selectbox("Model", choices, key=f"{prefix}model", format_func=model_label)
        model = current_model(s, model_name, container=col)
        block, timestep, prompt, cond = setting_controls(model, prefix)
    sides[name] = (model, block, timestep, prompt, cond)

c_red, c_par, c_col = st.columns([5, 4, 4], gap="large")
reduction = reduction_controls(s.seed, prefix="cmp_", container=c_red, params_container=c_par)
colour = colour_control(prefix="cmp_", container=c_col, clusters=False)

results, configs = {}, {}
for name, (model, block, timestep, prompt, cond) in sides.items():
    configs[name] = s.extraction(timestep, prompt, model=model.name, **cond)
    results[name] = run_core(explore_view, configs[name], block, reduction, model=model, device=s.device,
                                dataset=scanned_dataset(configs[name].dataset), n_init=s.n_init,
                                label=f"Setting {name}: extracting features")

ra, rb = results["A"], results["B"]
aligned_b, disparity = align_by_ids(ra.features.ids, ra.embedding, rb.features.ids, rb.embedding)
ranges = figures.shared_ranges(ra.embedding, aligned_b)
figs = {}
plots = dict(zip("AB", st.columns(2, gap="large")))  # one row: both layouts at the same height
for name, res, emb in (("A", ra, ra.embedding), ("B", rb, aligned_b)):
    model, block, timestep, _, _ = sides[name]
    fs = res.features
    labels, categories = labels_for(fs, colour, block, s.seed)
    title = f"{name}: {short_model_name(model.name)} · {block}" + (f" · t = {timestep}" if model.uses_timestep else "")
    hover = hover_texts(fs) if len(fs) <= figures.DENSITY_ABOVE else None  # a density view draws no hover
    figs[name] = figures.scatter(emb, labels, hover=hover, categories=categories,
                                 label_name=colour, title=title, ranges=ranges, height=520)
    with plots[name]:
        st.plotly_chart(figs[name], theme=None, config=PLOT_CONFIG, key=f"cmp_plot_{name}")
        m1, m2 = st.columns(2)
        score_metrics(res.scores, len(fs.domain_names), container=[m1, m2, m1, m2],
                         reference=None if name == "A" else ra.scores)
        faith = explore_faithfulness(fs, block, res.embedding, random_state=s.seed)
        faithfulness_metrics(faith, container=[m1, m2])

n_common = len(set(ra.features.ids) & set(rb.features.ids))
st.caption(f"Layout B aligned to A on {n_common:,} shared images (Procrustes disparity {disparity:.2f}: "
           "0 = the same layout up to rotation and scale, 1 = unrelated). Deltas are B − A.")
table = figures.score_table(ra.scores, rb.scores)
st.dataframe(table, hide_index=True, width="content",
             column_config={c: st.column_config.NumberColumn(format="%+.3f" if c == "delta" else "%.3f")
                            for c in ("A", "B", "delta")})
paired = None
try:  # same images, same k-means clusters as the scores above: a paired bootstrap of B − A
    with st.spinner("Paired bootstrap of B − A…"):
        paired = compare_settings(ra.features, sides["A"][1], rb.features, sides["B"][1], n_init=s.n_init,
                                  seed=s.seed)
except ValueError as e:
    st.warning(f"No paired comparison: {e}")
if paired is not None:
    (st.success if paired.nmi.excludes_zero else st.info)(paired.verdict())
    st.caption(f"Domain AMI B − A: {paired.ami.format(signed=True)}. Both settings are scored on the same "
               f"{paired.n_common:,} images in every bootstrap draw; a verdict needs a 95 % interval that excludes 0.")

st.subheader("What moved")
st.caption("Images whose neighbourhood changes most from A to B: the share of an image's k nearest neighbours "
           "in A's full feature space that are not among its k nearest in B's (the layouts play no part). "
           "Per-domain NMI: how cleanly k-means isolates each domain (1 = the domain is one cluster).")
ensure_state("cmp_moved_k", lambda v: isinstance(v, int), DEFAULT_K)
c_k, _ = st.columns([2, 5])
k = int(c_k.slider("Neighbours k", 2, 50, key="cmp_moved_k"))
try:
    moved = what_moved(ra.features, sides["A"][1], rb.features, sides["B"][1], k=k)
except ValueError as e:
    st.error(f"{e}\n\nPick settings over the same dataset and sample (sidebar), then try again.")
    st.stop()
c_tab, c_dom = st.columns([3, 2], gap="large")
with c_tab:
    top = moved.table.head(50).copy()
    top.insert(1, "image", [thumbnail(p, 64) for p in top["path"]])
    st.dataframe(top.drop(columns=["path"]), hide_index=True, key="cmp_moved_table", row_height=68, width="stretch",
                 column_config={"rank": st.column_config.NumberColumn("rank", width="small"),
                                "image": st.column_config.ImageColumn("image", width="small"),
                                "moved": st.column_config.ProgressColumn(
                                    "moved", format="%.2f", min_value=0.0, max_value=1.0, width="small",
                                    help=f"share of the image's {moved.k} nearest neighbours in A not among them in B"),
                                "shared": st.column_config.NumberColumn("kept", width="small",
                                                                        help="neighbours kept from A to B")})
    st.caption(f"The 50 most-moved of {moved.n_common:,} shared images; the CSV export has them all.")
with c_dom:
    st.dataframe(moved.per_domain, hide_index=True, key="cmp_moved_domains", width="stretch",
                 column_config={c: st.column_config.NumberColumn(
                     format={"delta": "%+.3f", "images": "%d"}.get(c, "%.3f"), width="small")
                     for c in ("images", "A", "B", "delta", "mean moved")})

spec = {name: reproduce_spec(configs[name], sides[name][1], reduction, n_init=s.n_init) for name in ("A", "B")}
spec["cli"] = "\n".join(spec[n]["cli"] for n in ("A", "B"))
spec["what_moved"] = {"k": moved.k, "n_seeds": 5, "api": "core.analysis.moved.what_moved(fs_a, block_a, fs_b, block_b, k)"}
export_panel("compare", figs={"layout A": figs["A"], "layout B": figs["B"]},
                tables={"scores": table, "what moved": moved.table, "per-domain NMI": moved.per_domain,
                        **({"paired difference": paired.to_frame()} if paired is not None else {})},
                spec=spec, key="compare-export")
