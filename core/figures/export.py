"""Static export: PNG through kaleido when a browser is there, standalone HTML."""

from __future__ import annotations

import logging

import plotly.graph_objects as go


logger = logging.getLogger(__name__)

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
