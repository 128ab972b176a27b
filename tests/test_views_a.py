"""Research views: film strip, layer similarity (CKA), stability, prompt audit: core, CLI and pages.

Pages are checked against core called directly with the configuration the page should have built (the
same on-disk cache, keyed by the whole configuration); see tests/test_app.py for the AppTest helpers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
from pathlib import Path

import numpy as np
import pytest

from core.engine.extract import ExtractionConfig, PromptSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N = 5  # images per domain
DATASET = "synthetic-pacs:heldout"
APP = str(Path(__file__).resolve().parent.parent / "app.py")


# -------------------------------------------------------------------------------------------------- CKA


def _rng_pair(n=60, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    return rng, X


@pytest.mark.parametrize("name", ["linear_cka", "debiased_cka"])
def test_cka_identity_orthogonal_scale_invariance_and_linear_sensitivity(name):
    import core

    cka = getattr(core, name)  # importable from core directly
    rng, X = _rng_pair()
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    assert cka(X, 7.5 * X + 3.0) == pytest.approx(1.0, abs=1e-10)
    A = np.diag(np.linspace(0.05, 5, 12)) @ rng.normal(size=(12, 12))  # a general (non-orthogonal) linear map
    assert cka(X, X @ A) < 0.97
    Y = rng.normal(size=X.shape)
    assert abs(cka(X, Y)) < cka(X, X @ A)
    assert isinstance(cka(X, Y), float)


def test_cka_matches_gram_matrix_definitions_and_the_matrix_form():
    from core.analysis.cka import cka_matrix, debiased_cka, linear_cka

    rng = np.random.default_rng(1)
    X = rng.normal(size=(25, 4)) + 2
    Y = X @ rng.normal(size=(4, 6)) + rng.normal(size=(25, 6))
    n = len(X)
    H = np.eye(n) - 1 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert linear_cka(X, Y) == pytest.approx((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()), rel=1e-10)

    def hsic_u(K, L):  # Song et al. 2012, eq. (5), on the n x n Gram matrices
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0), np.fill_diagonal(L, 0)
        o = np.ones(n)
        return (np.trace(K @ L) + (o @ K @ o) * (o @ L @ o) / ((n - 1) * (n - 2)) - 2 / (n - 2) * o @ K @ L @ o) / (
            n * (n - 3))

    K, L = X @ X.T, Y @ Y.T
    assert debiased_cka(X, Y) == pytest.approx(hsic_u(K, L) / np.sqrt(hsic_u(K, K) * hsic_u(L, L)), rel=1e-9)
    for deb, fn in ((False, linear_cka), (True, debiased_cka)):
        M, rows, cols = cka_matrix({"x": X, "y": Y, "z": Y[:, :2]}, debiased=deb)
        assert rows == cols == ["x", "y", "z"] and np.allclose(np.diag(M), 1.0)
        assert M[0, 1] == pytest.approx(fn(X, Y), rel=1e-9) and M[1, 2] == pytest.approx(fn(Y, Y[:, :2]), rel=1e-9)
    M, rows, cols = cka_matrix({"x": X}, {"y": Y, "z": Y[:, :2]})
    assert M.shape == (1, 2) and cols == ["y", "z"] and M[0, 0] == pytest.approx(linear_cka(X, Y))
    # max_dim: projection on leading components stays close (and exact when the rank fits)
    W = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 40))
    Mp, _, _ = cka_matrix({"w": W, "y": W[:, :10] + 0.1 * rng.normal(size=(200, 10))}, max_dim=5)
    assert Mp[0, 1] == pytest.approx(linear_cka(W, W[:, :10] + 0.1 * rng.normal(size=(200, 10))), abs=0.02)


def test_cka_is_nan_free_on_constant_features_and_validates_inputs():
    from core import debiased_cka, linear_cka
    from core.analysis.cka import CKAError, cka_matrix

    rng, X = _rng_pair()
    C = np.ones((60, 3))
    for fn in (linear_cka, debiased_cka):
        assert fn(X, C) == 0.0 and fn(C, C) == 0.0
    M, _, _ = cka_matrix({"x": X, "c": C}, debiased=True)
    assert np.isfinite(M).all() and M[0, 1] == 0.0
    with pytest.raises(CKAError, match="SAME images"):
        linear_cka(X, X[:10])
    with pytest.raises(CKAError, match="1-D"):
        linear_cka(X[:, 0], X)
    with pytest.raises(CKAError, match="NaN"):
        linear_cka(np.full((5, 2), np.nan), X[:5])
    with pytest.raises(CKAError, match="at least 4"):
        debiased_cka(X[:3], X[:3])
    with pytest.raises(CKAError, match="numeric"):
        linear_cka([["a", "b"]], [["c", "d"]])
    with pytest.raises(CKAError, match="max_dim=64"):  # an exact grid too costly to run: the error says the fix
        cka_matrix({str(i): np.zeros((400, 3_000)) for i in range(2)}, max_flops=1e8)


def test_cka_projection_in_float32_stays_close_to_exact():
    """Strong clustered signal plus noise in float32 (what large grids use): the projected grid stays within
    1e-3 of the exact one (a basis built by inverting Y^T Y's eigenvalues in float32 was off by up to 0.7)."""
    from bench.common import clustered_features
    from core.analysis.cka import cka_matrix

    rng = np.random.default_rng(0)
    base, _, _ = clustered_features(300, 64, seed=1)
    layers = {f"{b}@{t}": (base @ rng.normal(0, 1 / 8, (64, d)) * (1 - t / 10) + rng.normal(0, 0.5, (300, d)))
              .astype(np.float32) for b, d in enumerate((320, 1280)) for t in range(3)}
    exact, _, _ = cka_matrix(layers)
    projected, _, _ = cka_matrix(layers, max_dim=64, dtype=np.float32)
    assert np.abs(projected - exact).max() < 1e-3


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_grid_with_more_features_than_images_is_exact_in_image_space(debiased, monkeypatch):
    """Layers wider than half the images take the banded Gram path; it gives the pairwise numbers."""
    from core import debiased_cka, linear_cka
    from core.analysis import cka

    rng = np.random.default_rng(3)
    base = rng.normal(size=(300, 8))
    layers = {f"l{i}": base @ rng.normal(size=(8, d)) + rng.normal(size=(300, d)) for i, d in enumerate((90, 400, 7))}
    calls = []
    real = cka._cross_image_space
    monkeypatch.setattr(cka, "_cross_image_space", lambda m, k: calls.append(1) or real(m, k, rows=64))
    M, names, _ = cka.cka_matrix(layers, debiased=debiased)
    assert calls, "a 497-feature grid over 300 images should use the image-space form"
    fn = debiased_cka if debiased else linear_cka
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert M[i, j] == pytest.approx(fn(layers[a], layers[b]), rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------------------- strip, prompts, stability


def test_align_frames_undoes_rotation_and_strip_figure_holds_every_frame():
    from core.analysis.filmstrip import align_frames, build_strip, clip_timesteps
    from core.figures.views import frame_positions, strip_figure

    assert clip_timesteps(None, 500) == [0, 10, 25, 50, 100, 200, 400, 499]
    rng = np.random.default_rng(0)
    A = rng.normal(size=(30, 2))
    th = 1.1
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    aligned, disp = align_frames([A, 3 * A @ R + 5])
    np.testing.assert_allclose(aligned[1], A, atol=1e-9)
    assert disp == pytest.approx([0.0, 0.0], abs=1e-9)
    feats = [rng.normal(size=(30, 6)) for _ in range(3)]
    dom, cls = np.repeat([0, 1, 2], 10), np.tile([0, 1], 15)
    strip = build_strip("timestep", [0, 50, 999], feats, dom, cls, domains=[f"d{d}" for d in dom],
                        classes=[f"c{c}" for c in cls], ids=[f"i{i}" for i in range(30)],
                        domain_names=["d0", "d1", "d2"], class_names=["c0", "c1"], n_seeds=1)
    assert strip.labels == ["t = 0", "t = 50", "t = 999"] and len(strip.layouts_frame()) == 90
    fig = strip_figure(strip, active=1)
    assert len(fig.frames) == 3 and [s.label for s in fig.layout.sliders[0].steps] == strip.labels
    assert fig.layout.sliders[0].active == 1 and {b.label for b in fig.layout.updatemenus[0].buttons} == {
        "▶ Play", "❚❚ Pause"}
    for k in range(3):
        np.testing.assert_allclose(frame_positions(fig, k), strip.embeddings[k])
    marker = fig.data[-2]  # the domain-NMI marker sits on the active frame
    assert list(marker.x) == ["t = 50"] and marker.y[0] == pytest.approx(strip.scores["domain_nmi"][1])


def test_prompt_spec_domain_and_per_class_modes_keep_old_keys():
    from core.analysis.prompt_audit import derangement, fixed_wrong_class_prompt
    from core.engine.extract import ExtractionError

    assert PromptSpec("template", "a {domain} of a {class}").for_class("hot_dog", "clip_art") == "a clip art of a hot dog"
    assert PromptSpec("template", "a photo of a {class}").for_class("cat") == "a photo of a cat"  # unchanged
    with pytest.raises(ExtractionError, match="{class} or {domain}"):
        PromptSpec("template", "no placeholder")
    with pytest.raises(ExtractionError, match="JSON object"):
        PromptSpec("per-class", "cat=dog")
    names = ["a", "b", "c", "d", "e"]
    for seed in range(20):
        m = derangement(names, seed)
        assert sorted(m.values()) == names and all(k != v for k, v in m.items())
    assert derangement(names, 3) == derangement(names, 3)
    p = fixed_wrong_class_prompt(["cat", "dog"])
    assert p.for_class("cat") == "a photo of a dog" and p.for_class("dog") == "a photo of a cat"
    with pytest.raises(ValueError, match="at least 2"):
        derangement(["only"])


def test_spread_sentence_uses_standard_deviations_and_ignores_ensemble_size():
    import pandas as pd

    from core.analysis.stability import chance_std, difference_band, spread_sentence, summarize

    draws = pd.DataFrame({"source": ["noise seed"] * 3 + ["ensemble size"] * 2 + ["k-means seed"] * 2,
                          "setting": [0, 1, 2, 1, 8, 0, 1],
                          "domain_nmi": [0.50, 0.58, 0.54, 0.40, 0.90, 0.55, 0.57]})
    sm = summarize(draws)
    assert list(sm["source"]) == ["noise seed", "ensemble size", "k-means seed"]
    assert "spread" not in sm  # no max - min: ranges grow with the number of draws
    assert list(sm["kind"]) == ["chance", "systematic", "chance"]
    assert sm.loc[0, "std"] == pytest.approx(0.04)  # sample std of 0.50, 0.58, 0.54
    assert sm.loc[1, "effect"] == pytest.approx(0.5)  # ensemble 8 minus ensemble 1: a systematic change
    sd = chance_std(sm, n_seeds=5)  # k-means seed variance / 5 (scores average 5 seeds); ensemble not counted
    assert sd == pytest.approx(np.sqrt(0.04 ** 2 + np.std([0.55, 0.57], ddof=1) ** 2 / 5))
    band = difference_band(sm, 5)
    assert band == pytest.approx(1.96 * np.sqrt(2) * sd, rel=1e-3) and band < 0.5  # the 0.5 ensemble effect is out
    small = spread_sentence(sm, -0.05)
    assert small.startswith("Careful") and "0.050" in small and f"{band:.3f}" in small and "noise seeds" in small
    assert "not chance" in small and "+0.500" in small
    big = spread_sentence(sm, 0.2)
    assert "unlikely" in big and "0.200" in big
    more = summarize(pd.concat([draws, pd.DataFrame({"source": "noise seed", "setting": range(3, 40),
                                                     "domain_nmi": np.resize([0.50, 0.58, 0.54], 37)})]))
    assert more.loc[0, "std"] <= sm.loc[0, "std"]  # more draws of the same spread: the std does not grow


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture()
def tiny_model(tiny_sd_dir):
    from core.analysis.prompt_audit import load

    return load(str(tiny_sd_dir))


def test_cli_views_write_csv_html_and_config(tiny_sd_dir, tmp_path, capsys):
    from core.cli import main

    common = ["--model", str(tiny_sd_dir), "--max-per-domain", str(N), "--no-progress"]
    assert main(["cka", *common, "--timesteps", "50", "--blocks", "mid_block,up_blocks.1", "--debiased",
                 "--out", str(tmp_path / "cka")]) == 0
    out = tmp_path / "cka"
    assert {p.name for p in out.iterdir()} == {"cka.csv", "cka_matrix.csv", "cka.html", "config.json"}
    spec = json.loads((out / "config.json").read_text())
    assert spec["measure"] == "debiased CKA" and "--debiased" in spec["cli"]
    import pandas as pd

    long = pd.read_csv(out / "cka.csv")
    assert len(long) == 4 and np.allclose(long.loc[long["row"] == long["col"], "cka"], 1.0)
    assert main(["filmstrip", *common, "--timesteps", "50", "--out", str(tmp_path / "fs")]) == 0
    assert (tmp_path / "fs" / "filmstrip.html").stat().st_size > 0
    spec = json.loads((tmp_path / "fs" / "config.json").read_text())
    assert "--timesteps 50" in spec["cli"] and spec["block"] == "up_blocks.1"
    assert main(["filmstrip", "--model", "pixels", "--out", str(tmp_path / "x"), "--max-per-domain", "3",
                 "--no-progress"]) == 2  # a baseline has no timestep: a clear error, not a traceback
    assert "no timestep" in capsys.readouterr().err


def test_cli_views_without_timesteps_use_t50(tiny_sd_dir, tmp_path):
    """`--timesteps` left out (as in the README's commands) means t = 50, never a traceback."""
    from core.cli import main

    common = ["--model", str(tiny_sd_dir), "--max-per-domain", "3", "--no-progress"]
    assert main(["stability", *common, "--block", "up_blocks.1", "--noise-seeds", "2", "--ensembles", "1,2",
                 "--kmeans-seeds", "2", "--bootstraps", "2", "--out", str(tmp_path / "stab")]) == 0
    assert json.loads((tmp_path / "stab" / "config.json").read_text())["timesteps"] == [50]
    assert main(["prompt-audit", *common, "--blocks", "up_blocks.1", "--out", str(tmp_path / "audit")]) == 0
    assert (tmp_path / "audit" / "config.json").exists()
    import pandas as pd

    leak = pd.read_csv(tmp_path / "audit" / "leakage.csv")  # against the label-free controls (6 classes)
    assert set(leak["class_control"]) <= {"empty", "shuffled class", "constant", "wrong class"}
    assert "wrong_class_excess" in leak


# ------------------------------------------------------------------------------------------------ pages


@pytest.fixture()
def app(tiny_sd_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", str(tiny_sd_dir))
    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", str(N))
    monkeypatch.delenv("DOMAINLENS_DATA_ROOTS", raising=False)
    return AppTest.from_file(APP, default_timeout=120)


def _charts(at):
    from tests.test_app import charts

    return charts(at)


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_filmstrip_page_matches_core(app, tiny_sd_dir, tiny_model):
    from core.analysis.filmstrip import block_strip, timestep_strip
    from core.analysis.sweep import cached_scores
    from core.engine.extract import get_features
    from core.figures.views import frame_positions

    app.session_state["strip_timesteps"] = [0, 50, 999]
    at = app.switch_page("pages/filmstrip.py").run()
    _clean(at)
    ref = timestep_strip(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N),
                         "up_blocks.1", [999, 0, 50], model=tiny_model)
    assert ref.values == [0, 50, 999]  # sorted (out-of-range timesteps are refused: tests/test_reliability_cache.py)
    (fig,) = _charts(at)
    assert len(fig.frames) == 3
    np.testing.assert_allclose(frame_positions(fig, 2), ref.embeddings[2], rtol=1e-4, atol=1e-5)
    # one frame control, Plotly's own: the first frame shown is t = 50 (the paper's timestep); no Streamlit frame
    # slider or per-frame metric that the in-browser play could disagree with; every frame's numbers in the table
    assert fig.layout.sliders[0].active == 1 and not at.metric
    assert not [x for x in at.select_slider if x.key == "strip_frame"]
    table = at.dataframe[0].value
    np.testing.assert_allclose(table["domain_nmi"], ref.scores["domain_nmi"], rtol=1e-6)
    np.testing.assert_allclose(table["class_nmi"], ref.scores["class_nmi"], rtol=1e-6)
    assert any("python -m core filmstrip" in c.value for c in at.code)
    assert {"film strip (HTML)", "frames (CSV)", "layouts (CSV)", "configuration (JSON)"} <= {
        b.label for b in at.get("download_button")}
    at.radio(key="strip_mode").set_value("block").run()  # walk down the UNet
    _clean(at)
    assert len(_charts(at)[0].frames) == len(tiny_model.blocks)
    walk = block_strip(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N), None,
                       model=tiny_model)
    assert walk.values == list(tiny_model.blocks)
    fs = get_features(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N), model=tiny_model)
    assert walk.scores["domain_nmi"].iloc[0] == pytest.approx(cached_scores(fs, walk.values[0]).domain_nmi)
    assert _charts(at)[0].layout.sliders[0].active == walk.values.index("up_blocks.1")  # the default layer first


def test_layer_similarity_page_matches_core(app, tiny_sd_dir, tiny_model):
    from core.analysis.cka import cka_matrix, model_layers

    app.session_state["cka_timesteps"] = [10, 50]
    app.session_state["cka_blocks"] = ["mid_block", "up_blocks.1"]
    at = app.switch_page("pages/layer_similarity.py").run()
    _clean(at)
    layers, _ = model_layers(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N, timestep=10),
                             ["mid_block", "up_blocks.1"], [10, 50], model=tiny_model)
    M, rows, _ = cka_matrix(layers)
    (fig,) = _charts(at)
    hm = fig.data[0]
    assert list(hm.y) == rows == ["mid_block @ t=10", "up_blocks.1 @ t=10", "mid_block @ t=50", "up_blocks.1 @ t=50"]
    np.testing.assert_allclose(np.asarray(hm.z, float), M, rtol=1e-9)
    assert "linear CKA = %{z:.3f}" in hm.hovertemplate
    at.toggle(key="cka_debiased").set_value(True).run()
    _clean(at)
    np.testing.assert_allclose(np.asarray(_charts(at)[0].data[0].z, float), cka_matrix(layers, debiased=True)[0],
                               rtol=1e-9)
    assert any("--debiased" in c.value for c in at.code)
    assert not at.get("toggle") or "cka_exact" not in [t.key for t in at.toggle]  # small grid: always exact


def test_layer_similarity_page_projects_large_grids_and_offers_exact(app, tiny_sd_dir, tiny_model, monkeypatch):
    import functools

    from core.analysis import cka

    monkeypatch.setattr(cka, "auto_max_dim", functools.partial(cka.auto_max_dim, limit=8, dim=4))  # "large" grid
    app.session_state["cka_timesteps"] = [50]
    app.session_state["cka_blocks"] = ["mid_block", "up_blocks.1"]
    at = app.switch_page("pages/layer_similarity.py").run()
    _clean(at)
    layers, _ = cka.model_layers(ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N),
                                 ["mid_block", "up_blocks.1"], [50], model=tiny_model)
    np.testing.assert_allclose(np.asarray(_charts(at)[0].data[0].z, float), cka.cka_matrix(layers, max_dim=4)[0],
                               rtol=1e-9)
    assert any("4 leading principal components" in c.value for c in at.caption)
    at.toggle(key="cka_exact").set_value(True).run()
    _clean(at)
    np.testing.assert_allclose(np.asarray(_charts(at)[0].data[0].z, float), cka.cka_matrix(layers)[0], rtol=1e-9)
    assert any("--max-dim 0" in c.value for c in at.code)


def test_stability_and_prompt_audit_pages_match_core(app, tiny_sd_dir, tiny_model):
    from core.analysis.prompt_audit import leakage, prompt_audit
    from core.analysis.stability import spread_sentence, stability

    for k, v in {"stab_noise_seeds": 2, "stab_ensembles": [1, 2], "stab_kmeans_seeds": 3,
                 "stab_bootstraps": 2, "stab_difference": 0.0}.items():
        app.session_state[k] = v
    at = app.switch_page("pages/stability.py").run()
    _clean(at)
    cfg = ExtractionConfig(dataset=DATASET, model=str(tiny_sd_dir), max_per_domain=N)
    ref = stability(cfg, "up_blocks.1", noise_seeds=2, ensembles=[1, 2], kmeans_seeds=3, bootstraps=2,
                    model=tiny_model)
    assert {x.label: x.value for x in at.metric}["Paper's single draw"] == f"{ref.reference:.3f}"
    np.testing.assert_allclose(at.dataframe[0].value["std"].to_numpy(float), ref.summary["std"].to_numpy(float))
    assert at.warning[0].value == spread_sentence(ref.summary, 0.0, ref.n_seeds)  # 0 is inside the chance band
    d = ref.draws.set_index(["source", "setting"])["domain_nmi"]
    assert d[("noise seed", 0)] == pytest.approx(d[("ensemble size", 1)])  # the same features
    assert ref.summary["n"].tolist() == [2, 2, 3, 2] and np.isfinite(ref.draws["domain_nmi"]).all()

    app.session_state["audit_blocks"] = ["up_blocks.1"]
    at.switch_page("pages/prompt_audit.py").run()
    _clean(at)
    df = prompt_audit(cfg, ["up_blocks.1"], model=tiny_model)
    assert list(df["condition"]) == ["empty", "class template", "domain template", "wrong class", "shuffled class",
                                     "constant"]
    assert df["prompt"].iloc[2] == "a {domain} of an object" and df["domain_nmi"].nunique() > 1
    shown = at.dataframe[0].value
    assert list(shown["condition"]) == list(df["condition"])
    np.testing.assert_allclose(shown["domain_nmi"].to_numpy(float), df["domain_nmi"].to_numpy(float))
    np.testing.assert_allclose(shown["class_nmi"].to_numpy(float), df["class_nmi"].to_numpy(float))
    assert any("python -m core prompt-audit" in c.value for c in at.code)
    leak = leakage(df)
    assert {x.label: x.value for x in at.metric}["Largest domain leakage"] == f"{leak['domain_leak'].max():+.3f}"
    assert {x.label: x.value for x in at.metric}["Largest class leakage"] == f"{leak['class_leak'].max():+.3f}"


def test_cka_benchmark_produces_rows(tmp_path):
    from bench.suite import Ctx
    from bench.views import bench_cka

    ctx = Ctx(quick=True, work=tmp_path, log=lambda m: None)
    out = bench_cka(ctx, n=40, timesteps=1, sd=False, reps=1)
    assert len(out["rows"]) == 2 and all(r["value"] >= 0 for r in out["rows"])
