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

# One module per kind of figure; everything is importable from here (``from core import figures``).
from core.analysis.align import align_by_ids, procrustes_align  # noqa: F401
from core.analysis.pseudo_domains import PseudoDomains, centroid_frame, pseudo_domains  # noqa: F401
from core.figures.export import figure_html, figure_png, png_export_available  # noqa: F401
from core.figures.scatter import (IMAGE_MODE_MAX, add_point_images, density, image_rows, scatter,  # noqa: F401
                                  scatter_points, shared_ranges, thumbnail_data_uri)
from core.figures.style import DENSITY_ABOVE, FONT, PALETTE, WEBGL_ABOVE, color_for  # noqa: F401
from core.figures.sweeps import confusion_heatmap, heatmap, label_digits, nmi_curves, score_table  # noqa: F401
