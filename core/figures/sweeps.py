"""Sweep figures and tables: block x timestep heatmaps, NMI curves, contingency heatmaps, score tables."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go


from core.figures.style import _base_layout, color_for

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- sweeps


def _timestep_labels(values: pd.Series) -> list[str]:
    return ["n/a" if pd.isna(v) else str(int(v)) for v in values]


def label_digits(z: np.ndarray, lo: int = 2, hi: int = 4) -> int:
    """Decimals for cell labels that tell the values apart: two, or enough to show the range of ``z`` in its
    second significant digit (class NMI between 0.011 and 0.024 reads 0.011 ... 0.024, not 0.01 / 0.02)."""
    v = np.asarray(z, dtype=float)
    v = v[np.isfinite(v)]
    spread = float(v.max() - v.min()) if v.size else 0.0
    if spread <= 0:
        return lo
    return int(min(hi, max(lo, np.ceil(-np.log10(spread)) + 1)))


def heatmap(
    df: pd.DataFrame,
    value: str = "domain_nmi",
    *,
    block_order: Sequence[str] | None = None,
    best: pd.Series | None = None,
    title: str | None = None,
    colorscale: str = "Viridis",
    height: int | None = None,
) -> go.Figure:
    """Block (rows, UNet order) x timestep (columns) heatmap of ``value`` for one prompt.

    ``df`` has the columns of :func:`core.analysis.sweep.run_sweep` (one prompt). ``best``, a row of ``df``, is
    outlined. Missing timesteps (baselines) show as a single "n/a" column.
    """
    if df.empty:
        raise ValueError("no sweep rows to plot")
    d = df.copy()
    d["t"] = _timestep_labels(d["timestep"])
    blocks = [b for b in (block_order or sorted(d["block"].unique())) if b in set(d["block"])]
    ts = sorted(d["t"].unique(), key=lambda s: (s == "n/a", int(s) if s != "n/a" else 0))
    grid = d.pivot_table(index="block", columns="t", values=value, aggfunc="mean").reindex(index=blocks, columns=ts)
    z = grid.to_numpy(dtype=float)
    digits = label_digits(z)
    text = [["" if np.isnan(v) else f"{v:.{digits}f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=ts, y=blocks, text=text, texttemplate="%{text}", textfont=dict(size=14), colorscale=colorscale,
        zmin=0.0, zmax=max(1e-6, float(np.nanmax(z))) if value.endswith("nmi") else None,
        colorbar=dict(title=value.replace("_", " ")), hovertemplate="block %{y}<br>t = %{x}<br>%{z:.3f}<extra></extra>",
    ))
    if best is not None and best["block"] in blocks:
        bt = _timestep_labels(pd.Series([best["timestep"]]))[0]
        if bt in ts:
            x, y = ts.index(bt), blocks.index(best["block"])
            fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                          line=dict(color="#D55E00", width=4))
    _base_layout(fig, title, height or max(280, 70 + 48 * len(blocks)))
    fig.update_xaxes(title="timestep", type="category")
    fig.update_yaxes(title="block", type="category", autorange="reversed")
    return fig


def nmi_curves(
    df: pd.DataFrame,
    value: str = "domain_nmi",
    *,
    block_order: Sequence[str] | None = None,
    best: pd.Series | None = None,
    title: str | None = None,
    height: int = 420,
) -> go.Figure:
    """``value`` against timestep, one line per block (UNet order), with the ``value``_std as error bars
    when present; ``best`` is marked with a star."""
    d = df.dropna(subset=["timestep"]).sort_values("timestep")
    blocks = [b for b in (block_order or sorted(df["block"].unique())) if b in set(df["block"])]
    fig = go.Figure()
    std_col = f"{value}_std"
    for i, b in enumerate(blocks):
        sub = d[d["block"] == b]
        if sub.empty:
            continue
        fig.add_trace(go.Scatter(
            x=sub["timestep"].astype(int), y=sub[value], mode="lines+markers", name=b,
            line=dict(color=color_for(i), width=3), marker=dict(size=8),
            error_y=dict(type="data", array=sub[std_col], visible=True, thickness=1.2) if std_col in sub else None,
        ))
    if best is not None and not pd.isna(best["timestep"]):
        fig.add_trace(go.Scatter(
            x=[int(best["timestep"])], y=[best[value]], mode="markers", name="best",
            marker=dict(symbol="star", size=22, color="#D55E00", line=dict(width=1.5, color="white")),
            hovertemplate=f"best: {best['block']} @ t=%{{x}}<br>%{{y:.3f}}<extra></extra>",
        ))
    _base_layout(fig, title, height)
    fig.update_xaxes(title="timestep (more noise to the right)")
    fig.update_yaxes(title=value.replace("_", " "), rangemode="tozero")
    fig.update_layout(legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.01))
    return fig




# ---------------------------------------------------------------------------------------- contingency


def confusion_heatmap(table: pd.DataFrame, *, title: str | None = None, normalize: bool = True,
                      height: int | None = None, colorscale: str = "Blues") -> go.Figure:
    """Heatmap of a contingency table (rows e.g. clusters, columns e.g. domains); counts as text and,
    with ``normalize``, colour = share of the row."""
    counts = table.to_numpy(dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    z = share if normalize else counts
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in table.columns], y=[str(r) for r in table.index],
        text=[[f"{int(v)}" for v in row] for row in counts], texttemplate="%{text}", textfont=dict(size=14),
        colorscale=colorscale, zmin=0, zmax=1 if normalize else None,
        colorbar=dict(title="share of row" if normalize else "images"),
        hovertemplate="%{y} / %{x}<br>%{text} images<extra></extra>",
    ))
    _base_layout(fig, title, height or max(260, 90 + 40 * len(table.index)))
    fig.update_xaxes(title=table.columns.name or "", type="category")
    fig.update_yaxes(title=table.index.name or "", type="category", autorange="reversed")
    return fig


def score_table(a, b, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """Two :class:`core.analysis.metrics.Scores` side by side with the difference (second minus first); AMI
    and the NMI chance floors beside the NMIs (for a paired interval of the difference:
    :func:`core.analysis.explore.compare_settings`)."""
    rows = []
    for key, label in (("domain_nmi", "domain NMI"), ("domain_ami", "domain AMI"),
                       ("domain_nmi_chance", "domain NMI chance"), ("class_nmi", "class NMI"),
                       ("class_ami", "class AMI"), ("class_nmi_chance", "class NMI chance"),
                       ("domain_probe_acc", "domain predictability"), ("domain_silhouette", "domain silhouette")):
        va, vb = float(getattr(a, key)), float(getattr(b, key))
        rows.append({"score": label, names[0]: va, names[1]: vb, "delta": vb - va})
    return pd.DataFrame(rows)
