"""Regenerate docs/filmstrip.png and docs/cka.png (README screenshots) from the embedded model domainlens-tiny
on synthetic-pacs (held-out split): ``python docs/views_screenshots.py``. Needs kaleido and a Chromium."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.analysis.cka import cka_matrix, model_layers  # noqa: E402
from core.analysis.filmstrip import timestep_strip  # noqa: E402
from core.analysis.prompt_audit import load  # noqa: E402
from core.engine.extract import ExtractionConfig  # noqa: E402
from core.figures.views import cka_heatmap, strip_figure  # noqa: E402

DOCS = Path(__file__).resolve().parent


def main() -> None:
    model = load("domainlens-tiny")
    cfg = ExtractionConfig(dataset="synthetic-pacs:heldout", model="domainlens-tiny", max_per_domain=100)
    strip = timestep_strip(cfg, model.default_block, None, model=model)
    active = strip.values.index(50)
    fig = strip_figure(strip, "domain", active=active,
                       title=f"Film strip · {model.default_block} · timesteps 0 → 999 (frame t = 50 shown)")
    fig.write_image(DOCS / "filmstrip.png", width=1400, height=620, scale=1.5)
    layers, _ = model_layers(cfg, None, [10, 50, 200], model=model)
    M, rows, cols = cka_matrix(layers)
    cka_heatmap(M, rows, cols, title="Linear CKA between every (block, timestep) · domainlens-tiny · "
                                     "synthetic-pacs, 400 images").write_image(
        DOCS / "cka.png", width=1100, height=900, scale=1.5)
    print("wrote", DOCS / "filmstrip.png", DOCS / "cka.png")


if __name__ == "__main__":
    main()
