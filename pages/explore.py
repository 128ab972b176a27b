"""Explore: one setting (block, timestep, prompt) -> a 2-D layout of the images and the domain scores."""

from __future__ import annotations

import streamlit as st

from core import figures
from core.analysis.explore import explore_faithfulness, explore_view
from pages._access import scanned_dataset, thumbnail
from pages._confounds import confounds_panel
from pages._controls import (colour_control, COLOUR_LABELS, image_mode_control, REDUCER_LABELS, reduction_controls,
                             setting_controls)
from pages._exports import export_panel, reproduce_spec, scores_frame
from pages._output import (faithfulness_metrics, hover_texts, image_grid, labels_for, PLOT_CONFIG, point_images,
                           score_metrics, selected_rows, spatial_panel)
from pages._progress import run_core
from pages._sidebar import current_model, settings

s = settings()
model = current_model(s)

st.title("Explore")
st.caption("Each point is an image, placed by the UNet feature of the chosen block. Scores use the full "
           "features; the layout is for looking. Click a point to see its image, or pick the box or lasso tool "
           "(top right of the chart) and draw to see a group.")

c_block, c_time, c_prompt = st.columns([5, 4, 4], gap="large")
block, timestep, prompt, cond = setting_controls(model, columns=(c_block, c_time, c_prompt))
c_red, c_par, c_col = st.columns([5, 4, 4], gap="large")
reduction = reduction_controls(s.seed, container=c_red, params_container=c_par)
colour = colour_control(container=c_col)

config = s.extraction(timestep, prompt, **cond)
result = run_core(explore_view, config, block, reduction, model=model, device=s.device,
                     dataset=scanned_dataset(config.dataset), n_init=s.n_init)
fs = result.features

labels, categories = labels_for(fs, colour, block, s.seed)
image_mode = image_mode_control(len(fs), container=c_col)
faith = explore_faithfulness(fs, block, result.embedding, random_state=s.seed)  # no feature read when warm
title = f"{block}" + (f" · t = {timestep}" if model.uses_timestep else "") + f" · {REDUCER_LABELS[reduction.method]}"
hover = hover_texts(fs) if len(fs) <= figures.DENSITY_ABOVE else None  # a density view draws no hover
fig = figures.scatter(result.embedding, labels, hover=hover, categories=categories,
                      label_name=COLOUR_LABELS[colour].lower(), title=title,
                      images=point_images(fs, result.embedding) if image_mode else None)

c_plot, c_side = st.columns([3, 1], gap="medium")
with c_plot:
    event = st.plotly_chart(fig, key="scatter", on_select="rerun", selection_mode=("points", "box", "lasso"),
                            theme=None, config=PLOT_CONFIG)
with c_side:
    score_metrics(result.scores, len(fs.domain_names))
    faithfulness_metrics(faith)
    st.caption(f"{len(fs):,} images · {len(fs.domain_names)} domains · {len(fs.class_names)} classes"
               + (f" · {len(fs.skipped)} unreadable skipped" if fs.skipped else ""))
    if result.layout_note:  # the layout covers a sample only, and why (core decides)
        st.caption(result.layout_note)
    rows = selected_rows(event)
    if len(rows) == 1:
        i = rows[0]
        st.image(thumbnail(fs.paths[i], 192), width=192)
        st.markdown(f"**{fs.domains[i]}** · {fs.classes[i]}  \n`{fs.ids[i]}`")
        spatial_panel(model, config, block, fs, rows, size=192, show_image=False, key="explore-spatial")

if len(rows) > 1:
    st.subheader("Selected images")
    image_grid(fs, rows)
    st.subheader(f"Spatial feature maps of {block}")
    spatial_panel(model, config, block, fs, rows, size=128, per_row=4, key="explore-spatial-grid")

confounds_panel(fs, block, s.seed)
spec = reproduce_spec(config, block, reduction, n_init=s.n_init, colour_by=colour, image_mode=image_mode,
                         layout_faithfulness={"k": faith.k, "random_state": s.seed,
                                              "api": "core.analysis.explore.explore_faithfulness"})
if rows:
    from core.analysis import spatial

    spec["spatial_maps"] = {"layer": block, "images": [fs.ids[i] for i in rows[:spatial.MAX_SHOWN]],
                            "sample_size": spatial.DEFAULT_SAMPLE, "api": "core.analysis.spatial.spatial_view"}
export_panel(
    "explore", figs={"layout": fig},
    tables={"metrics": scores_frame(result.scores, dataset=config.dataset, model=config.model, block=block,
                                       timestep=timestep if model.uses_timestep else None,
                                       prompt=prompt.label, seed=config.seed, max_per_domain=config.max_per_domain,
                                       **{f"layout_{k}": v for k, v in faith.to_dict().items()})},
    spec=spec, key="explore-export")
