"""Stability: how much the domain NMI of one setting moves with chance (noise seed, ensemble size, k-means
seed, image subsample), as bands, with the paper's single-draw protocol marked."""

from __future__ import annotations

import streamlit as st

from core.analysis.stability import spread_sentence, stability
from core.cli.views import command
from core.figures.views import stability_figure
from pages._access import scanned_dataset
from pages._controls import setting_controls
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._sidebar import current_model, settings
from pages._memo import memo_run, request_key

s = settings()
model = current_model(s)

st.title("Stability")
st.caption("How much of a score is chance? The domain NMI of one setting, recomputed while one random choice "
           "varies at a time on the same images: the diffusion noise draw, the number of draws averaged, the "
           "k-means initialisation, and a bootstrap resample of the images. Bars: mean ± 1.96 std. Ensemble size "
           "is a choice of method (a systematic effect), not chance. The dashed line is the paper's protocol: "
           "one noise draw, one k-means run.")

c_block, c_time, c_prompt = st.columns([5, 4, 4], gap="large")
controls = setting_controls(model, prefix="stab_", columns=(c_block, c_time, c_prompt))
block, timestep, prompt = controls[:3]
cond = controls[3] if len(controls) > 3 else {}  # class label / noise mode where the backbone seam has them
c1, c2, c3, c4 = st.columns(4)
noise_seeds = int(c1.number_input("Noise seeds", 1, 50, 5, key="stab_noise_seeds"))
ensembles = sorted(c2.multiselect("Ensemble sizes", [1, 2, 4, 8, 16], [1, 2, 4, 8], key="stab_ensembles")) or [1]
kmeans_seeds = int(c3.number_input("k-means seeds", 1, 100, 10, key="stab_kmeans_seeds"))
bootstraps = int(c4.number_input("Bootstrap resamples", 0, 200, 20, key="stab_bootstraps"))

config = s.extraction(timestep, prompt, **cond)
params = dict(noise_seeds=noise_seeds, ensembles=ensembles, kmeans_seeds=kmeans_seeds, bootstraps=bootstraps,
              n_init=s.n_init if s.n_init != 1 else None)
key = request_key("stability", s, config, block=block, **params)
res = memo_run(key, stability, config, block, **params, model=model, device=s.device,
               dataset=scanned_dataset(config.dataset))

fig = stability_figure(res, title=f"Domain NMI of {block}" + (f" at t = {timestep}" if model.uses_timestep else ""))
st.plotly_chart(fig, key="stab_chart", theme=None, config=PLOT_CONFIG)
largest = res.largest
m1, m2, m3 = st.columns(3)
m1.metric("Paper's single draw", f"{res.reference:.3f}",
          help="This setting's features (its seed, one noise draw) and one k-means run (seed 0).")
m2.metric("Chance std of a score", f"{res.chance_std:.3f}",
          help="sqrt of the summed variances of the chance sources (noise seed, k-means seed ÷ seeds averaged, "
               "bootstrap). Standard deviations, not max − min: ranges grow with the number of draws. "
               "Ensemble size is a choice of method and is not counted.")
m3.metric("Largest source of chance", str(largest["source"]), help=f"std {largest['std']:.3f} over "
          f"{int(largest['n'])} draws")
diff = st.number_input("A domain-NMI difference you are looking at (e.g. between two blocks)", 0.0, 1.0, 0.05,
                       step=0.01, format="%.3f", key="stab_difference")
sentence = spread_sentence(res.summary, diff, res.n_seeds)
(st.warning if abs(diff) <= res.band else st.success)(sentence)
st.dataframe(res.summary, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%+.3f" if c == "effect" else "%.3f")
                            for c in ("mean", "std", "min", "max", "effect")})
opts = dict(timesteps=[timestep] if model.uses_timestep else None, block=block, **params)
extra = {"prompt_template": prompt.text} if prompt.mode == "template" else (
    {"prompt": prompt.text} if prompt.mode == "custom" and prompt.text else {})
spec = {"view": "stability", "extraction": config.to_dict(), **opts, "reference": res.reference,
        "cli": command("stability", dataset=config.dataset, model=config.model, **extra,
                       max_per_domain=config.max_per_domain, seed=config.seed, token_pooling=config.token_pooling,
                       **opts, out="stability")}
export_panel("stability", figs={"stability": fig}, tables={"draws": res.draws, "summary": res.summary}, spec=spec,
                key="stab-export")
