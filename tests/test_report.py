"""`python -m core report`: the paper's table shape as one self-contained HTML file and a markdown twin."""

from __future__ import annotations

import html
import re

import pytest

from core.analysis import paper
from core.analysis.report import ReportConfig, build_report
from core.figures.report import render_html, render_markdown
from core.analysis.sweep import run_sweep
from core.cli import main
from core.engine.extract import ExtractionConfig
from core.testing import make_domainbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATASET = "synthetic-pacs:heldout"
ARGS = ["--datasets", DATASET, "--models", "domainlens-tiny,pixels", "--blocks", "up_blocks.1", "--timesteps",
        "10,50", "--max-per-domain", "6", "--n-seeds", "2", "--noise-seeds", "1", "--tsne-points", "24",
        "--device", "cpu", "--no-progress"]


def test_report_cli_html_md_values_and_second_run_uses_the_cache(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", *ARGS, "--out", str(out), "--format", "both"]) == 0
    first = capsys.readouterr().out
    assert int(re.search(r"^(\d+) image\(s\) went through a model", first, re.M).group(1)) > 0
    html_text, md = out.read_text(), out.with_suffix(".md").read_text()
    # self-contained: no script loaded from anywhere, plotly.js inlined, every figure as inline JSON
    assert not re.search(r"<script[^>]*\bsrc\s*=", html_text, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']https?:", html_text, re.I)
    assert 'id="plotly-gz"' in html_text and html_text.count('class="dl-fig"') >= 3  # heatmap + 2 t-SNE
    # the paper's protocol (the default): each model at its default layer at t=50, every selected image reported
    ref = run_sweep(ExtractionConfig(dataset=DATASET, model="domainlens-tiny", max_per_domain=6, seed=0),
                    ["up_blocks.1"], [10, 50], n_seeds=2, probe=False)
    at50 = ref[ref["timestep"] == 50].iloc[0]
    pix = run_sweep(ExtractionConfig(dataset=DATASET, model="pixels", max_per_domain=6, seed=0), None, [50],
                    n_seeds=2, probe=False).iloc[0]
    row = next(line for line in md.splitlines() if line.startswith(f"| {DATASET} |"))
    cell, pcell = (c.strip() for c in row.split("|")[2:4])
    # pixels add no noise: one draw, so its number is run_sweep's (the same k-means seeds on the same features)
    assert pcell.startswith(f"{pix['domain_nmi']:.3f} [") and f" / {pix['class_nmi']:.3f} [" in pcell
    # the tiny model: the mean over its two noise draws on the same images; the first draw is run_sweep's
    stability = md.split("## Stability over noise draws")[1]
    srow = next(line for line in stability.splitlines() if line.startswith(f"| {DATASET} | domainlens-tiny |"))
    draws = [float(x) for x in srow.split("|")[6].split(",")]
    assert len(draws) == 2 and draws[0] == pytest.approx(at50["domain_nmi"], abs=5e-4)
    assert float(cell.split()[0]) == pytest.approx(sum(draws) / 2, abs=1.5e-3)
    # the star only with a paired interval of the difference that excludes 0, and the interval is printed
    comp = md.split("## Best against runner-up")[1]
    crow = next(line for line in comp.splitlines() if line.startswith(f"| {DATASET} |"))
    lo = float(re.search(r"\[([-+]\d\.\d+),", crow).group(1))
    assert row.count("★") == (1 if lo > 0 else 0) and ("no clear winner" in crow) == (lo <= 0)
    assert cell.split(" ★")[0] in html.unescape(html_text) and "up_blocks.1 @ t=50" in md
    assert "python -m core report --datasets synthetic-pacs:heldout" in md.splitlines()[5]
    for part in ("Stability over noise draws", "Chance floors", "Domain AMI / class AMI", "Reproducibility",
                 "identity (weights hash)", "fingerprint", "scikit-learn"):
        assert part in md and part in html_text
    assert "Reference: the paper's numbers" not in md  # synthetic-pacs is not named like a DomainBed set
    # a second identical report runs no model
    assert main(["report", *ARGS, "--out", str(tmp_path / "again.md")]) == 0
    assert re.search(r"^0 image\(s\) went through a model", capsys.readouterr().out, re.M)
    again = (tmp_path / "again.md").read_text()
    assert row in again  # the same numbers from the cache


def test_second_report_runs_no_model_api(tmp_path):
    cfg = ReportConfig((DATASET,), ("pixels",), max_per_domain=4, n_seeds=1, noise_seeds=(), tsne_points=16)
    first = build_report(cfg, device="cpu")
    again = build_report(cfg, device="cpu")
    assert first.n_model_images == 16 and again.n_model_images == 0
    assert again.value(DATASET, "pixels", "domain_nmi") == first.value(DATASET, "pixels", "domain_nmi")


def test_paper_numbers_beside_ours_for_a_folder_named_like_pacs(tmp_path):
    root = make_domainbed(tmp_path / "PACS", domains=paper.DOMAINBED_DOMAINS["PACS"], classes=("dog", "horse"),
                          per_cell=3)
    cfg = ReportConfig((str(root),), ("pixels",), n_seeds=1, noise_seeds=(), tsne_points=24)
    rep = build_report(cfg, device="cpu")
    assert rep.paper == {str(root): "PACS"}
    md, html_text = render_markdown(rep), render_html(rep)
    for text in (html.unescape(md), html.unescape(html_text)):  # as rendered (markdown escapes & as HTML does)
        assert "Reference: the paper's numbers (not measured here)" in text
        assert paper.PAPER_LABEL in text
        assert "SD-2.1 0.82 / 0.08" in text and "DiT 0.85 / 0.08" in text and "RN50 0.59 / 0.29" in text
    ours = rep.value(str(root), "pixels", "domain_nmi")
    assert f"{ours:.3f} [" in md


def test_domainbed_names_are_recognised():
    for name, doms in paper.DOMAINBED_DOMAINS.items():
        assert paper.recognise(list(reversed(doms))) == name
    assert paper.recognise(["Art", "Clipart", "Product", "real_world"]) == "OfficeHome"
    assert paper.recognise(["cartoon", "painting", "photo", "sketch"]) is None  # the built-in look-alike
    assert paper.paper_numbers("VLCS")["SD-2.1"] == (0.26, 0.15)
    with pytest.raises(ValueError, match="paper reports"):
        paper.paper_numbers("MNIST")


def test_bad_report_input_is_a_clear_cli_error(capsys):
    assert main(["report", "--datasets", DATASET, "--models", "no-such-model", "--out", "x.html"]) == 2
    assert "error: Unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["report", "--datasets", DATASET, "--models", "pixels", "--blocks", "up_blocks.9",
                 "--out", "x.html"]) == 2
    assert "unknown block(s) ['up_blocks.9']: no model has them (pixels: pixels)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="select must be one of"):
        ReportConfig((DATASET,), ("pixels",), select="worst")


def test_report_button_on_the_sweep_page(monkeypatch):
    import os

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", "4")
    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", "pixels")
    monkeypatch.delenv("DOMAINLENS_DATA_ROOTS", raising=False)
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")
    at = AppTest.from_file(app, default_timeout=180).run()
    at.switch_page("pages/sweep.py").run()
    at.button(key="sweep_run").click().run()
    at.button(key="sweep_report_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    cfg = ReportConfig((DATASET,), ("pixels",), blocks=("pixels",), timesteps=(50,), max_per_domain=4)
    assert cfg.command("report.html", "all") in [c.value for c in at.code]
    assert any(c.value.startswith("Report ready") for c in at.caption)
    assert {"Report (HTML)", "Report (markdown)", "Tables (LaTeX)"} <= {b.label for b in at.get("download_button")}
    assert at.radio(key="sweep_report_select").value == "default"
