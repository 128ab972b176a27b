"""Layer similarity: linear / debiased CKA between every (block, timestep) of a model, or against another
model's layers, as a heatmap with the values on hover."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from core.analysis.cka import auto_max_dim, cka_matrix, common_rows, model_layers
from core.analysis.filmstrip import clip_timesteps
from core.cli.views import command
from core.figures.views import cka_heatmap
from pages._access import scanned_dataset
from pages._controls import ensure_state, pooling_control
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._sidebar import (current_model, DEFAULT_TIMESTEP, model_choices, model_label, OTHER_MODEL, settings,
                            short_model_name)
from pages._memo import memo_run, request_key

TIMESTEP_CHOICES = [0, 10, 25, 50, 100, 200, 400, 700, 999]
NONE = "(none: this model's layers only)"

s = settings()
model = current_model(s)

st.title("Layer similarity")
st.caption("Which layers see the images alike? Centred kernel alignment (CKA; Kornblith et al. 2019) between "
           "the pooled features of every pair of layers, on the same images: 1 = the same geometry up to a "
           "rotation and scale, 0 = unrelated. Debiased CKA (Song et al.'s unbiased HSIC) does not drift towards 1 "
           "when images are few.")

c_blocks, c_times, c_opts = st.columns([5, 4, 3], gap="large")
ensure_state("cka_blocks", lambda v: bool(v) and all(b in model.blocks for b in v), list(model.blocks))
picked = c_blocks.multiselect("Blocks", model.blocks, key="cka_blocks")
blocks = [b for b in model.blocks if b in picked]
timesteps: list[int] = [DEFAULT_TIMESTEP]
if model.uses_timestep:
    choices = clip_timesteps(TIMESTEP_CHOICES, model.num_train_timesteps)
    ensure_state("cka_timesteps", lambda v: bool(v) and all(t in choices for t in v),
                    [t for t in (10, 50, 200) if t in choices] or choices[:1])
    timesteps = sorted(c_times.multiselect("Timesteps", choices, key="cka_timesteps"))
else:
    c_times.markdown("**Timesteps:** n/a (baseline)")
others = [m for m in model_choices() if m not in (OTHER_MODEL, s.model)]
ensure_state("cka_other", lambda v: v in [NONE] + others, NONE)
other_name = c_opts.selectbox("Compare with model", [NONE] + others, key="cka_other", format_func=model_label,
                              help="Rows: this model's layers; columns: the other model's (same images).")
debiased = c_opts.toggle("Debiased CKA", key="cka_debiased", value=False)
if not blocks or not timesteps:
    st.info("Pick at least one block and one timestep.")
    st.stop()

config = s.extraction(timesteps[0], token_pooling=pooling_control(model, c_opts, "cka_"))
ds = scanned_dataset(config.dataset)
key = request_key("cka-layers", s, config, blocks=blocks, timesteps=timesteps)
layers, ids = memo_run(key, model_layers, config, blocks, timesteps, model=model, device=s.device, dataset=ds)
other_layers = None
if other_name != NONE:
    other = current_model(s, other_name)
    ocfg = replace(config, model=other_name)
    okey = request_key("cka-layers", s, ocfg, blocks=None, timesteps=timesteps)
    other_layers, oids = memo_run(okey, model_layers, ocfg, None, timesteps, model=other, device=s.device,
                                  dataset=ds, prefix=f"{short_model_name(other_name)}: ")
    ra, rb = common_rows(ids, oids)
    layers = {k: v[ra] for k, v in layers.items()}
    other_layers = {k: v[rb] for k, v in other_layers.items()}
max_dim = auto_max_dim({**layers, **(other_layers or {})})
if max_dim and st.toggle("Exact CKA (slower)", key="cka_exact", value=False,
                         help=f"Many features: by default each layer is first projected on its {max_dim} leading "
                              "principal components (seconds). Exact compares the full features (banded Gram "
                              "matrices; about 30 s for 90 SD-2.1-sized layers at 5k images on 2 cores, bench 11)."):
    max_dim = None
try:
    M, rows, cols = cka_matrix(layers, other_layers, debiased=debiased, max_dim=max_dim, seed=s.seed)
except ValueError as e:
    st.error(f"{e}\n\nPick fewer blocks or timesteps, or more images per domain.")
    st.stop()
measure = "debiased CKA" if debiased else "linear CKA"
fig = cka_heatmap(M, rows, cols, measure=measure,
                  title=f"{measure} · {len(next(iter(layers.values()))):,} images")
st.plotly_chart(fig, key="cka_heatmap", theme=None, config=PLOT_CONFIG)
if max_dim:
    st.caption(f"Many features: each layer was first projected on its {max_dim} leading principal components "
               "(an approximation: CKA weights directions by their squared variance, so it is close when a few "
               "directions dominate, and off by up to ~0.1 when a layer's variance is spread thinly; bench 11).")
long = pd.DataFrame([{"row": r, "col": c, "cka": float(M[i, j])} for i, r in enumerate(rows) for j, c in enumerate(cols)])
wide = pd.DataFrame(M, index=rows, columns=cols).reset_index(names="layer")
with st.expander("Table"):
    st.dataframe(wide, hide_index=True, width="stretch")
opts = dict(timesteps=timesteps if model.uses_timestep else None, blocks=",".join(blocks),
            other_model=None if other_name == NONE else other_name, debiased=debiased,
            max_dim=0 if max_dim is None and auto_max_dim({**layers, **(other_layers or {})}) else None)
spec = {"view": "cka", "extraction": config.to_dict(), "measure": measure, "max_dim": max_dim,
        **{k: v for k, v in opts.items() if k != "max_dim"},
        "cli": command("cka", dataset=config.dataset, model=config.model, max_per_domain=config.max_per_domain,
                       token_pooling=config.token_pooling,
                       seed=config.seed, **opts, out="cka")}
export_panel("cka", figs={"CKA heatmap": fig}, tables={"cka": long, "cka matrix": wide}, spec=spec, key="cka-export")
