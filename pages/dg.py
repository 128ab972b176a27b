"""Domain generalization: leave one domain out on the cached features, before spending GPU days training.

Every number comes from :mod:`core.analysis.dg` (pseudo-domain landing, cross- vs in-domain class probe,
pseudo-domain augmentation, ranking of settings); this page only picks the settings and shows them.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import figures
from core.analysis.dg import (DEFAULT_LEARNER, k_sweep, LEARNERS, layout_labels, mean_rows, rank_settings,
                              seen_warning, train_domain_sweep)
from core.analysis.dg_export import dg_command, domainbed_zip
from core.analysis.reduce import ReductionConfig, cached_reduce
from core.engine.extract import get_features
from pages._access import scanned_dataset
from pages._controls import ensure_state
from pages._env import EXPECTED_ERRORS
from pages._exports import export_panel
from pages._output import PLOT_CONFIG
from pages._progress import run_core
from pages._sidebar import (current_model, DEFAULT_TIMESTEP, model_choices, model_label, n_domains, OTHER_MODEL,
                            settings, short_model_name)


@st.cache_data(show_spinner=False, max_entries=16)  # the page's own spinner says what runs and for how long
def ranking(dataset: str, models: tuple[str, ...], blocks: tuple[str, ...], timesteps: tuple[int, ...],
            max_per_domain: int, seed: int, k: int | None, device: str, _loaded: dict,
            learner: str = DEFAULT_LEARNER, rank_by: str = "pd_gain"):
    """The ranking from features already in the on-disk cache (extracted before, with a progress bar)."""
    return rank_settings(dataset, list(models), list(blocks), list(timesteps), max_per_domain=max_per_domain,
                         seed=seed, analysis_seed=seed, n_clusters=k, device=device, loaded=_loaded,
                         learner=learner, rank_by=rank_by)


@st.cache_data(show_spinner="Sweeping K and the number of training domains…", max_entries=8)
def sweeps(key: str, learner: str, k: int, seed: int, _X, _domains, _classes, _names):
    """K sweep and training-domain sweep of one setting (``key`` names the setting and its features)."""
    return (k_sweep(_X, _domains, _classes, seed=seed, learner=learner, domain_names=_names),
            train_domain_sweep(_X, _domains, _classes, n_clusters=k, seed=seed, learner=learner, domain_names=_names))


s = settings()
model = current_model(s)

st.title("Domain generalization")
st.caption("Leave one domain out: which features give pseudo-domains that help a model trained on the other "
           "domains? For each held-out domain, GUIDE pseudo-domains (k-means) are fitted on the other domains and "
           "handed to a learner that uses domain labels; the ranking's score is its held-out class accuracy with "
           "the pseudo-domains minus with one domain (pseudo-domain gain), beside the same with the true domains. "
           "Also shown: the plain class probe's held-out accuracy and its gap to in-domain accuracy (the domain "
           "shift the features carry). Definitions and chance levels: docs/METHODS.md.")

c_blocks, c_times, c_models, c_k, c_learn = st.columns([4, 3, 4, 2, 3], gap="large")
ensure_state("dg_blocks", lambda v: bool(v) and all(b in model.blocks for b in v), [model.default_block])
blocks = c_blocks.multiselect("Blocks", model.blocks, key="dg_blocks")
timesteps = [DEFAULT_TIMESTEP]
if model.uses_timestep:
    hi = model.num_train_timesteps - 1
    choices = sorted({min(t, hi) for t in (0, 10, 25, 50, 100, 200, 300, 500, 700, 900, 999)})
    ensure_state("dg_timesteps", lambda v: bool(v) and all(t in choices for t in v), [min(50, hi)])
    timesteps = c_times.multiselect("Timesteps", choices, key="dg_timesteps")
else:
    c_times.markdown("**Timesteps:** n/a (baseline)")
others = [m for m in model_choices() if m not in (s.model, OTHER_MODEL)]
ensure_state("dg_others", lambda v: isinstance(v, list) and all(m in others for m in v), [])
extra = c_models.multiselect("Also rank", others, key="dg_others", format_func=model_label,
                             help="Other models (e.g. the baselines) ranked beside the sidebar's, each at all of "
                                  "its own layers.")
n_dom = n_domains(s)
if n_dom < 3:
    st.error(f"Leave-one-domain-out needs at least 3 domains; this dataset has {n_dom}. Pick another dataset.")
    st.stop()
n_cls = max(2, len(scanned_dataset(s.dataset).classes))
ensure_state("dg_k", lambda v: isinstance(v, int) and 2 <= v <= 500, n_cls)
k = int(c_k.number_input("Pseudo-domains K", min_value=2, max_value=500, step=1, key="dg_k",
                         help=f"k-means clusters fitted on the training domains. Default: the number of classes "
                              f"({n_cls}), GUIDE's K = classes × 1; GUIDE used classes × {{1, 3, 5}} (the K sweep "
                              "below runs all three)."))
ensure_state("dg_learner", lambda v: v in LEARNERS, DEFAULT_LEARNER)
learner = c_learn.selectbox("Domain-using learner", LEARNERS, key="dg_learner",
                            help="normalised: each (pseudo-)domain standardised with its own statistics, the held-out "
                                 "domain with its own; balanced: every (pseudo-)domain the same total weight.")
if not blocks or not timesteps:
    st.info("Choose at least one block and one timestep.")
    st.stop()

models = (s.model, *extra)
loaded = {m: current_model(s, m) for m in models}
for m, mdl in loaded.items():  # extract what is missing first (progress bar), then rank from the cache
    own = [b for b in blocks if b in mdl.blocks] or list(mdl.blocks)
    for t in (timesteps if mdl.uses_timestep else [DEFAULT_TIMESTEP]):
        run_core(get_features, s.extraction(t, model=m), own, model=mdl, device=s.device)
try:
    with st.spinner(f"Leave-one-domain-out probes: {len(models) * len(blocks) * len(timesteps)} setting(s) x "
                    f"{n_dom} held-out domains, a k-means and two class probes each (cached afterwards)…",
                    show_time=True):
        rank, results = ranking(s.dataset, models, tuple(blocks), tuple(timesteps), s.max_per_domain, s.seed, k,
                                s.device, _loaded=loaded, learner=learner)
except EXPECTED_ERRORS as e:
    st.error(f"{e}\n\nChange the setting in the controls or the sidebar and try again.")
    st.stop()
means = mean_rows(rank)
top = means.iloc[0]
key_of = {}
for _, r in means.iterrows():
    t = None if pd.isna(r["timestep"]) else int(r["timestep"])
    key_of[f"{short_model_name(r['model'])} · {r['block']}" + ("" if t is None else f" @ t={t}")] = (r["model"], r["block"], t)

st.subheader("Ranking of settings")
st.caption("Mean over held-out domains, ranked by the pseudo-domain gain (held-out accuracy of the domain-using "
           "learner with the pseudo-domains minus with one domain; ± the 95 % t interval over the held-out "
           "domains: few folds, wide intervals). true_gain: the same learner with the true training domains. "
           "Pseudo-domains against the true training domains: homogeneity (1 = each pseudo-domain one domain), "
           "purity and NMI (NMI falls as K grows past the number of domains even when every pseudo-domain is "
           "pure). Beside them the plain probe's held-out accuracy and its gap to in-domain accuracy.")
num = ("pd_gain", "pd_gain_ci95", "true_gain", "pd_homogeneity", "pd_purity", "pd_nmi", "heldout_acc",
       "in_domain_acc", "gap", "heldout_acc_aug", "aug_delta", "landing_entropy_norm")
show = means[["model", "block", "timestep", *num, "rank_pd_gain", "rank_heldout_acc", "rank_gap"]].copy()
show["model"] = show["model"].map(short_model_name)
st.dataframe(show, hide_index=True, width="stretch", key="dg_ranking",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in num})

labels = list(key_of)
ensure_state("dg_setting", lambda v: v in labels, labels[0])
c_set, c_dom = st.columns([3, 2], gap="large")
chosen = c_set.selectbox("Setting", labels, key="dg_setting", help="Default: the top of the ranking.")
res = results[key_of[chosen]]
domains = [f.domain for f in res.folds]
ensure_state("dg_heldout", lambda v: v in domains, domains[0])
held = c_dom.selectbox("Held-out domain", domains, key="dg_heldout")
fold = res.fold(held)
warning = seen_warning(res)
if warning:
    st.warning(warning, icon=":material/visibility:")

m0, m1, m2, m3, m4 = st.columns(5)
m0.metric("Pseudo-domain gain", f"{fold.pd_gain:+.3f}",
          help=f"{learner} learner: held-out accuracy with the pseudo-domains ({fold.acc_pseudo_domains:.1%}) minus "
               f"with one domain ({fold.acc_one_domain:.1%}); with the true training domains: "
               f"{fold.acc_true_domains:.1%}. Pseudo-domains vs true domains: homogeneity "
               f"{fold.agreement['homogeneity']:.3f}, NMI {fold.agreement['nmi']:.3f}.")
m1.metric("Held-out class accuracy", f"{fold.heldout_acc:.1%}",
          help="Logistic regression (fixed seed) trained on the other domains, tested on this one.")
m2.metric("In-domain accuracy", f"{fold.in_domain_acc:.1%}",
          help="The same probe, stratified k-fold cross-validated on the training domains.")
m3.metric("Gap (domain shift)", f"{fold.gap:+.3f}", help="In-domain minus held-out accuracy.")
m4.metric("With pseudo-domain", f"{fold.heldout_acc_aug:.1%}", delta=f"{fold.aug_delta * 100:+.1f} pp",
          help="Held-out accuracy with the one-hot pseudo-domain appended to the features (GUIDE).")

st.subheader("Where the held-out images land")
st.caption("Share of each held-out domain's images whose nearest pseudo-domain centroid is each pseudo-domain "
           "(fitted without that domain); entropy 0: all on one pseudo-domain.")
landing = res.landing()
# each held-out domain has its own pseudo-domains (fitted without it): "–" where a column is another fold's; the
# largest share of each row highlighted
shares = [c for c in landing.columns[1:] if not str(c).startswith("entropy")]
st.dataframe(landing.style.format("{:.2f}", na_rep="–", subset=list(landing.columns[1:]))
             .highlight_max(axis=1, subset=shares, color="#fff3d6"), hide_index=True, width="stretch", key="dg_landing")

m_name, block, t = key_of[chosen]
config = s.extraction(50 if t is None else t, model=m_name)
fs = run_core(get_features, config, [block], model=current_model(s, m_name), device=s.device)
emb = cached_reduce(fs.features[block], ReductionConfig(method="pca", random_state=s.seed))
point_labels, cats = layout_labels(res, held)
fig = figures.scatter(emb, point_labels, categories=cats, label_name="pseudo-domain",
                      hover=[f"<b>{d}</b> · {c}" for d, c in zip(fs.domains, fs.classes)],
                      title=f"{chosen} · PCA · held out: {held}")
st.plotly_chart(fig, theme=None, config=PLOT_CONFIG, key="dg_layout")

st.subheader("Per held-out domain")
table = res.frame()
st.dataframe(table.drop(columns=["model", "block", "timestep"]), hide_index=True, width="stretch", key="dg_folds",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                            ("heldout_acc", "in_domain_acc", "gap", "heldout_acc_aug", "aug_delta",
                             "landing_entropy", "landing_entropy_norm", "top_share", "pd_gain", "true_gain",
                             "acc_one_domain", "acc_pseudo_domains", "acc_true_domains", "pd_nmi",
                             "pd_homogeneity", "pd_completeness", "pd_purity")})

tables = {"ranking": rank, "held-out domains": table, "landing": landing}
with st.expander("Sweep K (GUIDE: classes × {1, 3, 5}) and the number of training domains"):
    st.caption("For the chosen setting: every K of GUIDE's grid and the number of training domains, and the "
               "held-out results with 2 … all-but-one training domains (every subset, up to 10 per held-out "
               "domain). Means over folds with their standard deviations (`_sd`).")
    if st.toggle("Run the sweeps", key="dg_sweep"):
        ks, td = sweeps(f"{fs.cache_key}|{block}|{len(fs)}", learner, k, s.seed, fs.features[block], list(fs.domains), list(fs.classes),
                        list(fs.domain_names))
        st.dataframe(ks, hide_index=True, width="stretch", key="dg_k_sweep")
        st.dataframe(td, hide_index=True, width="stretch", key="dg_train_domains")
        tables.update({"K sweep": ks, "training domains": td})

dataset_root = scanned_dataset(s.dataset).root
cli = dg_command(s.dataset, list(models), list(blocks), list(timesteps), max_per_domain=s.max_per_domain,
                 seed=s.seed, analysis_seed=s.seed, n_clusters=k, learner=learner)
spec = {"dataset": s.dataset, "models": list(models), "blocks": list(blocks), "timesteps": list(timesteps),
        "max_per_domain": s.max_per_domain, "seed": s.seed, "analysis_seed": s.seed, "pseudo_domains": k,
        "learner": learner, "rank_by": "pd_gain",
        "setting": {"model": m_name, "block": block, "timestep": t}, "cli": cli}
export_panel("dg", figs={"layout": fig}, tables=tables,
                files={"domainbed.zip": (domainbed_zip(res, dataset_root), "application/zip")}, spec=spec,
                key="dg-export")
