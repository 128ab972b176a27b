"""2-D layouts: the scatter coloured by a label (WebGL above WEBGL_ABOVE points), image mode, the density
view for very large sets, shared axis ranges and thumbnails."""

from __future__ import annotations

import base64
import io
import logging
from typing import Sequence

import numpy as np
import plotly.graph_objects as go


from core.figures.style import DENSITY_ABOVE, WEBGL_ABOVE, _base_layout, color_for

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ scatter


def scatter(
    embedding: np.ndarray,
    labels: Sequence[str],
    *,
    hover: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    label_name: str = "domain",
    title: str | None = None,
    webgl: bool | None = None,
    height: int = 560,
    axis_titles: tuple[str, str] = ("", ""),
    ranges: tuple[Sequence[float], Sequence[float]] | None = None,
    images: dict[int, str] | None = None,
    density_above: int | None = DENSITY_ABOVE,
) -> go.Figure:
    """One trace per label category, in ``categories`` order (default: sorted labels); above
    ``density_above`` points a :func:`density` view (binned heatmap) instead.

    Parameters
    ----------
    embedding : (n_samples, 2) array
    labels : n_samples strings, the colour of each point
    hover : n_samples strings shown on hover (HTML ``<br>`` allowed)
    webgl : force ``scattergl`` (True) or SVG (False); default: WebGL above :data:`WEBGL_ABOVE` points
    ranges : fixed (x range, y range), e.g. from :func:`shared_ranges` to compare two layouts
    images : image mode: {row index: image URI (e.g. :func:`thumbnail_data_uri`)}, each drawn as a Plotly
        layout image just above its point (rows from :func:`image_rows`, at most :data:`IMAGE_MODE_MAX`)

    Every point's ``customdata`` is ``[row index]`` into ``embedding``, so a click or box/lasso selection
    maps back to the images whatever the trace.
    """
    emb = np.asarray(embedding, dtype=np.float64)
    n = len(emb)
    if emb.ndim != 2 or emb.shape[1] < 2:
        raise ValueError(f"embedding must be (n_samples, 2), got shape {emb.shape}")
    if len(labels) != n:
        raise ValueError(f"{n} points but {len(labels)} labels")
    if hover is not None and len(hover) != n:
        raise ValueError(f"{n} points but {len(hover)} hover texts")
    if density_above is not None and n > density_above:  # labels and hover are not drawn: not converted
        return density(emb, title=title, height=height, ranges=ranges)
    labels = np.asarray([str(x) for x in labels])
    cats = list(categories) if categories is not None else sorted(set(labels.tolist()))
    webgl = n > WEBGL_ABOVE if webgl is None else webgl
    trace_cls = go.Scattergl if webgl else go.Scatter
    size = 11 if n <= 300 else 8 if n <= 2000 else 5
    hover_arr = np.asarray(hover if hover is not None else labels, dtype=object)
    fig = go.Figure()
    for i, cat in enumerate(cats):
        idx = np.flatnonzero(labels == cat)
        if len(idx) == 0:
            continue
        fig.add_trace(trace_cls(
            x=emb[idx, 0], y=emb[idx, 1], mode="markers", name=str(cat),
            marker=dict(size=size, color=color_for(i), opacity=0.85, line=dict(width=0.6, color="white")),
            customdata=idx.reshape(-1, 1), hovertext=hover_arr[idx].tolist(),
            hovertemplate="%{hovertext}<extra></extra>",
        ))
    _base_layout(fig, title, height)
    fig.update_layout(
        legend=dict(title=dict(text=f"<b>{label_name}</b>"), orientation="v", yanchor="top", y=1.0, xanchor="left",
                    x=1.01, itemsizing="constant", font=dict(size=16)),
        uirevision="keep",
    )
    fig.update_xaxes(title=axis_titles[0], showticklabels=False, zeroline=False, showgrid=True)
    fig.update_yaxes(title=axis_titles[1], showticklabels=False, zeroline=False, showgrid=True)
    if ranges is not None:
        fig.update_xaxes(range=list(ranges[0]))
        fig.update_yaxes(range=list(ranges[1]))
    if images:
        add_point_images(fig, emb, images, ranges)
    return fig


IMAGE_MODE_MAX = 300  # thumbnails drawn in image mode; above it, one image per region of the layout


def image_rows(embedding: np.ndarray, cap: int = IMAGE_MODE_MAX) -> np.ndarray:
    """Rows whose thumbnails image mode draws: every row up to ``cap``; above, the point nearest the centre
    of each occupied cell of a grid over the layout (so every region shows an example), at most ``cap``."""
    emb = np.asarray(embedding, dtype=np.float64)[:, :2]
    n = len(emb)
    if n <= cap:
        return np.arange(n)
    g = max(1, int(np.floor(np.sqrt(cap))))
    lo, hi = emb.min(0), emb.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    cell = np.minimum(((emb - lo) / span * g).astype(int), g - 1)  # (n, 2)
    centre = lo + (cell + 0.5) / g * span
    dist = ((emb - centre) ** 2).sum(1)
    flat = cell[:, 0] * g + cell[:, 1]
    order = np.lexsort((np.arange(n), dist, flat))  # by cell, nearest to the centre first
    first = order[np.r_[True, flat[order][1:] != flat[order][:-1]]]
    return np.sort(first)[:cap]


def add_point_images(fig: go.Figure, embedding: np.ndarray, images: dict[int, str],
                     ranges: tuple[Sequence[float], Sequence[float]] | None = None) -> go.Figure:
    """Draw ``images`` ({row: URI}) as layout images centred just above their points (sized to the layout)."""
    emb = np.asarray(embedding, dtype=np.float64)
    if ranges is not None:
        span = np.array([ranges[0][1] - ranges[0][0], ranges[1][1] - ranges[1][0]], dtype=float)
    else:
        span = np.ptp(emb[:, :2], axis=0)
    span = np.where(span > 0, span, 1.0)
    frac = float(np.clip(0.5 / np.sqrt(max(1, len(images))), 0.035, 0.12))
    sx, sy = span * frac
    fig.update_layout(images=[
        dict(source=uri, xref="x", yref="y", x=float(emb[r, 0]), y=float(emb[r, 1]) + 0.08 * sy, sizex=sx, sizey=sy,
             xanchor="center", yanchor="bottom", sizing="contain", layer="above", opacity=1.0)
        for r, uri in images.items()])
    return fig


def density(embedding: np.ndarray, *, bins: int = 200, title: str | None = None, height: int = 560,
            ranges: tuple[Sequence[float], Sequence[float]] | None = None) -> go.Figure:
    """A binned density view of a 2-D layout (log-scaled counts per bin), for more points than a browser draws
    smoothly: its size is ``bins**2`` cells whatever the number of points. Rows with NaN (points without a
    position, e.g. outside a layout's sample) are left out and counted in the title."""
    emb = np.asarray(embedding, dtype=np.float64)
    ok = np.isfinite(emb[:, :2]).all(axis=1)
    e = emb[ok, :2]
    if ranges is None:
        ranges = ((e[:, 0].min(), e[:, 0].max()), (e[:, 1].min(), e[:, 1].max())) if len(e) else ((0, 1), (0, 1))
    counts, xe, ye = np.histogram2d(e[:, 0], e[:, 1], bins=bins, range=[list(ranges[0]), list(ranges[1])])
    z = np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 1, np.nan).T
    fig = go.Figure(go.Heatmap(
        x=(xe[:-1] + xe[1:]) / 2, y=(ye[:-1] + ye[1:]) / 2, z=z, customdata=counts.T, colorscale="Viridis",
        hovertemplate="%{customdata:,} points<extra></extra>",
        colorbar=dict(title="points", tickvals=[1, 2, 3, 4, 5, 6], ticktext=["1", "10", "100", "1k", "10k", "100k"]),
    ))
    shown = f"density of {int(ok.sum()):,} points" + (f" (of {len(emb):,}; the rest have no position)"
                                                     if not ok.all() else "")
    _base_layout(fig, f"{title} - {shown}" if title else shown, height)
    fig.update_xaxes(showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, showgrid=False)
    return fig


def scatter_points(fig: go.Figure) -> int:
    """Number of points over all traces of a figure made by :func:`scatter`."""
    return int(sum(len(t.x) for t in fig.data))




# ------------------------------------------------------------------------------------------ images


def thumbnail_data_uri(path: str, size: int = 96) -> str:
    """A ``data:image/png;base64,...`` thumbnail (longest side ``size`` px) of an image file."""
    from PIL import Image

    from core.data.datasets import load_rgb

    im = load_rgb(path)
    im.thumbnail((size, size), Image.LANCZOS)
    if max(im.size) < size:  # small images (the 64 px built-ins): upscale crisply for legibility
        s = size / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def shared_ranges(*embeddings: np.ndarray, pad: float = 0.05) -> tuple[list[float], list[float]]:
    """x and y axis ranges that hold every point of every (n_samples, 2) layout (plus ``pad``)."""
    allpts = np.concatenate([np.asarray(e, dtype=np.float64)[:, :2] for e in embeddings])
    lo, hi = allpts.min(0), allpts.max(0)
    span = np.maximum(hi - lo, 1e-9) * pad
    return [float(lo[0] - span[0]), float(hi[0] + span[0])], [float(lo[1] - span[1]), float(hi[1] + span[1])]
