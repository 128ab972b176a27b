"""Sweep: domain and class NMI over blocks x timesteps (x prompts), the best setting highlighted."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from core import figures
from core.engine.prompts import PromptSpec
from core.analysis.sweep import best_setting, run_sweep, tied_with_best
from pages._controls import ensure_state, pooling_control, PROMPT_LABELS, TEMPLATE
from pages._exports import cli_command, export_panel, reproduce_spec
from pages._output import PLOT_CONFIG
from pages._progress import run_core
from pages._sidebar import current_model, DEFAULT_TIMESTEP, n_domains, settings

TIMESTEP_CHOICES = [0, 5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 999]
DEFAULT_TIMESTEPS = [10, 50, 200, 500]

s = settings()
model = current_model(s)

st.title("Sweep")
st.caption("Where is the domain information? Domain and class NMI for every block and timestep, from the "
           "same cached features the other pages use.")

c_blocks, c_times, c_prompts = st.columns([4, 4, 3], gap="large")
ensure_state("sweep_blocks", lambda v: bool(v) and all(b in model.blocks for b in v), list(model.blocks))
blocks = c_blocks.multiselect("Blocks", model.blocks, key="sweep_blocks")
timesteps: list[int] = [DEFAULT_TIMESTEP]
if model.uses_timestep:
    hi = model.num_train_timesteps - 1
    choices = sorted({min(t, hi) for t in TIMESTEP_CHOICES})
    ensure_state("sweep_timesteps", lambda v: bool(v) and all(t in choices for t in v),
               [t for t in DEFAULT_TIMESTEPS if t in choices])
    timesteps = c_times.multiselect("Timesteps", choices, key="sweep_timesteps")
else:
    c_times.markdown("**Timesteps:** n/a (not a diffusion model)")
prompts = [PromptSpec()]
if model.uses_prompt:
    ensure_state("sweep_prompts", lambda v: bool(v) and all(p in PROMPT_LABELS for p in v), ["empty"])
    modes = c_prompts.multiselect("Prompts", list(PROMPT_LABELS), key="sweep_prompts",
                                  format_func=PROMPT_LABELS.get)
    prompts = []
    for m in modes:
        if m == "template":
            prompts.append(PromptSpec("template", TEMPLATE))
        elif m == "custom":
            prompts.append(PromptSpec("custom", c_prompts.text_input("Custom prompt", "a painting",
                                                                      key="sweep_prompt_text")))
        else:
            prompts.append(PromptSpec())
else:
    c_prompts.markdown("**Prompt:** n/a (not text-conditioned)")

pooling = pooling_control(model, c_blocks, "sweep_")
noise_seeds = 1
if model.uses_timestep:
    noise_seeds = int(c_times.number_input(
        "Noise seeds per setting", 1, 20, 1, key="sweep_noise_seeds",
        help="1: the paper's single noise draw. More: each setting is extracted again with the next noise seeds "
             "(same images) and the table gains the domain NMI averaged over them with a 95 % interval over noise "
             "seeds, k-means seeds and images. Costs one model pass per seed."))
n_settings = len(timesteps) * len(prompts)
n_images = s.max_per_domain * n_domains(s)
request = {"settings": s, "blocks": tuple(blocks), "timesteps": tuple(timesteps),
           "prompts": tuple((p.mode, p.text) for p in prompts), "token_pooling": pooling, "noise_seeds": noise_seeds}
c_run, c_info = st.columns([1, 4], vertical_alignment="center")
clicked = c_run.button("Run sweep", type="primary", key="sweep_run", icon=":material/play_arrow:",
                       disabled=not (blocks and timesteps and prompts))
c_info.caption(f"{n_settings} setting(s) × up to {n_images:,} images: one UNet pass per image and setting "
               + (f"and noise seed ({noise_seeds} each) " if noise_seeds > 1 else "")
               + "gives every block; cached settings cost nothing.")
if clicked:
    st.session_state["sweep_request"] = request  # a UI choice: what the user asked to sweep
last = st.session_state.get("sweep_request")
if last is None:
    st.info("Choose blocks, timesteps and prompts, then press **Run sweep**.")
    st.stop()
if last != request:
    st.info("The controls changed since the last run: press **Run sweep** to update. Showing the last run.")

base = last["settings"].extraction(last["timesteps"][0], PromptSpec(*last["prompts"][0]),
                                  token_pooling=last.get("token_pooling"))
run_model = current_model(last["settings"])
df = run_core(run_sweep, base, list(last["blocks"]), list(last["timesteps"]),
                 [PromptSpec(*p) for p in last["prompts"]], model=run_model, device=s.device,
                 n_init=last["settings"].n_init, noise_seeds=last.get("noise_seeds", 1), label="Sweeping")

best = best_setting(df)
t_best = "" if pd.isna(best["timestep"]) else f" at t = {int(best['timestep'])}"
p_best = f" with prompt “{best['prompt']}”" if best["prompt"] else ""
ci = "" if pd.isna(best["domain_nmi_lo"]) else f" [{best['domain_nmi_lo']:.3f}, {best['domain_nmi_hi']:.3f}]"
if "domain_nmi_noise_mean" in df:
    ci += (f"; over {int(best['noise_seeds'])} noise seeds {best['domain_nmi_noise_mean']:.3f} "
           f"[{best['domain_nmi_noise_lo']:.3f}, {best['domain_nmi_noise_hi']:.3f}]")
ties = int(tied_with_best(df).sum()) - 1
st.success(f"Best setting: **{best['block']}**{t_best}{p_best} → domain NMI **{best['domain_nmi']:.3f}**{ci} "
           f"(AMI {best['domain_ami']:.3f}, chance {best['domain_nmi_chance']:.3f}), class NMI "
           f"{best['class_nmi']:.3f} (AMI {best['class_ami']:.3f})"
           + (f". {ties} other setting(s) have a 95 % interval overlapping the best's: the ranking among them is "
              "not settled (Compare gives a paired interval for any two)." if ties > 0 else "."),
           icon=":material/star:")
if df["domain_within_chance"].any() or df["class_within_chance"].any():
    st.caption(f"Within chance (NMI inside its chance floor's spread): {int(df['domain_within_chance'].sum())} "
               f"domain and {int(df['class_within_chance'].sum())} class score(s); see the *_within_chance columns.")

prompt_labels = list(dict.fromkeys(df["prompt"]))
shown = prompt_labels[0]
if len(prompt_labels) > 1:
    shown = st.radio("Show prompt", prompt_labels, key="sweep_show_prompt", horizontal=True,
                     format_func=lambda p: f"“{p}”" if p else "empty “”")
sub = df[df["prompt"] == shown]
best_here = best_setting(sub)
order = list(run_model.blocks)
fig_dom = figures.heatmap(sub, "domain_nmi", block_order=order, best=best_here, title="Domain NMI (higher: domains separate)")
fig_cls = figures.heatmap(sub, "class_nmi", block_order=order, title="Class NMI (lower: purer domain signal)",
                          colorscale="Magma")
c1, c2 = st.columns(2)
c1.plotly_chart(fig_dom, theme=None, config=PLOT_CONFIG, key="sweep_heat_domain")
c2.plotly_chart(fig_cls, theme=None, config=PLOT_CONFIG, key="sweep_heat_class")
figs = {"domain NMI heatmap": fig_dom, "class NMI heatmap": fig_cls}
if run_model.uses_timestep and sub["timestep"].nunique() > 1:
    fig_curves = figures.nmi_curves(sub, "domain_nmi", block_order=order, best=best_here,
                                    title="Domain NMI against timestep, per block")
    fig_ccurves = figures.nmi_curves(sub, "class_nmi", block_order=order, title="Class NMI against timestep, per block")
    c3, c4 = st.columns(2)
    c3.plotly_chart(fig_curves, theme=None, config=PLOT_CONFIG, key="sweep_curves_domain")
    c4.plotly_chart(fig_ccurves, theme=None, config=PLOT_CONFIG, key="sweep_curves_class")
    figs.update({"domain NMI curves": fig_curves, "class NMI curves": fig_ccurves})

st.caption("Intervals (_lo, _hi): 95 % over k-means seeds and a bootstrap over images (_noise_: also over noise "
           "seeds, when the sweep has several). AMI: NMI corrected for "
           "chance (0 = chance). _chance: the NMI the same clusters reach against shuffled labels. "
           f"{int(df['n_init'].iloc[0]) if len(df) else 1} k-means run(s) per seed (sidebar: Statistics).")
st.dataframe(df, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in df.columns
                            if c.startswith(("domain_", "class_")) and not c.endswith("within_chance")})
cli = "\n".join(cli_command(replace(base, prompt=PromptSpec(*p)), list(last["blocks"]), list(last["timesteps"]),
                            last["settings"].n_init)
                for p in last["prompts"])
spec = reproduce_spec(base, list(last["blocks"]), timesteps=list(last["timesteps"]), n_init=last["settings"].n_init,
                         prompts=[{"mode": m, "text": t} for m, t in last["prompts"]])
spec["cli"] = cli
export_panel("sweep", figs=figs, tables={"sweep": df}, spec=spec, key="sweep-export")

from pages._report import report_button  # noqa: E402

report_button(s, list(last["blocks"]), list(last["timesteps"]), key="sweep_report")
