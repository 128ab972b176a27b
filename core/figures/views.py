"""Plotly figures of the research views: film strip (animated), layer similarity (CKA) heatmap, stability
bands and prompt audit. No streamlit: the pages, the CLI and notebooks build the same figures.

The film strip animates with Plotly frames (play / pause / slider buttons run in the browser, no server
round trip); every frame's point positions are in the figure, so scrubbing costs the browser a redraw only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.figures.scatter import shared_ranges
from core.figures.style import FONT, WEBGL_ABOVE, _base_layout, color_for

DOMAIN_COLOUR, CLASS_COLOUR = "#0072B2", "#D55E00"


def _plotly_white() -> dict:
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


_BASE_TEMPLATE = _plotly_white()


# ------------------------------------------------------------------------------------------ film strip


def strip_figure(strip, colour: str = "domain", active: int = 0, *, title: str | None = None,
                 height: int = 560, duration_ms: int = 700) -> go.Figure:
    """An animated film strip: the aligned layout (left; one trace per domain or class) and domain / class
    NMI per frame (right) with a marker on the current frame. Frames, slider and play / pause buttons are
    Plotly's own, so the browser animates without asking the server.

    ``strip`` is a :class:`core.analysis.filmstrip.Strip`; ``active`` the frame shown first. Built as plain
    data and wrapped without Plotly's per-property validation (the figure is the same; at 5k points x 9
    frames validation alone took longer than the 0.5 s a frame switch may cost; bench 10).
    """
    n_frames = len(strip.values)
    if not 0 <= active < n_frames:
        raise ValueError(f"frame {active} out of range (0..{n_frames - 1})")
    labels = np.asarray(strip.domains if colour == "domain" else strip.classes)
    cats = list(strip.domain_names if colour == "domain" else strip.class_names) or sorted(set(labels.tolist()))
    cats = [c for c in cats if np.any(labels == c)]
    n = len(labels)
    webgl = n > WEBGL_ABOVE
    ptype = "scattergl" if webgl else "scatter"
    size = 10 if n <= 300 else 7 if n <= 2000 else 4
    hover = np.asarray([f"<b>{d}</b> · {c}<br>{i}" for d, c, i in zip(strip.domains, strip.classes, strip.ids)],
                       dtype=object)
    idx = [np.flatnonzero(labels == c) for c in cats]
    embs = [np.asarray(e, dtype=np.float32) for e in strip.embeddings]
    frame_labels = strip.labels
    sc = strip.scores
    emb = embs[active]
    data: list[dict] = []
    for k, (c, ii) in enumerate(zip(cats, idx)):
        data.append(dict(type=ptype, x=emb[ii, 0], y=emb[ii, 1], mode="markers", name=str(c),
                         xaxis="x", yaxis="y", marker=dict(size=size, color=color_for(k), opacity=0.85,
                                                           line=dict(width=0.5, color="white")),
                         customdata=ii.reshape(-1, 1), hovertext=hover[ii].tolist(),
                         hovertemplate="%{hovertext}<extra></extra>"))
    for col, name, colr in (("domain_nmi", "domain NMI", DOMAIN_COLOUR), ("class_nmi", "class NMI", CLASS_COLOUR)):
        data.append(dict(type="scatter", x=frame_labels, y=sc[col].to_numpy(float), mode="lines+markers", name=name,
                         xaxis="x2", yaxis="y2", line=dict(color=colr, width=3), marker=dict(size=7),
                         error_y=dict(type="data", array=sc[f"{col}_std"].to_numpy(float), visible=True, thickness=1),
                         hovertemplate=f"{name} %{{y:.3f}}<br>%{{x}}<extra></extra>"))
    marker_traces = []
    for col, colr in (("domain_nmi", DOMAIN_COLOUR), ("class_nmi", CLASS_COLOUR)):
        marker_traces.append(len(data))
        data.append(dict(type="scatter", x=[frame_labels[active]], y=[float(sc[col].iloc[active])], mode="markers",
                         xaxis="x2", yaxis="y2", showlegend=False, hoverinfo="skip",
                         marker=dict(size=18, symbol="circle-open", color=colr, line=dict(width=3))))
    frames = []
    for f in range(n_frames):
        e = embs[f]
        fd = [dict(type=ptype, x=e[ii, 0], y=e[ii, 1]) for ii in idx]
        fd += [dict(type="scatter", x=[frame_labels[f]], y=[float(sc[col].iloc[f])]) for col in ("domain_nmi", "class_nmi")]
        frames.append(dict(name=frame_labels[f], data=fd, traces=list(range(len(idx))) + marker_traces))
    xr, yr = shared_ranges(*embs)
    ymax = max(1.0, float(np.nanmax(sc[["domain_nmi", "class_nmi"]].to_numpy(float))) * 1.05)
    anim = dict(mode="immediate", frame=dict(duration=0, redraw=webgl), transition=dict(duration=0))
    layout = dict(
        template=go.layout.Template(_BASE_TEMPLATE), font=FONT, height=height,
        title=dict(text=title or "", x=0.0, xanchor="left"), hoverlabel=dict(font_size=14),
        margin=dict(l=10, r=10, t=80 if title else 50, b=90),
        xaxis=dict(domain=[0.0, 0.62], range=xr, showticklabels=False, zeroline=False, anchor="y"),
        yaxis=dict(range=yr, showticklabels=False, zeroline=False, anchor="x"),
        xaxis2=dict(domain=[0.70, 1.0], type="category", title=dict(text=strip.axis), anchor="y2"),
        yaxis2=dict(range=[0, ymax], title=dict(text="NMI"), anchor="x2"),
        annotations=[dict(text="NMI per frame", x=0.85, y=1.0, xref="paper", yref="paper", xanchor="center",
                          yanchor="bottom", showarrow=False, font=dict(size=16))],
        sliders=[dict(active=active, x=0.0, len=0.62, y=-0.02, yanchor="top", pad=dict(t=30),
                      currentvalue=dict(prefix=f"{strip.axis}: " if strip.axis == "block" else "", font=dict(size=15)),
                      steps=[dict(method="animate", label=lab, args=[[lab], anim]) for lab in frame_labels])],
        updatemenus=[dict(type="buttons", direction="left", x=0.0, y=-0.02, xanchor="right", yanchor="top",
                          pad=dict(t=30, r=10), showactive=False, buttons=[
                              dict(label="▶ Play", method="animate",
                                   args=[None, dict(frame=dict(duration=duration_ms, redraw=webgl), fromcurrent=True,
                                                    transition=dict(duration=duration_ms // 2, easing="cubic-in-out"),
                                                    mode="immediate")]),
                              dict(label="❚❚ Pause", method="animate", args=[[None], anim])])],
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0.0),
        uirevision="keep",
    )
    return go.Figure(dict(data=data, layout=layout, frames=frames), _validate=False)


def frame_positions(fig: go.Figure, frame: int) -> np.ndarray:
    """(n, 2) point positions of one frame of a :func:`strip_figure`, in row order (tests, exports)."""
    fr = fig.frames[frame]
    n = sum(len(t.customdata) for t in fig.data if t.customdata is not None)
    out = np.full((n, 2), np.nan)
    for k, t in zip(fr.traces, fr.data):
        cd = fig.data[k].customdata
        if cd is None:
            continue
        rows = np.asarray(cd)[:, 0].astype(int)
        out[rows, 0], out[rows, 1] = t.x, t.y
    return out


# ------------------------------------------------------------------------------------------------ CKA


def cka_heatmap(matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], *, title: str | None = None,
                measure: str = "linear CKA", height: int | None = None, text: bool | None = None) -> go.Figure:
    """Heatmap of a CKA matrix (rows x cols) with the value on hover (and in the cells when small)."""
    z = np.asarray(matrix, dtype=float)
    if z.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix shape {z.shape} does not match {len(rows)} rows x {len(cols)} columns")
    show = text if text is not None else z.size <= 400
    fig = go.Figure(go.Heatmap(
        z=z, x=list(cols), y=list(rows), colorscale="Viridis", zmin=min(0.0, float(np.nanmin(z))), zmax=1.0,
        text=[[f"{v:.2f}" for v in r] for r in z] if show else None, texttemplate="%{text}" if show else None,
        textfont=dict(size=11), colorbar=dict(title=measure),
        hovertemplate="%{y}<br>vs %{x}<br>" + measure + " = %{z:.3f}<extra></extra>"))
    _base_layout(fig, title, height or int(min(1100, max(380, 120 + 22 * len(rows)))))
    fig.update_xaxes(type="category", tickangle=-45)
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


# ------------------------------------------------------------------------------------------ stability


def stability_figure(stab, *, title: str | None = None, height: int = 420) -> go.Figure:
    """One band per source (mean ± 1.96 std as a bar, mean ± std as a line, every draw as a dot; standard
    deviations, not ranges, which grow with the number of draws) and the paper's single-draw protocol as a
    dashed line. A systematic source (ensemble size) is labelled so: its draws trace an effect, not chance."""
    fig = go.Figure()
    sm = stab.summary
    for i, r in sm.reset_index(drop=True).iterrows():
        kind = r.get("kind", "chance")
        lo, hi = r["mean"] - 1.96 * r["std"], r["mean"] + 1.96 * r["std"]
        note = (f"systematic: largest − smallest setting {r['effect']:+.3f}" if kind == "systematic"
                else f"95 % band {lo:.3f} – {hi:.3f}")
        fig.add_trace(go.Bar(x=[hi - lo], y=[r["source"]], base=[lo], orientation="h",
                             marker=dict(color=color_for(i), opacity=0.12 if kind == "systematic" else 0.25,
                                         pattern_shape="/" if kind == "systematic" else ""), showlegend=False,
                             hovertemplate=f"{r['source']}: mean {r['mean']:.3f}, std {r['std']:.3f} "
                                           f"({int(r['n'])} draws); {note}<extra></extra>"))
        d = stab.draws[stab.draws["source"] == r["source"]]
        fig.add_trace(go.Scatter(x=d["domain_nmi"], y=[r["source"]] * len(d), mode="markers", showlegend=False,
                                 marker=dict(color=color_for(i), size=9, line=dict(width=1, color="white")),
                                 customdata=d["setting"].astype(str),
                                 hovertemplate="%{y} %{customdata}: %{x:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[r["mean"] - r["std"], r["mean"] + r["std"]], y=[r["source"]] * 2,
                                 mode="lines", line=dict(color=color_for(i), width=5), showlegend=False,
                                 hovertemplate=f"mean {r['mean']:.3f} ± {r['std']:.3f}<extra></extra>"))
    fig.add_vline(x=stab.reference, line=dict(color="#222", dash="dash", width=2),
                  annotation_text=f"paper's single draw: {stab.reference:.3f}", annotation_position="top")
    _base_layout(fig, title, height)
    fig.update_xaxes(title="domain NMI")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(barmode="overlay")
    return fig


# --------------------------------------------------------------------------------------- prompt audit


def prompt_audit_figure(df: pd.DataFrame, *, block_order: Sequence[str] | None = None, title: str | None = None,
                        height: int = 480) -> go.Figure:
    """Domain NMI (left) and class NMI (right) per block, one bar per prompt condition."""
    blocks = [b for b in (block_order or list(dict.fromkeys(df["block"]))) if b in set(df["block"])]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Domain NMI", "Class NMI"), horizontal_spacing=0.08)
    for i, (cond, g) in enumerate(df.groupby("condition", sort=False)):
        g = g.set_index("block").reindex(blocks)
        for col, value in ((1, "domain_nmi"), (2, "class_nmi")):
            fig.add_trace(go.Bar(x=blocks, y=g[value], name=cond, legendgroup=cond, showlegend=col == 1,
                                 marker_color=color_for(i),
                                 error_y=dict(type="data", array=g[f"{value}_std"], visible=True, thickness=1),
                                 hovertemplate=f"{cond}<br>%{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=col)
    _base_layout(fig, title, height)
    # the legend under the bars: above them it sat on the title
    fig.update_layout(barmode="group", legend=dict(orientation="h", yanchor="top", y=-0.3, x=0.0),
                      margin=dict(b=120))
    fig.update_yaxes(rangemode="tozero")
    return fig
