"""Shared look of every figure: colour-blind-safe palette, font, base layout, size thresholds."""

from __future__ import annotations

import logging

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
