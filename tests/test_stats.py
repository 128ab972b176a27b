"""core.analysis.stats: known answers for chance correction, spreads, intervals and paired comparisons."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from core.analysis import stats


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):  # two shared cores: k-means threads only oversubscribe them
        yield


@pytest.fixture(scope="module")
def noise():
    """Pure-noise features with many classes: NMI well above 0, AMI ~ 0."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 16)).astype(np.float32)
    y = np.arange(600) % 40
    return X, y, stats.cluster_scores(X, y, n_seeds=3)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(600, centers=4, n_features=8, cluster_std=0.5, random_state=0)
    return X, y, stats.cluster_scores(X, y, n_seeds=3)


def test_contingency_scores_match_scikit_learn(monkeypatch):
    rng = np.random.default_rng(1)
    for n, k in [(300, 3), (2000, 30)]:
        y, c = rng.integers(0, k, n), rng.integers(0, k, n)
        c[: n // 3] = y[: n // 3]
        nmi, ami = stats.contingency_scores(y, c)
        assert nmi == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)
        assert ami == pytest.approx(adjusted_mutual_info_score(y, c), abs=1e-12)
    monkeypatch.setattr(stats, "EXACT_EMI_MAX_OPS", 0)  # large tables: expected MI from label permutations
    assert stats.contingency_scores(y, c)[1] == pytest.approx(adjusted_mutual_info_score(y, c), abs=0.01)


def test_noise_features_ami_near_zero_and_within_chance(noise):
    _, _, s = noise
    assert s.nmi_mean > 0.2  # the raw NMI of pure noise with 40 classes is far from 0 ...
    assert abs(s.ami_mean) < 0.02 and np.all(np.abs(s.ami) < 0.03)  # ... the chance-corrected score is not
    floor = stats.chance_floor(s, n_perm=10)
    assert floor.n_draws == 30 and floor.nmi_mean > 0.2 and abs(floor.ami_mean) < 0.01
    assert floor.within(s.nmi_mean)


def test_gaussian_floor_matches_the_permutation_floor(noise):
    X, y, s = noise
    g = stats.gaussian_floor(*X.shape, y, n_seeds=2, seed=5)
    assert g.method == "gaussian" and abs(g.ami_mean) < 0.02
    assert g.nmi_mean == pytest.approx(stats.chance_floor(s).nmi_mean, abs=0.03)


def test_separated_blobs_are_not_within_chance(blobs):
    _, _, s = blobs
    assert s.ami_mean > 0.95 and s.nmi_mean > 0.95
    floor = stats.chance_floor(s, n_perm=10)
    assert floor.nmi_mean < 0.05 and not floor.within(s.nmi_mean)


def test_single_kmeans_runs_show_the_spread_best_of_three_hides():
    X, y = make_blobs(400, centers=20, n_features=5, cluster_std=1.5, random_state=1)
    one = stats.cluster_scores(X, y, n_seeds=8, n_init=1)
    three = stats.cluster_scores(X, y, n_seeds=8, n_init=3)
    assert one.n_init == 1 and three.n_init == 3
    assert one.nmi_std > three.nmi_std > 0


def test_bootstrap_ci_of_a_mean_covers_it():
    x = np.random.default_rng(2).normal(1.0, 1.0, 400)
    ci = stats.bootstrap_ci(lambda r: x[r].mean(), len(x), n_boot=300, seed=0)
    se = x.std() / np.sqrt(len(x))
    assert ci.estimate == pytest.approx(x.mean()) and ci.lo < x.mean() < ci.hi
    assert ci.width == pytest.approx(2 * 1.96 * se, rel=0.25) and ci.excludes_zero
    assert ci.format() == f"{ci.estimate:.3f} [{ci.lo:.3f}, {ci.hi:.3f}]"
    assert stats.bootstrap_ci(lambda r: x[r].mean(), len(x), n_boot=300, seed=0) == ci  # seeded


def test_noise_nmi_interval_is_centred_despite_resample_bias(noise):
    _, _, s = noise
    ci = stats.score_interval(s, "nmi", n_boot=100)
    assert ci.bias > 0.02  # repeated images inflate plug-in NMI on resamples ...
    assert ci.lo < s.nmi_mean < ci.hi  # ... the shifted interval still brackets the estimate
    ami = stats.score_interval(s, "ami", n_boot=100)
    assert ami.lo < 0.02 and ami.estimate == pytest.approx(s.ami_mean)


def test_paired_difference_identical_settings_gives_no_verdict(blobs):
    _, _, s = blobs
    d = stats.paired_score_difference(s, s, n_boot=100)
    assert d.estimate == 0 and d.contains(0) and not d.excludes_zero


def test_paired_difference_calls_a_clear_winner(blobs):
    X, y, good = blobs
    rng = np.random.default_rng(3)
    bad = stats.cluster_scores(X + rng.normal(0, 6, X.shape), y, n_seeds=3)
    d = stats.paired_score_difference(good, bad, n_boot=100)
    assert d.estimate > 0.2 and d.excludes_zero and d.lo > 0
    rev = stats.paired_score_difference(bad, good, n_boot=100)
    assert rev.hi < 0 and rev.excludes_zero
    with pytest.raises(ValueError, match="same images"):
        stats.paired_score_difference(good, good.take(np.arange(100)))


def test_paired_bootstrap_beats_unpaired_on_shared_images():
    rng = np.random.default_rng(4)
    base = rng.normal(0, 1, 300)  # a per-image effect both settings share
    a, b = base + 0.1 + rng.normal(0, 0.05, 300), base + rng.normal(0, 0.05, 300)
    d = stats.paired_bootstrap(lambda r: a[r].mean(), lambda r: b[r].mean(), 300, n_boot=200)
    assert d.excludes_zero and d.lo > 0.05  # unpaired, the +-0.11 image spread would swamp the 0.1 gap


def test_noise_seeds_widen_the_combined_interval(blobs):
    X, y, _ = blobs
    rng = np.random.default_rng(6)
    runs = [stats.cluster_scores(X + rng.normal(0, s, X.shape), y, n_seeds=2) for s in (3.0, 5.0, 7.0)]
    one = stats.score_interval(runs[1], n_boot=100)
    all3 = stats.score_interval(runs, n_boot=100)
    assert all3.width > one.width
    assert all3.estimate == pytest.approx(np.mean([r.nmi for r in runs]))


def test_bootstrap_draws_score_the_resampled_pairs(blobs):
    _, _, s = blobs
    rows = list(stats.bootstrap_rows(len(s.y), 3, seed=7))
    vals = stats._draw_values([s], iter(rows))
    for b, r in enumerate(rows):
        for si in range(s.n_seeds):
            nmi, ami = stats.contingency_scores(s.y[r], s.clusters[si][r], emi=float(s.emi[si]))
            assert vals["nmi"][b, 0, si] == pytest.approx(nmi, abs=1e-10)
            assert vals["ami"][b, 0, si] == pytest.approx(ami, abs=1e-10)


def test_kmeans_scores_round_trip_through_arrays(blobs):
    _, _, s = blobs
    back = stats.KMeansScores.from_arrays(s.to_arrays())
    assert np.array_equal(back.clusters, s.clusters) and np.array_equal(back.y, s.y)
    assert np.array_equal(back.nmi, s.nmi) and back.seeds == s.seeds and back.n_init == s.n_init
