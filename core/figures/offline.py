"""Self-contained HTML: plotly.js inlined in the page, so figures open offline (no CDN, no network).

:func:`plotly_js` is the ``<script>`` carrying plotly.js (gzip-compressed and base64-encoded, ~2 MB, unpacked
by the browser's ``DecompressionStream``; or plain, ~4.8 MB); the report (:mod:`core.analysis.report`) and
:func:`figure_page` (the research views' HTML files) both use it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import json
from pathlib import Path

# Hosts a page must never load from (a CDN copy of plotly.js, web fonts): tests check written files for them.
CDN_HOSTS = ("cdn.plot.ly", "cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "fonts.googleapis.com",
             "fonts.gstatic.com")


@functools.lru_cache(maxsize=2)
def plotly_js(mode: str = "gzip") -> str:
    """plotly.js as one ``<script>``: ``gzip`` (compressed, element id ``plotly-gz``, to unpack with
    :data:`UNPACK_JS`) or ``inline`` (plain)."""
    import plotly.offline as po

    if mode not in ("gzip", "inline"):
        raise ValueError(f"plotly_js must be 'gzip' or 'inline', got {mode!r}")
    js = po.get_plotlyjs()
    if mode == "inline":
        return "<script>" + js + "</script>"
    gz = base64.b64encode(gzip.compress(js.encode("utf-8"), compresslevel=6, mtime=0)).decode("ascii")
    return f'<script id="plotly-gz" type="application/octet-stream">{gz}</script>'


# Defines window.Plotly from the #plotly-gz script (a no-op when plotly.js was inlined plain).
UNPACK_JS = """async function dlUnpackPlotly() {
  if (window.Plotly) return;
  const b64 = document.getElementById('plotly-gz').textContent.trim();
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  const s = document.createElement('script');
  s.text = await new Response(stream).text();
  document.head.appendChild(s);
}"""

_PAGE_LOADER = """<script>
%s
(async function () {
  await dlUnpackPlotly();
  const fig = JSON.parse(document.getElementById('dl-figure').textContent);
  const el = document.getElementById('dl-plot');
  await Plotly.newPlot(el, fig.data, fig.layout, {displaylogo: false, responsive: true});
  if (fig.frames && fig.frames.length) await Plotly.addFrames(el, fig.frames);  // the film strip's animation
})().catch(function (e) {
  document.getElementById('dl-plot').textContent = 'The figure needs a browser with DecompressionStream '
    + '(Chrome 80+, Firefox 113+, Safari 16.4+): ' + e;
});
</script>""" % UNPACK_JS


def figure_page(fig, title: str = "DomainLens figure", plotly: str = "gzip") -> str:
    """One plotly figure (frames and play buttons included) as a self-contained HTML page: no network needed
    to open it. ``plotly``: how plotly.js is inlined (see :func:`plotly_js`)."""
    spec = json.dumps(json.loads(fig.to_json()), separators=(",", ":")).replace("</", "<\\/")
    height = int(fig.layout.height or 600)
    return "\n".join([
        "<!DOCTYPE html><html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
        "<style>body{margin:0;font-family:Helvetica,Arial,sans-serif}</style></head><body>",
        f"<div id='dl-plot' style='width:100%;height:{height}px'></div>",
        f'<script type="application/json" id="dl-figure">{spec}</script>',
        plotly_js(plotly), _PAGE_LOADER, "</body></html>"])


def write_figure_html(fig, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`figure_page` of ``fig`` to ``path`` (UTF-8); returns the path."""
    p = Path(path)
    p.write_text(figure_page(fig, title or p.stem), encoding="utf-8")
    return p
