"""Prompt audit: does the text put the label into the features? Empty prompt vs class and domain templates
vs controls (a per-image wrong class, a per-image shuffled class, a constant unrelated sentence), domain and
class NMI per block."""

from __future__ import annotations

import streamlit as st

from core.analysis.prompt_audit import (CLASS_TEMPLATE, CONSTANT_PROMPT, DOMAIN_TEMPLATE, conditions, leakage,
                                        prompt_audit)
from core.cli.views import command
from core.figures.views import prompt_audit_figure
from pages._access import scanned_dataset
from pages._controls import ensure_state, timestep_control
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._sidebar import current_model, settings, short_model_name
from pages._memo import memo_run, request_key

s = settings()
model = current_model(s)

st.title("Prompt audit")
st.caption("Text that names the label leaks the label into the features. A class template (“"
           + CLASS_TEMPLATE + "”) tells the UNet each image's class, a domain template (“" + DOMAIN_TEMPLATE
           + "”) its domain: scores then measure the prompt as much as the image. The controls: the class "
           "template with a wrong class drawn per image (seeded, never the true one), with a class drawn per "
           "image independently of it (shuffled class), and one constant unrelated sentence. Leakage = the "
           "label-naming template's NMI minus the highest NMI of the label-free controls (the wrong class joins "
           "them from 5 classes on: with fewer it still names the class, e.g. with 2 it *is* the other class). "
           "Definitions: docs/METHODS.md.")
if not model.uses_prompt:
    st.info(f"`{short_model_name(s.model)}` takes no text prompt, so there is nothing to audit. Pick a diffusion "
            "model with a text encoder in the sidebar.")
    st.stop()

c_blocks, c_time, c_const = st.columns([5, 3, 4], gap="large")
ensure_state("audit_blocks", lambda v: bool(v) and all(b in model.blocks for b in v), list(model.blocks))
picked = c_blocks.multiselect("Blocks", model.blocks, key="audit_blocks")
blocks = [b for b in model.blocks if b in picked]
timestep = timestep_control(model, "audit_timestep", c_time)
ensure_state("audit_constant", lambda v: isinstance(v, str), CONSTANT_PROMPT)
constant = c_const.text_input("Constant control prompt", key="audit_constant").strip() or CONSTANT_PROMPT
if not blocks:
    st.info("Pick at least one block.")
    st.stop()

config = s.extraction(timestep)
ds = scanned_dataset(config.dataset)
key = request_key("prompt-audit", s, config, blocks=blocks, constant=constant)
df = memo_run(key, prompt_audit, config, blocks, model=model, device=s.device, dataset=ds, constant=constant,
              label="Extracting features (6 prompts)")
leak = leakage(df)

fig = prompt_audit_figure(df, block_order=list(model.blocks), title=f"Prompts at t = {timestep}")
st.plotly_chart(fig, key="audit_chart", theme=None, config=PLOT_CONFIG)
worst = leak.loc[leak["domain_leak"].idxmax()]
c1, c2 = st.columns(2)
c1.metric("Largest domain leakage", f"{worst['domain_leak']:+.3f}", help=f"at {worst['block']}: domain NMI with the "
          "domain template minus the highest domain NMI of the prompts that do not name the domain.")
worst_c = leak.loc[leak["class_leak"].idxmax()]
c2.metric("Largest class leakage", f"{worst_c['class_leak']:+.3f}", help=f"at {worst_c['block']}: class NMI with the "
          f"class template minus the highest class NMI of the label-free controls ({worst_c['class_control']}).")
if "wrong_class_excess" in leak:
    st.caption("Wrong class minus empty, class NMI (near 0 when the control carries no class): "
               + ", ".join(f"{r['block']} {r['wrong_class_excess']:+.3f}" for _, r in leak.iterrows()))
with st.expander("The prompts used"):
    for name, p in conditions(ds.classes, config.seed, constant).items():
        st.markdown(f"**{name}** — mode `{p.mode}`: `{p.text or '(empty)'}`"
                    + (f" (e.g. `{p.for_class(ds.records[0].cls, ds.records[0].domain, ds.records[0].id)}` for "
                       f"`{ds.records[0].id}`, class `{ds.records[0].cls}`)" if p.mode == "per-image" and ds.records
                       else ""))
st.dataframe(df, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in df.columns if "nmi" in c})
opts = dict(timesteps=[timestep], blocks=",".join(blocks), constant=None if constant == CONSTANT_PROMPT else constant)
spec = {"view": "prompt-audit", "extraction": config.to_dict(), **opts,
        "cli": command("prompt-audit", dataset=config.dataset, model=config.model,
                       max_per_domain=config.max_per_domain, seed=config.seed, **opts, out="prompt-audit")}
export_panel("prompt-audit", figs={"prompt audit": fig}, tables={"prompt audit": df, "leakage": leak}, spec=spec,
                key="audit-export")
