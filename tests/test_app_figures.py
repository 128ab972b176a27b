"""core/figures/: figure builders and their numeric helpers (no streamlit, no model)."""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from core import figures


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def test_figures_do_not_import_streamlit():
    code = "import sys, core.figures; assert 'streamlit' not in sys.modules, 'core imported streamlit'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scatter_one_trace_per_category_and_row_indices_in_customdata():
    emb = np.arange(20, dtype=float).reshape(10, 2)
    labels = ["b", "a"] * 5
    fig = figures.scatter(emb, labels, hover=[f"img{i}" for i in range(10)], categories=["a", "b", "c"])
    assert [t.name for t in fig.data] == ["a", "b"]  # empty category "c" dropped, order kept
    assert figures.scatter_points(fig) == 10
    assert fig.data[0].type == "scatter"
    rows = np.concatenate([np.asarray(t.customdata)[:, 0] for t in fig.data])
    assert sorted(rows.tolist()) == list(range(10))
    # every point keeps its coordinates and hover text through the row index
    for t in fig.data:
        for x, cd, h in zip(t.x, t.customdata, t.hovertext):
            assert x == emb[cd[0], 0] and h == f"img{cd[0]}"


def test_scatter_switches_to_webgl_above_threshold():
    n = figures.WEBGL_ABOVE + 1
    fig = figures.scatter(np.random.default_rng(0).normal(size=(n, 2)), ["x"] * n)
    assert fig.data[0].type == "scattergl"
    assert figures.scatter(np.zeros((5, 2)), ["x"] * 5, webgl=True).data[0].type == "scattergl"


def test_scatter_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="3 points but 2 labels"):
        figures.scatter(np.zeros((3, 2)), ["a", "b"])
    with pytest.raises(ValueError, match=r"embedding must be \(n_samples, 2\)"):
        figures.scatter(np.zeros(3), ["a", "b", "c"])


def test_procrustes_recovers_a_similarity_transform():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(40, 2))
    B = A @ _rotation(1.1) * 2.5 + np.array([3.0, -7.0])
    aligned, disparity = figures.procrustes_align(A, B)
    np.testing.assert_allclose(aligned, A, atol=1e-9)
    assert disparity < 1e-9
    # a reflection is undone too (orthogonal, not only rotations)
    aligned, _ = figures.procrustes_align(A, A * np.array([-1.0, 1.0]))
    np.testing.assert_allclose(aligned, A, atol=1e-9)


def test_procrustes_of_unrelated_layouts_has_high_disparity_and_keeps_the_spread():
    from scipy.spatial import procrustes

    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) * 7
    aligned, disparity = figures.procrustes_align(A, B)
    assert 0.95 < disparity <= 1.0
    assert disparity == pytest.approx(procrustes(A, B)[2])
    # not shrunk to a dot: the aligned layout has the reference's spread
    assert np.linalg.norm(aligned - aligned.mean(0)) == pytest.approx(np.linalg.norm(A - A.mean(0)))


def test_align_by_ids_fits_on_common_ids_and_moves_every_row():
    rng = np.random.default_rng(2)
    ids = [f"i{k}" for k in range(30)]
    A = rng.normal(size=(30, 2))
    B = A @ _rotation(-0.4) * 0.3 + 1.0
    # B lists its images in another order and holds one image A lacks
    order = rng.permutation(30)
    b_ids = [ids[k] for k in order] + ["extra"]
    B_rows = np.vstack([B[order], [[5.0, 5.0]]])
    aligned, disparity = figures.align_by_ids(ids, A, b_ids, B_rows)
    assert aligned.shape == (31, 2)
    np.testing.assert_allclose(aligned[:30], A[order], atol=1e-9)
    assert disparity < 1e-9
    with pytest.raises(ValueError, match="share 0 images"):
        figures.align_by_ids(ids, A, ["x", "y", "z"], np.zeros((3, 2)))


def test_align_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same"):
        figures.procrustes_align(np.zeros((3, 2)), np.zeros((4, 2)))


def test_pseudo_domains_tables_exemplars_and_exports():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [20, 0], [0, 20]], dtype=float)
    domains = np.repeat(["d0", "d1", "d2"], 10)
    X = centers[np.repeat([0, 1, 2], 10)] + rng.normal(scale=0.5, size=(30, 2))
    classes = ["c0", "c1"] * 15
    pdm = figures.pseudo_domains(X, 3, domains, classes, random_state=0, n_exemplars=4,
                                 domain_names=["d0", "d1", "d2", "unused"])
    assert pdm.domain_nmi == pytest.approx(1.0)
    assert pdm.class_nmi == pytest.approx(0.0, abs=1e-9)
    assert list(pdm.by_domain.columns) == ["d0", "d1", "d2", "unused"]
    assert pdm.by_domain.to_numpy().sum() == 30 and (pdm.by_domain["unused"] == 0).all()
    assert sorted(pdm.by_domain.to_numpy().max(axis=1).tolist()) == [10, 10, 10]  # pure clusters
    for c, ex in enumerate(pdm.exemplars):
        assert len(ex) == 4 and (pdm.labels[ex] == c).all()
        d = ((X[pdm.labels == c] - pdm.centroids[c]) ** 2).sum(1)
        assert ((X[ex[0]] - pdm.centroids[c]) ** 2).sum() == pytest.approx(d.min())  # nearest first
    summary = pdm.summary()
    assert summary["images"].tolist() == [10, 10, 10] and (summary["domain share"] == 1.0).all()
    table = pdm.assignments([f"i{k}" for k in range(30)], [f"/p/{k}" for k in range(30)], domains, classes)
    assert list(table.columns) == ["id", "path", "domain", "class", "cluster"] and len(table) == 30
    cf = figures.centroid_frame(pdm.centroids)
    assert cf.shape == (3, 3) and cf["cluster"].tolist() == [0, 1, 2]


def _sweep_frame(timesteps=(10, 50)) -> pd.DataFrame:
    rows = []
    for i, b in enumerate(["down_blocks.0", "mid_block", "up_blocks.1"]):
        for t in timesteps:
            rows.append({"block": b, "timestep": t, "prompt": "", "domain_nmi": 0.1 * i + t / 1000,
                         "domain_nmi_std": 0.01, "class_nmi": 0.05, "class_nmi_std": 0.0})
    df = pd.DataFrame(rows)
    df["timestep"] = df["timestep"].astype("Int64")
    return df


def test_heatmap_orders_blocks_and_outlines_the_best_cell():
    df = _sweep_frame()
    best = df.loc[df["domain_nmi"].idxmax()]
    order = ["down_blocks.0", "mid_block", "up_blocks.1"]
    fig = figures.heatmap(df, "domain_nmi", block_order=order, best=best)
    hm = fig.data[0]
    assert list(hm.y) == order and list(hm.x) == ["10", "50"]
    assert np.asarray(hm.z)[2, 1] == pytest.approx(0.25)
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.y0) == (0.5, 1.5)  # column "50", row "up_blocks.1"


def test_heatmap_labels_show_a_narrow_range():
    """Class NMI between 0.011 and 0.024 must not read 0.01 / 0.02 in every cell."""
    df = _sweep_frame()
    df["class_nmi"] = np.linspace(0.011, 0.024, len(df))
    labels = [x for row in figures.heatmap(df, "class_nmi").data[0].text for x in row]
    assert len(set(labels)) == len(df) and "0.011" in labels and "0.024" in labels
    assert {len(x) for x in [x for row in figures.heatmap(df, "domain_nmi").data[0].text for x in row]} == {4}  # 0.25


def test_heatmap_of_a_baseline_has_one_na_column():
    df = _sweep_frame(timesteps=(10,))
    df["timestep"] = pd.array([pd.NA] * len(df), dtype="Int64")
    assert list(figures.heatmap(df).data[0].x) == ["n/a"]


def test_nmi_curves_one_line_per_block_plus_best():
    df = _sweep_frame()
    fig = figures.nmi_curves(df, best=df.loc[df["domain_nmi"].idxmax()], block_order=["up_blocks.1", "mid_block",
                                                                                       "down_blocks.0"])
    assert [t.name for t in fig.data] == ["up_blocks.1", "mid_block", "down_blocks.0", "best"]
    assert list(fig.data[0].x) == [10, 50]


def test_confusion_heatmap_counts_and_row_shares():
    t = pd.DataFrame([[3, 1], [0, 0]], index=["cluster 0", "cluster 1"], columns=["a", "b"])
    fig = figures.confusion_heatmap(t)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), [[0.75, 0.25], [0, 0]])
    assert fig.data[0].text[0] == ("3", "1") or list(fig.data[0].text[0]) == ["3", "1"]


def test_score_table_and_shared_ranges():
    from core.analysis.metrics import Scores

    a = Scores(0.5, 0.01, 0.2, 0.01, 0.9, 0.1, 10)
    b = Scores(0.7, 0.01, 0.1, 0.01, 0.8, 0.3, 10)
    t = figures.score_table(a, b)
    assert t.set_index("score").loc["domain NMI", "delta"] == pytest.approx(0.2)
    assert t.set_index("score").loc["class NMI", "delta"] == pytest.approx(-0.1)
    xr, yr = figures.shared_ranges(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[2.0, -1.0]]), pad=0.0)
    assert xr == [0.0, 2.0] and yr == [-1.0, 1.0]


def test_thumbnail_is_a_small_png_data_uri(tmp_path):
    from PIL import Image

    p = tmp_path / "im.png"
    Image.new("RGB", (64, 40), (200, 10, 10)).save(p)
    uri = figures.thumbnail_data_uri(str(p), size=96)
    assert uri.startswith("data:image/png;base64,")
    im = Image.open(__import__("io").BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert max(im.size) == 96 and im.getpixel((5, 5))[:3] == (200, 10, 10)


def test_html_export_is_self_contained():
    html = figures.figure_html(figures.scatter(np.zeros((3, 2)), ["a", "b", "c"]))
    assert "<html>" in html and 'src="https://cdn.plot.ly' not in html  # plotly.js inlined: works offline
    assert len(html) > 1_000_000
