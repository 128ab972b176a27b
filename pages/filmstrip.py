"""Film strip: the same images frame by frame over timesteps (or down the UNet's blocks), layouts aligned,
domain and class NMI per frame; the animation plays in the browser."""

from __future__ import annotations

import streamlit as st

from core.analysis.filmstrip import ALIGNMENT, DEFAULT_TIMESTEPS, block_strip, clip_timesteps, timestep_strip
from core.cli.views import command
from core.figures.views import strip_figure
from pages._access import scanned_dataset
from pages._controls import COLOUR_LABELS, ensure_state, pooling_control, REDUCER_LABELS, reduction_controls
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._sidebar import current_model, DEFAULT_TIMESTEP, settings
from pages._memo import memo_run, request_key

CHOICES = sorted(set(DEFAULT_TIMESTEPS) | {5, 150, 300, 500, 600, 800, 900})
MODES = {"timestep": "Over timesteps (one block)", "block": "Walk down the UNet (one timestep)"}

s = settings()
model = current_model(s)

st.title("Film strip")
st.caption("How the picture changes with the noise level, or from block to block: every frame places the same "
           "images by that frame's features. " + ALIGNMENT + " Press ▶ to play in the browser, or drag the slider "
           "under the chart; the frame control below also updates the scores.")

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
    block = c_what.select_slider("UNet block", options=model.blocks, key="strip_block")
    ensure_state("strip_timesteps", lambda v: bool(v) and all(t in choices for t in v), default)
    timesteps = sorted(c_what.multiselect("Timesteps (frames)", choices, key="strip_timesteps",
                                          help="One UNet pass per timestep gives every block (cached)."))
    if not timesteps:
        st.info("Pick at least one timestep.")
        st.stop()
else:
    block = None
    if model.uses_timestep:
        hi = model.num_train_timesteps - 1
        ensure_state("strip_timestep", lambda v: isinstance(v, int) and 0 <= v <= hi, min(DEFAULT_TIMESTEP, hi))
        timestep = c_what.slider("Timestep", 0, hi, key="strip_timestep")
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

labels = strip.labels
preferred = model.default_block if mode == "block" else f"t = {DEFAULT_TIMESTEP}"
ensure_state("strip_frame", lambda v: v in labels, preferred if preferred in labels else labels[0])
frame_label = st.select_slider("Frame", options=labels, key="strip_frame")
k = labels.index(frame_label)
row = strip.scores.iloc[k]
fig = strip_figure(strip, colour, active=k,
                   title=(f"{block} · timesteps" if mode == "timestep" else
                          "Blocks" + (f" at t = {timestep}" if model.uses_timestep else "")) +
                         f" · {REDUCER_LABELS[reduction.method]}")
c_plot, c_side = st.columns([4, 1], gap="medium")
c_plot.plotly_chart(fig, key="strip_chart", theme=None, config=PLOT_CONFIG)
c_side.metric("Domain NMI", f"{row['domain_nmi']:.3f} ± {row['domain_nmi_std']:.3f}",
              help="k-means (K = number of domains) on the full features of this frame; mean ± std over 5 seeds.")
c_side.metric("Class NMI", f"{row['class_nmi']:.3f} ± {row['class_nmi_std']:.3f}")
c_side.metric("Disparity to previous frame", f"{row['disparity']:.3f}",
              help="Procrustes disparity between this frame's layout and the previous one: 0 = same picture.")
c_side.caption(f"{len(strip.ids):,} images · frame {k + 1} of {len(labels)}")

st.dataframe(strip.scores, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in strip.scores.columns
                            if c.endswith(("nmi", "std", "disparity"))})
opts = (dict(mode="timestep", block=block, timesteps=strip.values) if mode == "timestep"
        else dict(mode="block", timesteps=[timestep], blocks=",".join(strip.values)))
spec = {"view": "filmstrip", "extraction": config.to_dict(), **opts, "reduction": reduction.params(), "colour": colour,
        "cli": command("filmstrip", dataset=config.dataset, model=config.model, max_per_domain=config.max_per_domain,
                       token_pooling=config.token_pooling,
                       seed=config.seed, **opts, reducer=reduction.method, colour=colour, out="filmstrip")}
export_panel("filmstrip", figs={"film strip": fig},
                tables={"frames": strip.scores, "layouts": strip.layouts_frame()}, spec=spec, key="strip-export")
