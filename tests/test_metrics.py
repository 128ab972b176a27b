"""Tests for the scores (core/metrics.py) and the 2-D layouts (core/reduce.py) on synthetic blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

import core.analysis.reduce
from core.engine.cache import FeatureCache
from core.analysis.metrics import Scores, kmeans_labels, nmi, probe_accuracy, score_features, silhouette
from core.analysis.reduce import ReductionConfig, cached_reduce, reduce


def blobs(n_per=50, k=4, dim=64, spread=10.0, seed=0):
    """``k`` well-separated Gaussian clusters in ``dim`` dimensions: (X (n, dim) float32, labels (n,))."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(k, dim))
    y = np.repeat(np.arange(k), n_per)
    X = centers[y] + rng.normal(size=(len(y), dim))
    return X.astype(np.float32), y


def shuffled(y, seed=1):
    return np.random.default_rng(seed).permutation(y)


# ------------------------------------------------------------------------------------------- NMI


def test_nmi_is_one_on_separated_blobs():
    X, y = blobs()
    mean, std = nmi(X, y, n_seeds=3)
    assert mean == pytest.approx(1.0, abs=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)
    # cluster ids are arbitrary: relabelled domains score the same
    assert nmi(X, (y + 1) % 4, n_seeds=2)[0] == pytest.approx(1.0, abs=1e-6)


def test_nmi_is_near_zero_on_shuffled_labels():
    X, y = blobs(n_per=100)
    mean, std = nmi(X, shuffled(y), n_seeds=3)
    assert 0.0 <= mean < 0.05
    assert std >= 0.0


def test_nmi_reports_mean_and_std_over_kmeans_seeds():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 8)).astype(np.float32)  # no structure: k-means seeds disagree
    y = np.repeat(np.arange(4), 30)
    per_seed = [normalized_mutual_info_score(y, kmeans_labels(X, 4, s)[0]) for s in range(5)]
    mean, std = nmi(X, y, n_seeds=5)
    assert mean == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert std == pytest.approx(np.std(per_seed), abs=1e-12)
    assert std > 0  # the spread is really reported
    assert nmi(X, y, n_seeds=1)[1] == 0.0
    assert nmi(X, y, n_seeds=5) == (mean, std)  # seeded: repeatable


def test_nmi_uses_k_equal_to_number_of_labels():
    X, y4 = blobs(n_per=30, k=4)
    y2 = y4 // 2  # two labels, each made of two blobs
    # K = 2 clusters for 2 labels: k-means merges blob pairs; perfect NMI is possible but not forced,
    # while K = 4 (the blob count) with 2 labels could never reach 1.0
    clusters, centers = kmeans_labels(X, 2, 0)
    assert centers.shape == (2, 64) and set(clusters) == {0, 1}
    assert nmi(X, y2, n_seeds=1)[0] == pytest.approx(normalized_mutual_info_score(y2, clusters))


def test_nmi_single_label_is_zero():
    X, _ = blobs(n_per=5)
    assert nmi(X, np.zeros(len(X), dtype=int)) == (0.0, 0.0)


# ------------------------------------------------------------------------------------------ probe


def test_probe_accuracy_separated_and_random():
    X, y = blobs(n_per=40)
    assert probe_accuracy(X, y) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(400, 16)).astype(np.float32)
    acc = probe_accuracy(noise, np.repeat(np.arange(4), 100))
    assert 0.12 < acc < 0.40  # chance is 0.25
    assert probe_accuracy(X, y) == probe_accuracy(X, y)  # seeded folds


def test_probe_accuracy_too_few_samples_is_nan():
    X, y = blobs(n_per=1)
    assert np.isnan(probe_accuracy(X, y))


# ------------------------------------------------------------------------------------- silhouette


def test_silhouette_sign():
    X, y = blobs(n_per=40)
    assert silhouette(X, y) > 0.5
    assert abs(silhouette(X, shuffled(y))) < 0.1
    # three tight pairs, each label holding one point of every pair: a point's nearest neighbour
    # always carries the other label, so the silhouette is negative (about -1/3)
    X2, _ = blobs(n_per=2, k=3)
    assert silhouette(X2, np.array([0, 1, 0, 1, 0, 1])) < -0.2
    assert np.isnan(silhouette(X, np.zeros(len(X), dtype=int)))


# ------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize("fn", [nmi, probe_accuracy, silhouette])
def test_bad_input_raises(fn):
    X, y = blobs(n_per=10)
    with pytest.raises(ValueError, match=r"features must be 2-D \(n_samples, n_features\), got shape \(40,\)"):
        fn(X[:, 0], y)
    with pytest.raises(ValueError, match=r"must be 2-D"):
        fn(X[None], y)
    with pytest.raises(ValueError, match="40 feature rows but 39 labels"):
        fn(X, y[:-1])
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="features contain NaN or inf"):
        fn(bad, y)
    bad[3, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(bad, y)


def test_kmeans_cluster_count_checked():
    X, _ = blobs(n_per=2)
    with pytest.raises(ValueError, match=r"n_clusters must be in \[1, 8\], got 9"):
        kmeans_labels(X, 9)
    with pytest.raises(ValueError, match=r"n_clusters must be in \[1, 8\], got 0"):
        kmeans_labels(X, 0)


def test_score_features_bundles_everything():
    X, dom = blobs(n_per=30)
    cls = shuffled(dom)  # classes unrelated to the feature structure
    s = score_features(X, dom, cls, n_seeds=2)
    assert isinstance(s, Scores)
    assert s.domain_nmi == pytest.approx(1.0, abs=1e-6) and s.class_nmi < 0.1
    assert s.domain_probe_acc == pytest.approx(1.0) and s.domain_silhouette > 0.5
    assert s.n_images == 120
    assert set(s.to_dict()) == {"domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std",
                                "domain_probe_acc", "domain_silhouette", "n_images", "kmeans_fit_points",
                                "probe_points"} | {f"{w}_{m}{x}" for w in ("domain", "class") for m, x in
                                                   [("ami", ""), ("ami", "_std"), ("nmi", "_chance"),
                                                    ("nmi", "_chance_std"), ("nmi", "_lo"), ("nmi", "_hi"),
                                                    ("ami", "_lo"), ("ami", "_hi")]} | {"n_seeds", "n_init", "n_boot"}
    assert s.kmeans_fit_points == 120 and s.probe_points == 120  # all points (no sample at this size)
    assert s.n_init == 1 and s.n_seeds == 2 and s.domain_ami > 0.95 and abs(s.class_ami) < 0.05
    assert s.domain_nmi_lo <= s.domain_nmi <= s.domain_nmi_hi
    assert not s.domain_within_chance and s.class_within_chance  # classes unrelated to the features: chance
    assert Scores.from_dict({k: np.array(v) for k, v in s.to_dict().items()}) == s  # the score cache's round trip
    assert np.isnan(score_features(X, dom, cls, n_seeds=1, probe=False).domain_probe_acc)


# -------------------------------------------------------------------------------------- reductions


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_pca_and_tsne_shapes_and_determinism(method, monkeypatch):
    # openTSNE starts n_jobs threads per gradient step; on a loaded 2-core machine n_jobs=2 makes a
    # 60-point t-SNE take 4-30 s instead of 0.4 s. One thread keeps this test fast.
    monkeypatch.setattr(core.analysis.reduce.os, "cpu_count", lambda: 1)
    X, y = blobs(n_per=15)
    cfg = ReductionConfig(method=method, random_state=0)
    a = reduce(X, cfg)
    b = reduce(X, cfg)
    assert a.shape == (60, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    if method == "pca":  # (t-SNE in 3-D takes several seconds here; the dimension check is shared code)
        assert reduce(X, ReductionConfig(method="pca", n_components=3)).shape == (60, 3)


def test_umap_shape_and_determinism():
    """One UMAP test only: its first call compiles with numba (tens of seconds)."""
    X, y = blobs(n_per=15)
    cfg = ReductionConfig(method="umap", random_state=0, n_neighbors=10)
    a = reduce(X, cfg)
    b = reduce(X, cfg)
    assert a.shape == (60, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_pca_of_few_features_is_padded():
    X = np.random.default_rng(0).normal(size=(10, 1)).astype(np.float32)
    out = reduce(X, ReductionConfig(method="pca"))
    assert out.shape == (10, 2)


def test_cached_reduce_hit_skips_recompute(monkeypatch, tmp_path):
    calls = []
    real = core.analysis.reduce.reduce
    monkeypatch.setattr(core.analysis.reduce, "reduce", lambda X, c: calls.append(c.method) or real(X, c))
    cache = FeatureCache(tmp_path)
    X, _ = blobs(n_per=15)
    cfg = ReductionConfig(method="pca")
    first = cached_reduce(X, cfg, cache)
    second = cached_reduce(X, cfg, cache)
    assert calls == ["pca"]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, real(X, cfg))
    # other parameters or other features: computed again
    cached_reduce(X, ReductionConfig(method="pca", random_state=1), cache)
    cached_reduce(X + 1.0, cfg, cache)
    assert len(calls) == 3
    # the default cache is DOMAINLENS_CACHE_DIR (per test here)
    cached_reduce(X, cfg)
    cached_reduce(X, cfg)
    assert len(calls) == 4


def test_reduction_config_errors():
    with pytest.raises(ValueError, match="reduction method must be one of"):
        ReductionConfig(method="isomap")
    with pytest.raises(ValueError, match="n_components must be 2 or 3, got 4"):
        ReductionConfig(n_components=4)


def test_tsne_theta_is_passed_to_opentsne_and_keys_the_cache(monkeypatch):
    import openTSNE

    seen = []
    real = openTSNE.TSNE

    class Spy(real):
        def __init__(self, *a, **kw):
            seen.append(kw.get("theta"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(openTSNE, "TSNE", Spy)
    monkeypatch.setattr(core.analysis.reduce.os, "cpu_count", lambda: 1)
    X, _ = blobs(n_per=10)
    reduce(X, ReductionConfig(method="tsne"))
    reduce(X, ReductionConfig(method="tsne", theta=0.3))
    assert seen == [0.7, 0.3]
    assert ReductionConfig(method="tsne").params()["theta"] == 0.7
    assert ReductionConfig(method="tsne", theta=0.5).params() != ReductionConfig(method="tsne").params()
    assert "theta" not in ReductionConfig(method="umap").params()
    with pytest.raises(ValueError, match="theta"):
        ReductionConfig(method="tsne", theta=1.5)


def test_umap_starts_from_pca_above_the_spectral_limit(monkeypatch):
    """Spectral initialisation up to UMAP_SPECTRAL_MAX points, PCA above (spectral is slow on large,
    disconnected k-NN graphs); the rule is part of the layout's cache key."""
    from core.analysis import reduce as R

    umap = R.import_umap()
    real, seen = umap.UMAP, []
    monkeypatch.setattr(umap, "UMAP", lambda *a, **k: seen.append(k["init"]) or real(*a, **k))
    monkeypatch.setattr(R, "UMAP_SPECTRAL_MAX", 40)
    X = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    cfg = R.ReductionConfig("umap", n_neighbors=5)
    assert np.isfinite(R.reduce(X[:30], cfg)).all() and np.isfinite(R.reduce(X, cfg)).all()
    assert seen == ["spectral", "pca"] and "init" in cfg.params()
