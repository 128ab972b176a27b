"""Regenerate the README screenshots from the running app: ``python docs/screenshots.py [--only explore,...]``.

Starts ``streamlit run app.py`` on a free localhost port (the embedded model ``domainlens-tiny``, the built-in
``synthetic-pacs`` held-out split, 100 images per domain: the app's defaults), opens it in Debian's Chromium
through Playwright (as tests/test_browser.py does), and captures each page below at 1600 x 1000 (x1.5):

* ``docs/explore.png``: Explore with the t-SNE layout;
* ``docs/filmstrip.png``: Film strip over timesteps;
* ``docs/cka.png``: Layer similarity (CKA).

Each PNG is reduced to 256 colours (the same picture at ~40 % of the bytes). Needs /usr/bin/chromium
(``apt-get install -y chromium``) and the requirements; a first run extracts features (minutes on a CPU;
``$DOMAINLENS_CACHE_DIR`` keeps them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_browser import app_env, launch, streamlit_server, wait_for_explore, wait_idle  # noqa: E402

DOCS = REPO / "docs"
SHOTS = {"explore": "Explore", "filmstrip": "Film strip", "cka": "Layer similarity"}


def _open_page(page, title: str, timeout_ms: int = 900_000) -> None:
    """Click the sidebar link ``title`` and wait until its chart is drawn and the script is idle."""
    page.locator('[data-testid="stSidebar"] [data-testid="stPageLink-NavLink"]').filter(has_text=title).first.click()
    main = page.locator('[data-testid="stMain"]')
    main.locator("h1").filter(has_text=title).first.wait_for(timeout=timeout_ms)
    main.locator(".js-plotly-plot").first.wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def _quantize(path: Path) -> None:
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True)


def capture(names: list[str], model: str = "domainlens-tiny", max_per_domain: int = 100, out: Path = DOCS) -> list[Path]:
    """Capture ``names`` (keys of :data:`SHOTS`) into ``out``; returns the written PNGs."""
    from playwright.sync_api import sync_playwright

    written = []
    with tempfile.TemporaryDirectory() as tmp, \
            streamlit_server(app_env(model, max_per_domain), Path(tmp) / "streamlit.log", timeout=180) as url, \
            sync_playwright() as p:
        ctx = launch(p, Path(tmp) / "profile", viewport={"width": 1600, "height": 1000}, device_scale_factor=1.5)
        try:
            page = ctx.new_page()
            page.goto(url, wait_until="domcontentloaded")
            wait_for_explore(page, 900_000)
            for name in names:
                if name == "explore":
                    page.get_by_text("t-SNE", exact=True).first.click()
                    page.wait_for_timeout(1000)
                    wait_idle(page, 900_000)
                else:
                    _open_page(page, SHOTS[name])
                page.wait_for_timeout(1500)  # let plotly finish its transition
                path = out / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path), full_page=False)
                _quantize(path)
                written.append(path)
                print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)
        finally:
            ctx.close()
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SHOTS), help=f"comma-separated, of {', '.join(SHOTS)} (default: all)")
    ap.add_argument("--model", default="domainlens-tiny")
    ap.add_argument("--max-per-domain", type=int, default=100)
    ap.add_argument("--out", type=Path, default=DOCS, help="folder (default docs/)")
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHOTS]
    if unknown:
        ap.error(f"unknown screenshot(s) {unknown}; choose from {list(SHOTS)}")
    capture(names, a.model, a.max_per_domain, a.out)
