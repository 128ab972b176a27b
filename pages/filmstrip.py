"""Film strip: the same images frame by frame over timesteps (or down the UNet's blocks), layouts aligned,
domain and class NMI per frame; the animation plays in the browser."""

from __future__ import annotations

import streamlit as st

from core.analysis.filmstrip import ALIGNMENT, DEFAULT_TIMESTEPS, block_strip, clip_timesteps, timestep_strip
from core.cli.views import command
from core.figures.views import strip_figure
from pages._access import scanned_dataset
from pages._controls import (COLOUR_LABELS, ensure_state, layer_label, pooling_control, REDUCER_LABELS,
                             reduction_controls, timestep_control)
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._sidebar import current_model, DEFAULT_TIMESTEP, settings
from pages._memo import memo_run, request_key

CHOICES = sorted(set(DEFAULT_TIMESTEPS) | {5, 150, 300, 500, 600, 800, 900})
MODES = {"timestep": "Over timesteps (one layer)", "block": "Walk down the layers (one timestep)"}

s = settings()
model = current_model(s)

st.title("Film strip")
st.caption("How the picture changes with the noise level, or from layer to layer: every frame places the same "
           "images by that frame's features. " + ALIGNMENT + " Press ▶ Play under the chart, or drag the slider "
           "there: the frames play in the browser, and the NMI panel's ring follows the frame shown. Every frame's "
           "numbers are in the table under the chart.")

modes = list(MODES) if model.uses_timestep else ["block"]
ensure_state("strip_mode", lambda v: v in modes, modes[0])
c_mode, c_what, c_red = st.columns([3, 5, 4], gap="large")
mode = c_mode.radio("Strip", modes, key="strip_mode", format_func=MODES.get)
timestep = DEFAULT_TIMESTEP
if mode == "timestep":
    hi = model.num_train_timesteps - 1
    choices = clip_timesteps(CHOICES, hi + 1)
    default = clip_timesteps(DEFAULT_TIMESTEPS, hi + 1)
    ensure_state("strip_block", lambda v: v in model.blocks, model.default_block)
    block = c_what.select_slider("Layer", options=model.blocks, key="strip_block", format_func=layer_label(model))
    ensure_state("strip_timesteps", lambda v: bool(v) and all(t in choices for t in v), default)
    timesteps = sorted(c_what.multiselect("Timesteps (frames)", choices, key="strip_timesteps",
                                          help="One UNet pass per timestep gives every block (cached)."))
    if not timesteps:
        st.info("Pick at least one timestep.")
        st.stop()
else:
    block = None
    if model.uses_timestep:
        timestep = timestep_control(model, "strip_timestep", c_what)
    else:
        c_what.markdown("**Timestep:** n/a (baseline)")
reduction = reduction_controls(s.seed, prefix="strip_", container=c_red)
ensure_state("strip_colour", lambda v: v in ("domain", "class"), "domain")
colour = c_red.radio("Colour by", ["domain", "class"], key="strip_colour", horizontal=True,
                     format_func=COLOUR_LABELS.get)

config = s.extraction(timestep, token_pooling=pooling_control(model, c_what, "strip_"))
ds = scanned_dataset(config.dataset)
if mode == "timestep":
    key = request_key("filmstrip", s, config, mode=mode, block=block, timesteps=timesteps, reduction=reduction.params())
    strip = memo_run(key, timestep_strip, config, block, timesteps, reduction, model=model, device=s.device,
                     dataset=ds)
else:
    key = request_key("filmstrip", s, config, mode=mode, reduction=reduction.params())
    strip = memo_run(key, block_strip, config, None, reduction, model=model, device=s.device, dataset=ds)

# One frame control, Plotly's own (play, pause, slider run in the browser): the NMI panel in the figure follows
# it, so nothing on the page shows another frame's numbers. The first frame shown: t = 50 / the default layer.
labels = strip.labels
preferred = model.default_block if mode == "block" else f"t = {DEFAULT_TIMESTEP}"
fig = strip_figure(strip, colour, active=labels.index(preferred) if preferred in labels else 0,
                   title=(f"{block} · timesteps" if mode == "timestep" else
                          "Layers" + (f" at t = {timestep}" if model.uses_timestep else "")) +
                         f" · {REDUCER_LABELS[reduction.method]} · {len(strip.ids):,} images")
st.plotly_chart(fig, key="strip_chart", theme=None, config=PLOT_CONFIG)

st.dataframe(strip.scores, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f", help=(
                 "Procrustes disparity between this frame's layout and the previous one: 0 = same picture"
                 if c == "disparity" else "k-means on the frame's full features; mean (± std) over 5 seeds"))
                 for c in strip.scores.columns if c.endswith(("nmi", "std", "disparity"))})
opts = (dict(mode="timestep", block=block, timesteps=strip.values) if mode == "timestep"
        else dict(mode="block", timesteps=[timestep], blocks=",".join(strip.values)))
spec = {"view": "filmstrip", "extraction": config.to_dict(), **opts, "reduction": reduction.params(), "colour": colour,
        "cli": command("filmstrip", dataset=config.dataset, model=config.model, max_per_domain=config.max_per_domain,
                       token_pooling=config.token_pooling,
                       seed=config.seed, **opts, reducer=reduction.method, colour=colour, out="filmstrip")}
export_panel("filmstrip", figs={"film strip": fig},
                tables={"frames": strip.scores, "layouts": strip.layouts_frame()}, spec=spec, key="strip-export")
