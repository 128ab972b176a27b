"""The dashboard through streamlit's AppTest, every page, with the tiny test model.

How the model is patched: the app honours ``DOMAINLENS_DEFAULT_MODEL`` (and ``DOMAINLENS_MAX_PER_DOMAIN``),
so each test points the default model at the ``tiny_sd_dir`` folder through the environment; the same
mechanism drives the real-browser test's server subprocess. Expected values come from core called
directly with the configuration the page should have built; they share the test's on-disk cache, whose
keys hash the whole configuration, so a page that built another configuration gets other numbers.
"""

from __future__ import annotations

import os

# As app.py does for the server: must precede the first torch import of this process (see app.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import base64
import json
import shlex
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
from PIL import Image

from core.engine.extract import ExtractionConfig
from core.engine.prompts import PromptSpec
from core.analysis.metrics import Scores
from core.analysis.reduce import ReductionConfig

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
N_PER_DOMAIN = 10
DATASET = "synthetic-pacs:heldout"
TYPED = "Folder or CSV manifest…"
OTHER_MODEL = "Other: hub id or local folder…"


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture()
def tiny_app(tiny_sd_dir, monkeypatch):
    """An AppTest of app.py whose default model is the tiny test model, 10 images per domain."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", str(tiny_sd_dir))
    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", str(N_PER_DOMAIN))
    monkeypatch.delenv("DOMAINLENS_DATA_ROOTS", raising=False)
    return AppTest.from_file(APP, default_timeout=120)


def core_explore(model: str, block: str = "up_blocks.1", timestep: int = 50,
                 prompt: PromptSpec = PromptSpec(), method: str = "pca", dataset: str = DATASET,
                 token_pooling: str | None = None, **red):
    """The Explore numbers from core directly (the test's cache: a hit only for the very same config)."""
    from core.analysis.explore import explore_view
    from core.backbones.registry import load_backbone as load_model

    cfg = ExtractionConfig(dataset=dataset, model=model, timestep=timestep, prompt=prompt, seed=0,
                           max_per_domain=N_PER_DOMAIN, token_pooling=token_pooling)
    return explore_view(cfg, block, ReductionConfig(method=method, random_state=0, **red), model=load_model(model))


def expected_metrics(s: Scores) -> dict[str, str]:
    pct = "n/a" if np.isnan(s.domain_probe_acc) else f"{s.domain_probe_acc:.1%}"
    return {"Domain NMI": f"{s.domain_nmi:.3f} ± {s.domain_nmi_std:.3f}",
            "Class NMI": f"{s.class_nmi:.3f} ± {s.class_nmi_std:.3f}",
            "Domain predictability": pct, "Domain silhouette": f"{s.domain_silhouette:.3f}"}


SCORE_LABELS = ("Domain NMI", "Class NMI", "Domain predictability", "Domain silhouette")
LAYOUT_LABELS = ("Layout trustworthiness", "k-NN domain accuracy, 2-D")  # checked in test_views_b.py


def metrics(at) -> dict[str, str]:
    """The page's metrics but the layout-faithfulness ones."""
    return {m.label: m.value for m in at.metric if m.label not in LAYOUT_LABELS}


def _decode(obj):
    """Plotly sends arrays base64-packed ({"dtype", "bdata", "shape"}); unpack them to lists."""
    if isinstance(obj, dict):
        if "bdata" in obj and "dtype" in obj:
            a = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=np.dtype(obj["dtype"]))
            if "shape" in obj:
                a = a.reshape([int(x) for x in str(obj["shape"]).split(",")])
            return a.tolist()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def charts(at) -> list:
    """The page's plotly figures, as sent to the browser."""
    return [pio.from_json(json.dumps(_decode(json.loads(c.proto.spec)))) for c in at.get("plotly_chart")]


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def scatter_xy(fig) -> np.ndarray:
    """(n, 2) coordinates in row order, through each point's customdata row index."""
    n = sum(len(t.x) for t in fig.data)
    out = np.full((n, 2), np.nan)
    for t in fig.data:
        rows = np.asarray(t.customdata)[:, 0].astype(int)
        out[rows, 0], out[rows, 1] = t.x, t.y
    return out


def make_domainbed(root: Path, domains=("d0", "d1"), classes=("c0", "c1"), n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for di, d in enumerate(domains):
        for c in classes:
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((32, 32, 3)) * 60 + 90 * di).astype(np.uint8)
                Image.fromarray(a).save(root / d / c / f"{i}.png")
    return root


def choose_typed_dataset(at, path: str):
    at.run()
    at.selectbox(key="dataset").select(TYPED).run()
    at.text_input(key="dataset_path").input(path).run()
    return at


# -------------------------------------------------------------------------------------------- explore


def test_explore_metrics_and_chart_match_core(tiny_app, tiny_sd_dir):
    at = tiny_app.run()
    assert_clean(at)
    ref = core_explore(str(tiny_sd_dir))
    assert metrics(at) == expected_metrics(ref.scores)
    from pages._output import chance_line  # AMI, chance floor and interval under each NMI

    captions = [c.value for c in at.caption]
    assert chance_line(ref.scores, "domain") in captions and chance_line(ref.scores, "class") in captions
    assert f"AMI {ref.scores.domain_ami:.3f}" in chance_line(ref.scores, "domain")

    (fig,) = charts(at)
    assert [t.name for t in fig.data] == ["cartoon", "painting", "photo", "sketch"]  # one trace per domain
    assert sum(len(t.x) for t in fig.data) == 4 * N_PER_DOMAIN
    assert {t.type for t in fig.data} == {"scatter"}  # SVG below 1000 points
    np.testing.assert_allclose(scatter_xy(fig), ref.embedding, rtol=1e-4, atol=1e-5)
    assert fig.layout.title.text.startswith("up_blocks.1 · t = 50")
    # the block slider lists every block in UNet order, the timestep slider the scheduler's range
    # (the family's default marked)
    assert at.select_slider(key="block").options == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                                     "up_blocks.0", "up_blocks.1 (default)", "up_blocks.2"]
    assert at.select_slider(key="block").value == "up_blocks.1"
    ts = at.select_slider(key="timestep")  # snaps to suggested timesteps: a step is one extraction, never 1 of 1,000
    assert (ts.options[0], ts.options[-1], ts.value, len(ts.options)) == ("0", "999", 50, 16)
    at.number_input(key="timestep_other").set_value(51).run()  # any other timestep: typed, then a slider position
    assert at.select_slider(key="timestep").value == 51 and "51" in at.select_slider(key="timestep").options
    assert charts(at)[0].layout.title.text.startswith("up_blocks.1 · t = 51")


def test_moving_the_block_and_timestep_sliders_changes_the_scores(tiny_app, tiny_sd_dir):
    at = tiny_app.run()
    before = metrics(at)["Domain NMI"]
    at.select_slider(key="block").set_value("down_blocks.0").run()
    assert_clean(at)
    after = metrics(at)
    assert after["Domain NMI"] != before
    assert after == expected_metrics(core_explore(str(tiny_sd_dir), block="down_blocks.0").scores)
    assert charts(at)[0].layout.title.text.startswith("down_blocks.0")

    at.select_slider(key="timestep").set_value(500).run()
    assert_clean(at)
    ref = core_explore(str(tiny_sd_dir), block="down_blocks.0", timestep=500)
    assert metrics(at) == expected_metrics(ref.scores)
    assert "t = 500" in charts(at)[0].layout.title.text


def test_prompt_modes_reach_core(tiny_app, tiny_sd_dir):
    at = tiny_app.run()
    at.radio(key="prompt_mode").set_value("template").run()
    assert_clean(at)
    ref = core_explore(str(tiny_sd_dir), prompt=PromptSpec("template", "a photo of a {class}"))
    assert metrics(at) == expected_metrics(ref.scores)
    at.radio(key="prompt_mode").set_value("custom").run()
    at.text_input(key="prompt_text").input("a sketch").run()
    assert_clean(at)
    ref = core_explore(str(tiny_sd_dir), prompt=PromptSpec("custom", "a sketch"))
    assert metrics(at) == expected_metrics(ref.scores)


@pytest.fixture(scope="module")
def tiny_vision_dirs(tmp_path_factory) -> dict[str, Path]:
    from core.tiny_families import make_tiny

    root = tmp_path_factory.mktemp("tiny-vision")
    return {k: make_tiny(k, root / k) for k in ("clip", "dinov2")}


def test_token_pooling_radio_only_where_the_model_offers_a_choice(tiny_app, tiny_vision_dirs, monkeypatch):
    """A vision encoder with a CLS token gets a "Token pooling" radio (default cls); switching it gives the
    numbers core gives for that pooling, and the reproduce command carries it. The UNet has no such radio."""
    at = tiny_app.run()
    assert_clean(at)
    assert not [r for r in at.radio if r.key == "token_pooling"]

    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", str(tiny_vision_dirs["dinov2"]))
    at = tiny_app.run()
    assert_clean(at)
    assert at.radio(key="token_pooling").options == ["cls (default)", "mean"]

    clip = str(tiny_vision_dirs["clip"])
    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", clip)
    at = tiny_app.run()
    assert_clean(at)
    radio = at.radio(key="token_pooling")
    assert radio.value == "cls" and radio.options == ["cls (default)", "mean"]
    cls_metrics = metrics(at)
    assert cls_metrics == expected_metrics(core_explore(clip, block="layer.2").scores)
    radio.set_value("mean").run()
    assert_clean(at)
    ref = core_explore(clip, block="layer.2", token_pooling="mean")
    assert metrics(at) == expected_metrics(ref.scores) != cls_metrics
    np.testing.assert_allclose(scatter_xy(charts(at)[0]), ref.embedding, rtol=1e-4, atol=1e-5)
    (code,) = [c.value for c in at.code if "python -m core sweep" in c.value]
    assert "--token-pooling mean" in code

    # Sweep (no setting controls of its own) offers the same choice, and its table is core's for that pooling
    from core.analysis.sweep import run_sweep
    from core.backbones.registry import load_backbone

    at.switch_page("pages/sweep.py").run()
    assert_clean(at)
    at.radio(key="sweep_token_pooling").set_value("mean")
    at.button(key="sweep_run").click().run()
    assert_clean(at)
    ref = run_sweep(ExtractionConfig(dataset=DATASET, model=clip, max_per_domain=N_PER_DOMAIN, seed=0,
                                     token_pooling="mean"), ["layer.0", "layer.1", "layer.2"], [50],
                    model=load_backbone(clip))
    np.testing.assert_allclose(at.dataframe[0].value["domain_nmi"].to_numpy(float), ref["domain_nmi"].to_numpy(float))
    assert any("--token-pooling mean" in c.value for c in at.code if "python -m core sweep" in c.value)


def test_layout_sample_and_place_every_point(tiny_app, monkeypatch):
    """Above the layout sample a t-SNE is fitted on a stratified sample and shows only it; the "Place every
    point" toggle (shown only then) places the others with the fitted embedding's transform."""
    from core.analysis import reduce as layouts

    at = tiny_app.run()
    at.radio(key="reducer").set_value("tsne").run()
    assert_clean(at)
    assert not [t for t in at.toggle if t.key == "place_all"]  # 40 images: all fitted, nothing to place
    monkeypatch.setattr(layouts, "LAYOUT_SAMPLE", 16)
    at.run()
    assert_clean(at)
    assert sum(np.isfinite(np.asarray(t.x, float)).sum() for t in charts(at)[0].data) == 16
    at.toggle(key="place_all").set_value(True).run()
    assert_clean(at)
    assert sum(np.isfinite(np.asarray(t.x, float)).sum() for t in charts(at)[0].data) == 4 * N_PER_DOMAIN


def test_colouring_and_reducers(tiny_app):
    at = tiny_app.run()
    at.radio(key="color_by").set_value("class").run()
    assert_clean(at)
    assert [t.name for t in charts(at)[0].data] == ["circle", "cross", "house", "square", "star", "triangle"]
    at.radio(key="color_by").set_value("cluster").run()
    assert_clean(at)
    fig = charts(at)[0]
    assert len(fig.data) <= 4 and all(t.name.startswith("cluster ") for t in fig.data)
    assert sum(len(t.x) for t in fig.data) == 4 * N_PER_DOMAIN
    scores = metrics(at)
    at.session_state["perplexity"] = 10  # a widget's value set ahead of its first render: one t-SNE run
    at.radio(key="reducer").set_value("tsne").run()
    assert_clean(at)
    assert at.slider(key="perplexity").value == 10
    fig = charts(at)[0]
    assert "t-SNE" in fig.layout.title.text and sum(len(t.x) for t in fig.data) == 4 * N_PER_DOMAIN
    assert metrics(at) == scores  # the layout never changes the numbers


def test_export_panel_cli_command_reproduces_the_metric(tiny_app, tmp_path, capsys):
    """The command shown under "Export & reproduce" gives the same domain NMI from the CLI."""
    from core.cli import main

    at = tiny_app.run()
    (code,) = [c.value for c in at.code if "python -m core sweep" in c.value]
    argv = shlex.split(code)
    assert argv[:4] == ["python", "-m", "core", "sweep"]
    capsys.readouterr()
    assert main(argv[3:] + ["--json", "--no-progress", "--cache-dir", str(tmp_path / "cli-cache")]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["block"] == "up_blocks.1" and row["timestep"] == 50
    assert metrics(at)["Domain NMI"] == f"{row['domain_nmi']:.3f} ± {row['domain_nmi_std']:.3f}"
    labels = [b.label for b in at.get("download_button")]
    assert {"layout (HTML)", "metrics (CSV)", "configuration (JSON)"} <= set(labels)


def test_selection_parsing_maps_points_to_rows():
    from pages import _output as ui

    event = {"selection": {"points": [{"customdata": [7]}, {"customdata": [2]}, {"customdata": [7]}, {"x": 1}]}}
    assert ui.selected_rows(event) == [7, 2]
    assert ui.selected_rows({"selection": {"points": []}}) == []
    assert ui.selected_rows(None) == []


# --------------------------------------------------------------------------------- sidebar and errors


def test_pixels_baseline_has_no_timestep_or_prompt(tiny_app):
    at = tiny_app.run()
    at.selectbox(key="model").select("pixels").run()
    assert_clean(at)
    assert not [s for s in [*at.slider, *at.select_slider] if s.key == "timestep"]
    assert metrics(at) == expected_metrics(core_explore("pixels", block="pixels").scores)


def test_missing_embedded_model_says_how_to_get_it(tiny_app, tmp_path, monkeypatch):
    import dataclasses

    import core.backbones.registry

    reg = core.backbones.registry.REGISTERED["domainlens-tiny"]
    monkeypatch.setitem(core.backbones.registry.REGISTERED, "domainlens-tiny",
                        dataclasses.replace(reg, location=tmp_path / "not-trained"))
    monkeypatch.delenv("DOMAINLENS_DEFAULT_MODEL")
    at = tiny_app.run()
    assert not at.exception
    (err,) = at.error
    assert "python -m core.training.train_default" in err.value and "pixels" in err.value
    assert not at.get("plotly_chart")


def test_hub_id_not_in_the_cache_is_an_error_not_a_traceback(tiny_app):
    at = tiny_app.run()
    at.selectbox(key="model").select(OTHER_MODEL).run()
    at.text_input(key="model_path").input("nobody-here/no-such-model").run()
    assert not at.exception
    assert any("not in the local Hugging Face cache" in e.value for e in at.error)


def test_bad_dataset_path_shows_an_error(tiny_app, tmp_path, monkeypatch):
    root = tmp_path / "roots"
    root.mkdir()
    monkeypatch.setenv("DOMAINLENS_DATA_ROOTS", str(root))
    at = choose_typed_dataset(tiny_app, str(root / "no-such-dataset"))
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    assert not at.get("plotly_chart")


def test_paths_outside_the_data_roots_are_refused(tiny_app, tmp_path, monkeypatch):
    root = tmp_path / "roots"
    root.mkdir()
    outside = make_domainbed(tmp_path / "outside")
    (root / "link").symlink_to(outside, target_is_directory=True)  # a link inside that leads outside
    monkeypatch.setenv("DOMAINLENS_DATA_ROOTS", str(root))
    for typed in (str(outside), str(root / ".." / "outside"), "link", str(root / "link")):
        at = choose_typed_dataset(tiny_app, typed)
        assert not at.exception, typed
        assert any("outside the data roots" in e.value for e in at.error), typed
        assert not at.get("plotly_chart"), typed


def test_data_roots_from_secrets_and_several_roots(tiny_app, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    make_domainbed(second / "mini")
    tiny_app.secrets["data_roots"] = [str(first), str(second)]
    at = choose_typed_dataset(tiny_app, str(second / "mini"))
    assert_clean(at)
    assert len(charts(at)) == 1
    at.text_input(key="dataset_path").input(str(tmp_path)).run()
    assert not at.exception
    (err,) = at.error
    assert "outside the data roots" in err.value and str(first) in err.value and str(second) in err.value


def test_typed_paths_need_configured_roots(tiny_app, tmp_path):
    at = choose_typed_dataset(tiny_app, str(make_domainbed(tmp_path / "ds")))
    assert not at.exception
    assert any("no data roots are configured" in e.value for e in at.error)


def test_dataset_inside_the_roots_is_found_and_explored(tiny_app, tmp_path, monkeypatch):
    root = tmp_path / "roots"
    ds = make_domainbed(root / "mini")
    make_domainbed(root / "single", domains=("only",))
    monkeypatch.setenv("DOMAINLENS_DATA_ROOTS", str(root))
    at = tiny_app.run()
    # DomainBed folders under the roots are listed (not the root that holds them)
    assert [o for o in at.selectbox(key="dataset").options if str(root) in o] == [f"mini ({ds})"]
    at.selectbox(key="dataset").select(str(ds)).run()
    assert_clean(at)
    (fig,) = charts(at)
    assert [t.name for t in fig.data] == ["d0", "d1"] and sum(len(t.x) for t in fig.data) == 12
    # typed relative to the root works too; a one-domain dataset is refused with what to do
    at = choose_typed_dataset(tiny_app, "mini")
    assert_clean(at)
    at.text_input(key="dataset_path").input("single").run()
    assert not at.exception
    assert any("at least 2" in e.value for e in at.error)


# -------------------------------------------------------------------------------------- other pages


def test_sweep_page_matches_core_sweep(tiny_app, tiny_sd_dir):
    from core.backbones.registry import load_backbone as load_model
    from core.analysis.sweep import run_sweep

    at = tiny_app.run()
    at.switch_page("pages/sweep.py").run()
    assert_clean(at)
    assert at.info and "Run sweep" in at.info[0].value
    at.multiselect(key="sweep_blocks").set_value(["mid_block", "up_blocks.1"])
    at.multiselect(key="sweep_timesteps").set_value([10, 500])
    at.button(key="sweep_run").click().run()
    assert_clean(at)
    shown = at.dataframe[0].value
    ref = run_sweep(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N_PER_DOMAIN, seed=0),
                    ["mid_block", "up_blocks.1"], [10, 500], model=load_model(str(tiny_sd_dir)))
    assert len(shown) == 4
    np.testing.assert_allclose(shown["domain_nmi"].to_numpy(float), ref["domain_nmi"].to_numpy(float))
    np.testing.assert_allclose(shown["class_nmi"].to_numpy(float), ref["class_nmi"].to_numpy(float))
    figs = charts(at)
    assert [f.data[0].type for f in figs] == ["heatmap", "heatmap", "scatter", "scatter"]
    dom = figs[0].data[0]
    assert list(dom.y) == ["mid_block", "up_blocks.1"] and list(dom.x) == ["10", "500"]
    best = ref.loc[ref["domain_nmi"].idxmax()]
    assert f"**{best['block']}** at t = {int(best['timestep'])}" in at.success[0].value
    z = np.asarray(dom.z, dtype=float)
    assert z[list(dom.y).index(best["block"]), list(dom.x).index(str(int(best["timestep"])))] == pytest.approx(
        best["domain_nmi"])
    assert figs[0].layout.shapes  # the best cell is outlined
    assert any("--timesteps 10,500 --blocks mid_block,up_blocks.1" in c.value for c in at.code)


def test_compare_shows_the_embedded_dit_beside_a_unet(tiny_app):
    """The paper's comparison in miniature: a UNet on side A, domainlens-tiny-dit on side B, numbers from core."""
    at = tiny_app.run()
    at.switch_page("pages/compare.py").run()
    at.selectbox(key="cmp_b_model").select("domainlens-tiny-dit").run()
    assert_clean(at)
    assert at.select_slider(key="cmp_b_block").value.startswith("transformer_blocks.6")
    rb = core_explore("domainlens-tiny-dit", block="transformer_blocks.6")
    shown = [m for m in at.metric if m.label in SCORE_LABELS]
    assert {m.label: m.value for m in shown[4:]} == expected_metrics(rb.scores)


def test_compare_page_aligns_b_to_a_and_shows_deltas(tiny_app, tiny_sd_dir):
    from core import figures

    at = tiny_app.run()
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert at.selectbox(key="cmp_a_model").value == str(tiny_sd_dir)
    assert at.selectbox(key="cmp_b_model").value == "pixels"
    ra = core_explore(str(tiny_sd_dir))
    rb = core_explore("pixels", block="pixels")
    shown = [m for m in at.metric if m.label in SCORE_LABELS]
    side_a = {m.label: m.value for m in shown[:4]}
    side_b = {m.label: m.value for m in shown[4:]}
    assert side_a == expected_metrics(ra.scores) and side_b == expected_metrics(rb.scores)
    delta = {m.label: m.delta for m in shown[4:]}
    assert delta["Domain NMI"] == f"{rb.scores.domain_nmi - ra.scores.domain_nmi:+.3f}"
    assert delta["Class NMI"] == f"{rb.scores.class_nmi - ra.scores.class_nmi:+.3f}"
    from core.analysis.explore import compare_settings

    paired = compare_settings(ra.features, "up_blocks.1", rb.features, "pixels")  # same images: paired B - A
    assert paired.verdict() in [x.value for x in list(at.success) + list(at.info)]
    fa, fb = charts(at)
    aligned, _ = figures.align_by_ids(ra.features.ids, ra.embedding, rb.features.ids, rb.embedding)
    np.testing.assert_allclose(scatter_xy(fa), ra.embedding, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scatter_xy(fb), aligned, rtol=1e-4, atol=1e-4)
    assert list(fa.layout.xaxis.range) == list(fb.layout.xaxis.range)  # same frame, comparable places
    # B can be another block of the same model
    at.selectbox(key="cmp_b_model").select(str(tiny_sd_dir)).run()
    at.select_slider(key="cmp_b_block").set_value("down_blocks.0").run()
    assert_clean(at)
    rb = core_explore(str(tiny_sd_dir), block="down_blocks.0")
    assert {m.label: m.value for m in [m for m in at.metric if m.label in SCORE_LABELS][4:]} == \
        expected_metrics(rb.scores)


def test_pseudo_domains_page(tiny_app, tiny_sd_dir):
    from core import figures

    at = tiny_app.run()
    at.switch_page("pages/pseudo_domains.py").run()
    assert_clean(at)
    assert at.number_input(key="pd_k").value == 4  # default K = number of domains
    fs = core_explore(str(tiny_sd_dir)).features
    ref = figures.pseudo_domains(fs.features["up_blocks.1"], 4, fs.domains, fs.classes, random_state=0)
    m = metrics(at)
    assert m["Clusters ↔ domains NMI"] == f"{ref.domain_nmi:.3f}"
    assert m["Clusters ↔ classes NMI"] == f"{ref.class_nmi:.3f}"
    from core.analysis.dg import cluster_agreement

    agree = cluster_agreement(fs.domains, ref.labels)  # beside NMI: homogeneity and purity (issue 17)
    assert (m["Domain homogeneity"], m["Domain purity"]) == (f"{agree['homogeneity']:.3f}", f"{agree['purity']:.3f}")
    by_domain, by_class = charts(at)
    assert list(by_domain.data[0].x) == ["cartoon", "painting", "photo", "sketch"]
    assert len(by_domain.data[0].y) == 4 and len(by_class.data[0].x) == 6
    np.testing.assert_array_equal(np.asarray(by_domain.data[0].text, dtype=int), ref.by_domain.to_numpy())
    exemplar_grids = [im for im in at.image if im.value and im.value[0].startswith("data:image/png;base64,")]
    assert len(exemplar_grids) == 4 and all(1 <= len(g.value) <= 6 for g in exemplar_grids)
    labels = {b.label for b in at.get("download_button")}
    assert {"assignments (CSV)", "centroids (CSV)", "centroids.npy"} <= labels
    at.number_input(key="pd_k").set_value(3).run()
    assert_clean(at)
    assert len(charts(at)[0].data[0].y) == 3
