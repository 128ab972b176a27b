"""Scores with chance correction and intervals through the cache, Compare's paired comparison, sweep ranking."""

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from core.analysis.explore import compare_settings
from core.analysis.sweep import cached_kmeans, cached_scores, tied_with_best
from core.engine.cache import FeatureCache
from core.engine.extract import ExtractionConfig, FeatureSet


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


def feature_set(X: np.ndarray, domains: list[str], key: str, ids=None) -> FeatureSet:
    n = len(X)
    ids = ids or [f"img{i:04d}" for i in range(n)]
    return FeatureSet(ids=ids, paths=[f"/x/{i}.png" for i in ids], domains=domains,
                      classes=[f"c{i % 3}" for i in range(n)], domain_names=sorted(set(domains)),
                      class_names=["c0", "c1", "c2"], features={"b": X.astype(np.float32)}, skipped=[],
                      config=ExtractionConfig(dataset="synthetic", model="m"), cache_key=key)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    n = 240
    dom = np.arange(n) % 4
    centers = rng.normal(0, 1, (4, 16)) * 4
    clear = centers[dom] + rng.normal(0, 1, (n, 16))
    blurred = centers[dom] * 0.25 + rng.normal(0, 1, (n, 16))
    names = [f"d{d}" for d in dom]
    return feature_set(clear, names, "clear"), feature_set(blurred, names, "blurred")


def test_compare_settings_pairs_images_and_gives_a_verdict_only_when_clear(pair, tmp_path):
    a, b = pair
    cache = FeatureCache(tmp_path)
    same = compare_settings(a, "b", a, "b", n_boot=100, cache=cache)
    assert same.nmi.estimate == 0 and not same.nmi.excludes_zero and same.verdict().startswith("No difference")
    worse = compare_settings(a, "b", b, "b", n_boot=100, cache=cache)  # B - A: B is the blurred one
    assert worse.nmi.hi < 0 and worse.nmi.excludes_zero and worse.n_common == len(a)
    assert worse.verdict().startswith("A separates the domains better than B")
    sa, sb = cached_scores(a, "b", probe=False, cache=cache), cached_scores(b, "b", probe=False, cache=cache)
    assert worse.nmi.estimate == pytest.approx(sb.domain_nmi - sa.domain_nmi)  # the clusters behind the scores
    assert set(worse.to_frame()["excludes_0"]) == {True}
    # rows are matched by image id: B in another order is still paired image by image
    order = np.random.default_rng(1).permutation(len(b))
    b2 = feature_set(b.features["b"][order], [b.domains[i] for i in order], "blurred-shuffled",
                     ids=[b.ids[i] for i in order])
    again = compare_settings(a, "b", b2, "b", n_boot=100, cache=cache)
    sb2 = cached_scores(b2, "b", probe=False, cache=cache)
    assert again.nmi.estimate == pytest.approx(sb2.domain_nmi - sa.domain_nmi) and again.nmi.hi < 0
    with pytest.raises(ValueError, match="different domains"):
        compare_settings(a, "b", feature_set(b.features["b"], list(reversed(b.domains)), "x"), "b", cache=cache)


def test_cached_scores_carry_ami_chance_and_intervals(pair, tmp_path):
    a, _ = pair
    cache = FeatureCache(tmp_path)
    s = cached_scores(a, "b", probe=False, cache=cache)
    assert s.n_init == 1 and s.n_boot == 200 and s.domain_ami > 0.9 and not s.domain_within_chance
    assert s.domain_nmi_lo <= s.domain_nmi <= s.domain_nmi_hi and s.domain_nmi_chance < 0.05
    np.testing.assert_equal(cached_scores(a, "b", probe=False, cache=cache).to_dict(), s.to_dict())  # cached
    ks = cached_kmeans(a, "b", cache=cache)  # stored while scoring: same seeds, same clusters
    assert ks.nmi_mean == pytest.approx(s.domain_nmi)
    s3 = cached_scores(a, "b", probe=False, cache=cache, n_init=3)  # n_init is in the key
    assert s3.n_init == 3


def test_tied_with_best_uses_the_intervals():
    df = pd.DataFrame({"domain_nmi": [0.80, 0.78, 0.50], "domain_nmi_lo": [0.75, 0.70, 0.45],
                       "domain_nmi_hi": [0.85, 0.83, 0.55]})
    assert tied_with_best(df).tolist() == [True, True, False]


def test_sweep_cli_writes_ami_chance_intervals_and_noise_seed_interval(tiny_sd_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "sweep.csv"
    assert main(["sweep", "--model", str(tiny_sd_dir), "--dataset", "synthetic-pacs:heldout", "--max-per-domain",
                 "5", "--timesteps", "50", "--blocks", "up_blocks.1", "--noise-seeds", "2", "--n-seeds",
                 "2", "--out", str(out), "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 0
    df = pd.read_csv(out)
    assert {"domain_ami", "domain_nmi_chance", "domain_within_chance", "domain_nmi_lo", "domain_nmi_hi", "n_init",
            "domain_nmi_noise_mean", "domain_nmi_noise_lo", "domain_nmi_noise_hi"} <= set(df.columns)
    assert (df["noise_seeds"] == 2).all() and (df["n_init"] == 1).all()
    assert ((df["domain_nmi_lo"] <= df["domain_nmi"] + 1e-4) & (df["domain_nmi"] <= df["domain_nmi_hi"] + 1e-4)).all()
    assert (df["domain_nmi_noise_lo"] <= df["domain_nmi_noise_mean"] + 1e-4).all()
    assert main(["sweep", "--model", str(tiny_sd_dir), "--n-init", "0", "--no-progress"]) == 2
    assert "--n-init 0" in capsys.readouterr().err


def test_tied_with_best_prefers_the_noise_seed_interval():
    df = pd.DataFrame({"domain_nmi": [0.80, 0.70], "domain_nmi_lo": [0.79, 0.69], "domain_nmi_hi": [0.81, 0.71],
                       "domain_nmi_noise_lo": [0.60, 0.55], "domain_nmi_noise_hi": [0.90, 0.80]})
    assert tied_with_best(df).tolist() == [True, True]  # noise seeds widen the intervals: no longer separable
