"""Plotly figures and the small numeric helpers behind them (no streamlit: the dashboard, notebooks and
scripts build the same figures).

* :func:`scatter` - a 2-D layout coloured by a label (WebGL above :data:`WEBGL_ABOVE` points), every
  point carrying its row index in ``customdata`` so a selection maps back to images; image mode draws
  thumbnails above the points (:func:`image_rows`, :func:`add_point_images`, up to :data:`IMAGE_MODE_MAX`).
* :func:`heatmap` / :func:`nmi_curves` - sweep results (block x timestep), best setting highlighted.
* :func:`confusion_heatmap` - a contingency table (e.g. pseudo-domain x domain).
* :func:`procrustes_align` / :func:`align_by_ids` - rotate/scale/shift one 2-D layout onto another (on
  the image ids both share); :func:`shared_ranges` and :func:`score_table` for side-by-side views.
* :func:`pseudo_domains` - GUIDE-style k-means pseudo-domains with exemplars and contingency tables
  (:func:`centroid_frame` for export).
* :func:`thumbnail_data_uri` - a small base64 PNG of an image for hover panels and grids.
* :func:`figure_png` / :func:`png_export_available` - static export through kaleido when a browser is there.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

logger = logging.getLogger(__name__)

WEBGL_ABOVE = 1000  # Plotly Express' own switch point: SVG scatter is slow beyond ~1k points
# Above this many points a binned density heatmap replaces the scatter: a browser still pans a 100k-point WebGL
# scatter, but the figure's JSON grows ~130 bytes a point (hover text, ids): 586k points would be ~75 MB.
DENSITY_ABOVE = 100_000
# Okabe-Ito (colour-blind safe) first, then Tableau 10 for larger label sets; readable on a projector.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000",
           "#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7",
           "#9C755F", "#BAB0AC"]
FONT = dict(family="Inter, 'Source Sans Pro', Helvetica, Arial, sans-serif", size=15)


def _base_layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_white", font=FONT, height=height, title=dict(text=title or "", x=0.0, xanchor="left"),
        margin=dict(l=10, r=10, t=60 if title else 20, b=10), hoverlabel=dict(font_size=14),
    )
    return fig


def color_for(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


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


from core.analysis.align import _fit_procrustes, align_by_ids, procrustes_align  # noqa: E402,F401 - moved


def shared_ranges(*embeddings: np.ndarray, pad: float = 0.05) -> tuple[list[float], list[float]]:
    """x and y axis ranges that hold every point of every (n_samples, 2) layout (plus ``pad``)."""
    allpts = np.concatenate([np.asarray(e, dtype=np.float64)[:, :2] for e in embeddings])
    lo, hi = allpts.min(0), allpts.max(0)
    span = np.maximum(hi - lo, 1e-9) * pad
    return [float(lo[0] - span[0]), float(hi[0] + span[0])], [float(lo[1] - span[1]), float(hi[1] + span[1])]


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


# -------------------------------------------------------------------------------------- pseudo-domains


@dataclass
class PseudoDomains:
    """GUIDE-style pseudo-domains: k-means (k-means++) clusters of the features."""

    labels: np.ndarray  # (n_samples,) cluster of each image, 0..k-1
    centroids: np.ndarray  # (k, n_features)
    exemplars: list[np.ndarray]  # per cluster: row indices nearest to its centroid, nearest first
    by_domain: pd.DataFrame  # (k, n_domains) counts
    by_class: pd.DataFrame  # (k, n_classes) counts
    domain_nmi: float  # NMI(clusters, domains)
    class_nmi: float  # NMI(clusters, classes)

    def summary(self) -> pd.DataFrame:
        """Per cluster: size, its most frequent domain and class and their shares."""
        rows = []
        for c, name in enumerate(self.by_domain.index):
            d, k = self.by_domain.loc[name], self.by_class.loc[name]
            n = int(d.sum())
            rows.append({"cluster": c, "images": n,
                         "top domain": str(d.idxmax()) if n else "", "domain share": float(d.max() / n) if n else 0.0,
                         "top class": str(k.idxmax()) if n else "", "class share": float(k.max() / n) if n else 0.0})
        return pd.DataFrame(rows)

    def assignments(self, ids: Sequence[str], paths: Sequence[str], domains: Sequence[str],
                    classes: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame({"id": list(ids), "path": list(paths), "domain": list(domains),
                             "class": list(classes), "cluster": self.labels.astype(int)})


def pseudo_domains(
    features: np.ndarray,
    n_clusters: int,
    domains: Sequence[str],
    classes: Sequence[str],
    *,
    random_state: int = 0,
    n_exemplars: int = 6,
    domain_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> PseudoDomains:
    """k-means with ``n_clusters`` on ``features`` (n_samples, n_features), its contingency tables with
    the true domains and classes, and the ``n_exemplars`` images nearest to each centroid."""
    from sklearn.metrics import normalized_mutual_info_score

    from core.analysis.metrics import kmeans_labels

    X = np.asarray(features, dtype=np.float32)
    if len(X) != len(domains) or len(X) != len(classes):
        raise ValueError(f"{len(X)} feature rows but {len(domains)} domains and {len(classes)} classes")
    labels, centroids = kmeans_labels(X, n_clusters, random_state)
    labels = np.asarray(labels, dtype=np.int64)
    exemplars = []
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        dist = ((X[idx] - centroids[c]) ** 2).sum(axis=1)  # (n_c,)
        exemplars.append(idx[np.argsort(dist, kind="stable")[:n_exemplars]])
    clusters = pd.Categorical([f"cluster {c}" for c in labels], categories=[f"cluster {c}" for c in range(n_clusters)])

    def table(values, names, name):
        cat = pd.Categorical(list(values), categories=list(names) if names is not None else sorted(set(values)))
        t = pd.crosstab(clusters, cat, dropna=False)
        t.index.name, t.columns.name = "pseudo-domain", name
        return t

    return PseudoDomains(
        labels=labels, centroids=np.asarray(centroids, dtype=np.float32), exemplars=exemplars,
        by_domain=table(domains, domain_names, "domain"), by_class=table(classes, class_names, "class"),
        domain_nmi=float(normalized_mutual_info_score(list(domains), labels)),
        class_nmi=float(normalized_mutual_info_score(list(classes), labels)),
    )


def centroid_frame(centroids: np.ndarray) -> pd.DataFrame:
    """Centroids (k, n_features) as a table: one row per cluster, columns f0..f{n-1}."""
    c = np.asarray(centroids)
    df = pd.DataFrame(c, columns=[f"f{j}" for j in range(c.shape[1])])
    df.insert(0, "cluster", np.arange(len(c)))
    return df


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


# ------------------------------------------------------------------------------------------ export


def png_export_available() -> bool:
    """True when kaleido and a Chromium/Chrome it can drive are installed (static PNG export)."""
    try:
        import kaleido  # noqa: F401
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False) is not None
    except Exception:  # noqa: BLE001 - any failure means "no PNG export here"
        return False


def figure_png(fig: go.Figure, width: int = 1400, height: int | None = None, scale: float = 2.0) -> bytes:
    """PNG bytes of ``fig`` through kaleido (needs :func:`png_export_available`)."""
    h = height or int(fig.layout.height or 700)
    return fig.to_image(format="png", width=width, height=h, scale=scale)


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)
