"""Faithful layouts, spatial feature maps, Compare's "what moved", image mode and the progress ETA (core side).

The spatial maps run through the backbone seam with a tiny fake backbone (a conv map layer and a token
layer), so the analysis is tested independently of any model family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis import faithfulness as fa
from core.analysis import moved as mv
from core.analysis import spatial as sp
from core.backbones.base import Backbone, Conditioning
from core.engine.cache import FeatureCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------ faithfulness


def test_knn_accuracy_matches_scikit_learn_leave_one_out():
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 40)]
    X[y == "a", 0] += 1.5
    for k in (1, 4):
        ref = cross_val_predict(KNeighborsClassifier(n_neighbors=k), X, y, cv=LeaveOneOut())
        assert fa.knn_accuracy(X, y, k) == pytest.approx(float((ref == y).mean()))


def test_faithfulness_of_a_faithful_and_an_unfaithful_layout(tmp_path):
    from sklearn.manifold import trustworthiness

    rng = np.random.default_rng(1)
    labels = np.repeat(["d0", "d1", "d2"], 30)
    plane = rng.normal(size=(90, 2)) + np.repeat([[0, 0], [6, 0], [0, 6]], 30, axis=0)
    X = np.hstack([plane, np.zeros((90, 8))]).astype(np.float32)  # the data lie in a plane of 10-d space
    good = fa.layout_faithfulness(X, plane * 3 + 1, labels, k=10)  # the same plane, scaled and shifted
    assert good.trustworthiness == pytest.approx(1.0)
    assert good.knn_acc_2d == good.knn_acc_full == pytest.approx(fa.knn_accuracy(X, labels, 10))
    assert good.chance == pytest.approx(1 / 3) and good.n_trust == good.n_images == 90
    bad_layout = rng.normal(size=(90, 2))
    bad = fa.layout_faithfulness(X, bad_layout, labels, k=10)
    assert bad.trustworthiness == pytest.approx(trustworthiness(X, bad_layout, n_neighbors=10))
    assert bad.trustworthiness < 0.75 and bad.knn_acc_2d < good.knn_acc_2d
    # above the cap trustworthiness uses a seeded sample; the k-NN accuracies use every point
    capped = fa.layout_faithfulness(X, bad_layout, labels, k=10, max_trust_points=40)
    assert capped.n_trust == 40 and capped.knn_acc_2d == bad.knn_acc_2d and capped.n_knn == 90
    # above their own cap the k-NN accuracies use a seeded sample too (what a 586k-image set needs)
    knn_capped = fa.layout_faithfulness(X, bad_layout, labels, k=10, max_knn_points=50)
    sub = np.sort(np.random.default_rng(0).choice(90, 50, replace=False))
    assert knn_capped.n_knn == 50 and knn_capped.knn_acc_full == pytest.approx(fa.knn_accuracy(X[sub], labels[sub], 10))
    # a layout fitted on a sample (the others NaN) is judged on the points it placed
    partial = bad_layout.copy()
    partial[::3] = np.nan
    placed = fa.layout_faithfulness(X, partial, labels, k=10)
    keep = np.isfinite(partial[:, 0])
    assert placed.n_images == 60 and placed == fa.layout_faithfulness(X[keep], bad_layout[keep], labels[keep], k=10)
    # cached: the same numbers, read back
    cache = FeatureCache(tmp_path / "c")
    assert fa.cached_faithfulness(X, bad_layout, labels, 10, cache=cache) == bad
    assert fa.cached_faithfulness(X, bad_layout, labels, 10, cache=cache) == bad
    assert len(list((tmp_path / "c" / "faithfulness").rglob("*.npz"))) == 1
    with pytest.raises(ValueError, match="same number of rows"):
        fa.layout_faithfulness(X, bad_layout[:-1], labels)


# ------------------------------------------------------------------------------------ what moved


class _FS:
    """The FeatureSet fields what_moved reads."""

    def __init__(self, ids, X, domains, key):
        self.ids, self.paths = list(ids), [f"/x/{i}.png" for i in ids]
        self.domains, self.classes = list(domains), ["c"] * len(ids)
        self.domain_names = sorted(set(domains))
        self.features, self.cache_key = {"b": X}, key


def test_neighbourhood_change_against_brute_force():
    rng = np.random.default_rng(2)
    Xa = rng.normal(size=(40, 6))
    Xb = Xa + rng.normal(scale=0.8, size=Xa.shape)
    k = 5
    got = mv.neighbourhood_change(Xa, Xb, k)

    def knn(X, i):
        d = ((X - X[i]) ** 2).sum(1)
        d[i] = np.inf
        return set(np.argsort(d)[:k])

    ref = [1 - len(knn(Xa, i) & knn(Xb, i)) / k for i in range(40)]
    np.testing.assert_allclose(got, ref)
    assert (mv.neighbourhood_change(Xa, Xa * 2.0, k) == 0).all()  # scaling keeps every neighbourhood


def test_what_moved_ranks_the_moved_images_and_per_domain_nmi(tmp_path):
    rng = np.random.default_rng(3)
    domains = np.repeat(["art", "photo", "sketch"], 20)
    centres = {"art": 0.0, "photo": 8.0, "sketch": 16.0}
    Xa = np.stack([rng.normal(size=4) + centres[d] for d in domains]).astype(np.float32)
    Xb = Xa.copy()
    Xb[[3, 45]] = Xa[[45, 3]]  # two images swap places in B
    Xb[domains == "sketch"] = rng.normal(size=(20, 4)) + 8.0  # sketches fall onto the photos in B
    ids = [f"im{i:02d}" for i in range(60)]
    cache = FeatureCache(tmp_path / "c")
    fs_a = _FS(ids, Xa, domains, "A")
    fs_b = _FS(ids[::-1], Xb[::-1].copy(), domains[::-1], "B")  # another row order: matched by id
    res = mv.what_moved(fs_a, "b", fs_b, "b", k=5, n_seeds=2, cache=cache)
    assert res.n_common == 60 and res.k == 5
    np.testing.assert_allclose(res.table.set_index("id").loc[ids, "moved"], mv.neighbourhood_change(Xa, Xb, 5))
    assert {"im03"} <= set(res.table["id"][:25]) and res.table["moved"].is_monotonic_decreasing
    assert list(res.table["rank"]) == list(range(1, 61))
    pdn = res.per_domain.set_index("domain")
    assert pdn.loc["art", "A"] == pytest.approx(1.0) and pdn.loc["sketch", "B"] < 0.5
    assert pdn.loc["sketch", "delta"] == pytest.approx(pdn.loc["sketch", "B"] - pdn.loc["sketch", "A"])
    assert pdn.loc["sketch", "mean moved"] > pdn.loc["art", "mean moved"]
    again = mv.what_moved(fs_a, "b", fs_b, "b", k=5, n_seeds=2, cache=cache)  # from the cache
    assert again.table.equals(res.table) and again.per_domain.equals(res.per_domain)
    with pytest.raises(ValueError, match="share 0 images"):
        mv.what_moved(fs_a, "b", _FS(["x", "y", "z"], Xb[:3], domains[:3], "C"), "b")


# ------------------------------------------------------------------------------------ spatial maps


class _Tokens(torch.nn.Module):
    def forward(self, h):  # (B, C, h, w) -> (B, h*w, C), row-major as a ViT's patch tokens
        return h.flatten(2).transpose(1, 2)


class FakeBackbone(Backbone):
    """A two-conv "model" with a map layer ("0", "2") and a token layer ("3")."""

    family = "fake"

    @classmethod
    def detect(cls, folder):
        return False

    @classmethod
    def load(cls, name, folder, device, dtype):
        raise NotImplementedError

    def forward_features(self, x0, image_ids, layers, request, *, early_exit=True, pool_fn=None):
        return self.run_hooked(lambda: self.root(x0), layers, early_exit=early_exit, pool_fn=pool_fn)


def fake_backbone() -> FakeBackbone:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=4, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 5, 3, padding=1), _Tokens()).eval()
    return FakeBackbone(name="fake", identity="fake-v1", device=torch.device("cpu"), dtype=torch.float32,
                        resolution=32, layers=["0", "2", "3"], default_layer="2", root=net,
                        conditioning=Conditioning())


def test_map_pca_matches_a_reference_pca_and_colours_regions_apart():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(4)
    maps = rng.normal(scale=0.1, size=(6, 7, 8, 8)).astype(np.float32)
    maps[:, 2, :, :4] += 3.0  # the left half differs along channel 2: the first component
    pca = sp.fit_map_pca(maps, "L", [f"i{i}" for i in range(6)])
    ref = PCA(3).fit(maps.transpose(0, 2, 3, 1).reshape(-1, 7))
    cos = np.abs((pca.components * ref.components_).sum(1))
    np.testing.assert_allclose(cos, 1.0, atol=1e-4)
    np.testing.assert_allclose(pca.explained, ref.explained_variance_ratio_, rtol=1e-3)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-5)
    rgb = sp.project_rgb(maps, pca)
    assert rgb.shape == (6, 8, 8, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :, :4, 0].astype(int), rgb[:, :, 4:, 0].astype(int)
    assert abs(left.mean() - right.mean()) > 150  # the two regions get far-apart colours
    with pytest.raises(ValueError, match=r"\(B, 7, h, w\)"):
        sp.project_rgb(maps[:, :5], pca)


def test_spatial_view_through_the_backbone_seam(tmp_path):
    from core.data.datasets import load_dataset
    from core.engine.extract import ExtractionConfig, select_images

    bb = fake_backbone()
    cfg = ExtractionConfig(dataset="synthetic-pacs:heldout", model="fake", max_per_domain=4, seed=0)
    ds = load_dataset(cfg.dataset)
    _, records = select_images(cfg, ds)
    cache = FeatureCache(tmp_path / "c")
    chosen = [records[0].id, records[9].id]
    view = sp.spatial_view(bb, cfg, ds, "2", chosen, sample_size=8, cache=cache)
    assert view.rgb.shape == (2, 8, 8, 3) and [r.id for r in view.records] == chosen
    # the basis: the maps of the 8 sample images (2 per domain), straight from the seam
    sample = sp.sample_records(records, 8, 0)
    assert [r.id for r in sample] == list(view.pca.sample_ids) and len({r.domain for r in sample}) == 4
    x0 = torch.stack([bb.preprocess(sp.load_rgb(r.path), 32) for r in sample])
    maps = bb.spatial_maps(x0, [r.id for r in sample], "2", sp._request(cfg, sample)).numpy()
    ref = sp.fit_map_pca(maps)
    np.testing.assert_allclose(view.pca.components, ref.components, atol=1e-4)
    x_chosen = torch.stack([bb.preprocess(sp.load_rgb(r.path), 32) for r in view.records])
    own = bb.spatial_maps(x_chosen, chosen, "2", sp._request(cfg, view.records)).numpy()
    np.testing.assert_array_equal(view.rgb, sp.project_rgb(own, view.pca))
    # cached: the same colours without the model
    again = sp.spatial_view(bb, cfg, ds, "2", chosen, sample_size=8, cache=cache)
    np.testing.assert_array_equal(again.rgb, view.rgb)
    # a token layer (B, N, D) is reshaped to its grid
    tok = sp.spatial_view(bb, cfg, ds, "3", chosen[:1], sample_size=8, cache=cache)
    assert tok.rgb.shape == (1, 8, 8, 3) and tok.pca.map_shape == (8, 8)
    png = sp.grid_png(view, size=32)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown layer"):
        sp.spatial_view(bb, cfg, ds, "nope", chosen, cache=cache)
    with pytest.raises(ValueError, match="not in this configuration"):
        sp.spatial_view(bb, cfg, ds, "2", ["no-such-image"], cache=cache)


# ------------------------------------------------------------------------------------ image mode


def test_image_mode_draws_thumbnails_up_to_the_cap():
    from core import figures

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(50, 2))
    labels = ["a"] * 25 + ["b"] * 25
    rows = figures.image_rows(emb, cap=300)
    assert list(rows) == list(range(50))
    uri = "data:image/png;base64,AAAA"
    fig = figures.scatter(emb, labels, images={int(r): uri for r in rows})
    assert len(fig.layout.images) == 50 and fig.layout.images[0].xref == "x"
    assert {round(im.x, 6) for im in fig.layout.images} == {round(float(x), 6) for x in emb[:, 0]}
    big = rng.normal(size=(5000, 2))
    rows = figures.image_rows(big, cap=100)
    assert 50 <= len(rows) <= 100 and len(set(rows)) == len(rows)  # one per occupied cell of a 10 x 10 grid
    cells = {(int(a), int(b)) for a, b in np.minimum(((big[rows] - big.min(0)) / np.ptp(big, 0) * 10), 9)}
    assert len(cells) == len(rows)  # no two thumbnails from the same region


def test_progress_text_has_the_clis_eta():
    from pages._progress import progress_text

    assert progress_text("Extracting", 40, 120, 5.0) == "Extracting: 40 / 120 images [00:05<00:10,  8.00 images/s]"
    assert progress_text("Extracting", 0, 120, 0.5).startswith("Extracting: 0 / 120 images [00:00<?")


def test_umap_warmup_runs_core_warm_up_in_a_background_thread(monkeypatch):
    import threading

    import core.analysis.reduce as reduce_mod
    from pages._access import _Warmup

    main, seen = threading.get_ident(), []
    release = threading.Event()

    def fake_warm(on_stage):  # stands in for core.analysis.reduce.warm_umap (numba compiles for ~15-40 s)
        seen.append(threading.get_ident())
        on_stage("exact")
        release.wait(5)
        on_stage("approx")
        return 1.5

    monkeypatch.setattr(reduce_mod, "warm_umap", lambda on_stage=None: fake_warm(on_stage))
    w = _Warmup(True)
    assert w.small_done.wait(5) and not w.done.is_set()  # small layouts may go; the caller was not blocked
    release.set()
    assert w.done.wait(5) and w.seconds == 1.5 and w.error is None and seen and seen[0] != main
    off = _Warmup(False)
    assert off.done.is_set() and off.small_done.is_set() and not off.enabled


_UMAP_CACHE_PROBE = """
import json, sys
import numpy as np
from core.analysis.reduce import ReductionConfig, reduce
import umap.layouts, umap.umap_, umap.utils
X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
reduce(X, ReductionConfig(method="umap", random_state=0, n_neighbors=5))  # the exact path (< 4096 points)
fns = {"fast_knn_indices": umap.utils.fast_knn_indices, "smooth_knn_dist": umap.umap_.smooth_knn_dist,
       "compute_membership_strengths": umap.umap_.compute_membership_strengths,
       "layout_epoch": umap.layouts._nb_optimize_layout_euclidean_single_epoch}
print(json.dumps({k: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values()), len(f.signatures)]
                  for k, f in fns.items()}))
"""


def test_umap_functions_compile_once_then_load_from_the_numba_disk_cache(tmp_path):
    """umap declares no ``cache=True`` on the functions a fit compiles (~30 s of every fresh server's first UMAP
    here); ``reduce.import_umap`` gives them numba's disk cache, so a second process loads them instead."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}  # NUMBA_CACHE_DIR: the suite's (conftest), kept across sessions
    runs = []
    for _ in range(2):  # the first may compile (a cold cache folder) and writes; the second only loads
        r = subprocess.run([sys.executable, "-c", _UMAP_CACHE_PROBE], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    for name, (hits, misses, compiled) in runs[1].items():
        assert hits >= 1 and misses == 0 and compiled >= 1, (name, runs)


# ------------------------------------------------------------------------------------- the pages


from tests.test_app import N_PER_DOMAIN, assert_clean, charts, core_explore, tiny_app  # noqa: E402,F401


def _expected_faithfulness(res, block="up_blocks.1"):
    f = fa.cached_faithfulness(res.features.features[block], res.embedding, res.features.domains, random_state=0)
    return {"Layout trustworthiness": f"{f.trustworthiness:.3f}", "k-NN domain accuracy, 2-D": f"{f.knn_acc_2d:.1%}"}


def test_explore_faithfulness_image_mode_and_spatial_maps(tiny_app, tiny_sd_dir):
    from core.backbones.registry import load_backbone
    from core.data.datasets import load_dataset

    at = tiny_app.run()
    assert_clean(at)
    ref = core_explore(str(tiny_sd_dir))
    shown = {m.label: m.value for m in at.metric}
    assert {k: shown[k] for k in _expected_faithfulness(ref)} == _expected_faithfulness(ref)
    # image mode: one thumbnail per point (40 <= the cap), placed at the points
    at.toggle(key="image_mode").set_value(True).run()
    assert_clean(at)
    fig = charts(at)[0]
    assert len(fig.layout.images) == 4 * N_PER_DOMAIN
    assert sorted(round(im.x, 4) for im in fig.layout.images) == sorted(round(float(x), 4) for x in ref.embedding[:, 0])
    assert all(im.source.startswith("data:image/png;base64,") for im in fig.layout.images)
    # a click (the chart's selection state): the block's spatial map beside the image, coloured by core's PCA
    fs = ref.features
    at.session_state["scatter"] = {"selection": {"points": [{"customdata": [3]}], "point_indices": [3], "box": [],
                                                 "lasso": []}}
    at.run()
    assert_clean(at)
    bb = load_backbone(str(tiny_sd_dir))
    view = sp.spatial_view(bb, fs.config, load_dataset(fs.config.dataset), "up_blocks.1", [fs.ids[3]])
    ev = ", ".join(f"{v:.0%}" for v in view.pca.explained)
    assert any(f"over {len(view.pca.sample_ids)} images" in c.value and f"(variance {ev})" in c.value
               for c in at.main.caption)
    captions = [im.proto.imgs[0].caption for im in at.image if im.proto.imgs]
    assert f"up_blocks.1 map {view.rgb.shape[2]}×{view.rgb.shape[1]}" in captions
    assert "spatial maps (PNG)" in [b.label for b in at.get("download_button")]
    # a box/lasso selection of 4 images: a grid of 4 maps
    at.session_state["scatter"] = {"selection": {"points": [{"customdata": [i]} for i in (1, 5, 9, 20)],
                                                 "point_indices": [], "box": [], "lasso": []}}
    at.run()
    assert_clean(at)
    captions = [im.proto.imgs[0].caption for im in at.image if im.proto.imgs]
    assert sum(c.startswith("up_blocks.1 map") for c in captions) == 4


def test_compare_shows_what_moved_from_core(tiny_app, tiny_sd_dir):
    at = tiny_app.run()
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    ra, rb = core_explore(str(tiny_sd_dir)), core_explore("pixels", block="pixels")
    labels = [m.label for m in at.metric]
    assert labels.count("Layout trustworthiness") == 2
    values = [m.value for m in at.metric if m.label == "Layout trustworthiness"]
    assert values == [_expected_faithfulness(ra)["Layout trustworthiness"],
                      _expected_faithfulness(rb, "pixels")["Layout trustworthiness"]]
    ref = mv.what_moved(ra.features, "up_blocks.1", rb.features, "pixels", k=10)
    table, per_domain = at.dataframe[1].value, at.dataframe[2].value
    assert list(table["id"]) == list(ref.table["id"][:len(table)]) and len(table) == min(50, ref.n_common)
    np.testing.assert_allclose(table["moved"].to_numpy(float), ref.table["moved"][:len(table)].to_numpy(float))
    assert table["image"].str.startswith("data:image/png;base64,").all()
    np.testing.assert_allclose(per_domain["delta"].to_numpy(float), ref.per_domain["delta"].to_numpy(float))
    assert list(per_domain["domain"]) == ["cartoon", "painting", "photo", "sketch"]
    at.slider(key="cmp_moved_k").set_value(5).run()
    assert_clean(at)
    ref5 = mv.what_moved(ra.features, "up_blocks.1", rb.features, "pixels", k=5)
    np.testing.assert_allclose(at.dataframe[1].value["moved"].to_numpy(float),
                               ref5.table["moved"][:50].to_numpy(float))
    assert {"what moved (CSV)", "per-domain NMI (CSV)"} <= {b.label for b in at.get("download_button")}


# --------------------------------------------------------------------------------------------------- CLI


def test_cli_faithfulness_spatial_and_what_moved_write_what_core_returns(tiny_sd_dir, tmp_path):
    """`python -m core faithfulness|spatial|what-moved`: CSV / PNG / config.json with core's numbers (the
    reference is computed by core in a separate cache folder, so no number is only read back from the CLI's)."""
    import json

    import pandas as pd
    from PIL import Image

    from core.analysis.explore import explore_view
    from core.analysis.reduce import ReductionConfig
    from core.backbones.registry import load_backbone
    from core.cli import main
    from core.data.datasets import load_dataset
    from core.engine.extract import ExtractionConfig, select_images

    model, ref = str(tiny_sd_dir), FeatureCache(tmp_path / "ref")
    common = ["--model", model, "--max-per-domain", "6", "--no-progress"]
    cfg = ExtractionConfig(model=model, timestep=50, max_per_domain=6)
    bb = load_backbone(model)
    # faithfulness of a PCA layout of up_blocks.1
    out = tmp_path / "faith"
    assert main(["faithfulness", *common, "--block", "up_blocks.1", "--k", "5", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"faithfulness.csv", "layout.csv", "layout.html", "config.json"}
    res = explore_view(cfg, "up_blocks.1", ReductionConfig(random_state=0), model=bb, cache_dir=str(ref.root))
    f = fa.cached_faithfulness(res.features.features["up_blocks.1"], res.embedding, res.features.domains, k=5,
                               cache=ref)
    row = pd.read_csv(out / "faithfulness.csv").iloc[0]
    for name in ("trustworthiness", "knn_acc_2d", "knn_acc_full", "chance"):
        assert row[name] == pytest.approx(getattr(f, name), abs=1e-6), name
    assert (row["k"], row["n_images"]) == (5, 24)
    layout = pd.read_csv(out / "layout.csv")
    assert list(layout["id"]) == res.features.ids
    np.testing.assert_allclose(layout[["x", "y"]].to_numpy(), res.embedding, atol=1e-5)
    spec = json.loads((out / "config.json").read_text())
    assert spec["reduction"]["method"] == "pca" and "--k 5" in spec["cli"] and "--block up_blocks.1" in spec["cli"]
    # spatial maps of the first 3 images: image | map PNGs, the grid, the raw colours
    out = tmp_path / "spatial"
    assert main(["spatial", *common, "--block", "up_blocks.1", "--first", "3", "--sample-size", "8",
                 "--size", "32", "--out", str(out)]) == 0
    ids = [r.id for r in sp.spread_first(select_images(cfg)[1], 3)]
    assert len({i.split("/")[0] for i in ids}) == 3  # --first takes each domain in turn, not one domain's first
    view = sp.spatial_view(bb, cfg, load_dataset(cfg.dataset), "up_blocks.1", ids, sample_size=8, cache=ref)
    saved = np.load(out / "maps.npz")
    assert list(saved["ids"]) == ids
    np.testing.assert_array_equal(saved["rgb"], view.rgb)
    images = pd.read_csv(out / "images.csv")
    assert list(images["id"]) == ids and len(list((out / "maps").iterdir())) == 3
    pair = Image.open(out / images["file"][0])
    assert pair.size == (2 * 32 + 3 * 6, 32 + 2 * 6)  # the image, then its map (spatial.grid_png's layout)
    shown = np.asarray(pair.convert("RGB"))[6:38, 6 + 32 + 6:6 + 32 + 6 + 32]
    np.testing.assert_array_equal(shown, np.asarray(sp.map_image(view.rgb[0], 32).resize((32, 32), Image.NEAREST)))
    assert Image.open(out / "spatial_maps.png").size[0] == 3 * (2 * 32 + 3 * 6)
    colours = pd.read_csv(out / "colours.csv")
    np.testing.assert_allclose(colours["explained"], view.pca.explained, rtol=1e-5)
    spec = json.loads((out / "config.json").read_text())
    assert spec["images"] == ids and "--first 3" in spec["cli"]
    # what moved from the tiny model's up_blocks.1 to its mid_block at t = 500
    out = tmp_path / "moved"
    assert main(["what-moved", *common, "--block", "up_blocks.1", "--block-b", "mid_block", "--timestep-b", "500",
                 "--k", "4", "--out", str(out)]) == 0
    rb = explore_view(ExtractionConfig(model=model, timestep=500, max_per_domain=6), "mid_block",
                      ReductionConfig(random_state=0), model=bb, cache_dir=str(ref.root))
    want = mv.what_moved(res.features, "up_blocks.1", rb.features, "mid_block", k=4, cache=ref)
    table = pd.read_csv(out / "what_moved.csv")
    assert list(table["id"]) == list(want.table["id"]) and list(table["rank"]) == list(range(1, 25))
    np.testing.assert_allclose(table["moved"], want.table["moved"], atol=1e-6)
    per_domain = pd.read_csv(out / "per_domain_nmi.csv")
    assert list(per_domain["domain"]) == list(want.per_domain["domain"])
    np.testing.assert_allclose(per_domain[["A", "B", "delta"]], want.per_domain[["A", "B", "delta"]], atol=1e-6)
    spec = json.loads((out / "config.json").read_text())
    assert spec["B"]["extraction"]["timestep"] == 500 and spec["B"]["block"] == "mid_block" and spec["k"] == 4
    assert "--timestep-b 500" in spec["cli"] and {"what_moved.csv", "scores.csv"} <= {p.name for p in out.iterdir()}
    # each config.json's command reproduces the same files
    import shlex

    for name, csv in (("faith", "faithfulness.csv"), ("spatial", "images.csv"), ("moved", "what_moved.csv")):
        before = (tmp_path / name / csv).read_text()
        cmd = shlex.split(json.loads((tmp_path / name / "config.json").read_text())["cli"])
        assert cmd[:3] == ["python", "-m", "core"] and main([*cmd[3:], "--no-progress"]) == 0
        assert (tmp_path / name / csv).read_text() == before, name


def test_spread_first_takes_domains_and_classes_in_turn():
    from core.data.datasets import ImageRecord

    recs = [ImageRecord(f"{d}/{c}/{i}.png", f"{d}/{c}/{i}.png", d, c) for d in "abcd" for c in "uvwxyz" for i in range(3)]
    first = sp.spread_first(recs, 8)
    assert [r.domain for r in first] == list("abcdabcd")
    assert all(first[i].cls != first[i + 4].cls for i in range(4))  # a domain's second image is another class
    assert sp.spread_first(recs, 500) and len(sp.spread_first(recs, 500)) == len(recs)
    assert sp.spread_first([], 3) == []
