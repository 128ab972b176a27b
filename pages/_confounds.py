"""The confound checks of one feature setting in an expander (used by Explore): does the domain score read the
domain, or the class that comes with it? Every number comes from :mod:`core.analysis.confounds`."""

from __future__ import annotations

import streamlit as st

from core.analysis.confounds import confounds_of


@st.cache_data(show_spinner="Confound checks…", max_entries=16)
def _checks(key: str, block: str, seed: int, _fs):
    """``key``: the feature set's cache key (names the features exactly)."""
    return confounds_of(_fs, block, seed=seed)


def confounds_panel(fs, block: str, seed: int, key: str = "confounds") -> None:
    """An expander with a toggle; when on: the summary (value beside its chance level), the per-domain confusion
    of the cross-validated domain probe and the per-class table."""
    with st.expander("Confounds: is the domain score reading the class?", icon=":material/join_inner:"):
        st.caption("Class-only accuracy: the domain guessed from the class label alone (1 = domain fully "
                   "confounded with class). Domain probe: cross-validated accuracy (chance = the largest domain's "
                   "share) and balanced accuracy (chance = 1 / domains). Leave-class-out: the probe trained on the "
                   "other classes names the domain of a class it never saw. Domain NMI / AMI within each class: "
                   "class cannot explain it. Definitions: docs/METHODS.md.")
        if not st.toggle("Run the confound checks", key=f"{key}_on"):
            return
        r = _checks(f"{getattr(fs, 'cache_key', '')}|{len(fs)}", block, int(seed), fs)
        for note in r.notes:
            st.info(note)
        num = {c: st.column_config.NumberColumn(format="%.3f") for c in ("value", "chance")}
        st.dataframe(r.summary(), hide_index=True, width="stretch", key=f"{key}_summary", column_config=num)
        c1, c2 = st.columns(2)
        c1.markdown("**Domain probe confusion** (rows: true domain; each row sums to 1)")
        c1.dataframe(r.confusion.style.format("{:.2f}"), width="stretch", key=f"{key}_confusion")
        c2.markdown("**Per class**")
        c2.dataframe(r.per_class, hide_index=True, width="stretch", key=f"{key}_per_class",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("majority_share", "lco_accuracy", "lco_balanced_accuracy", "within_nmi",
                                     "within_ami")})
