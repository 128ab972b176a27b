"""Statistics behind every score DomainLens reports: chance-corrected scores, honest spreads, intervals and
paired comparisons. docs/METHODS.md states each one for citation; this module is the single implementation.

Public API
----------
``Interval(estimate, lo, hi, level=0.95, n_boot=0, method="shift", bias=0.0)``
    A point estimate with a two-sided interval. ``excludes_zero``, ``contains(x)``, ``format(digits)``
    ("0.412 [0.388, 0.437]"), ``to_dict(prefix)``.
``cluster_scores(X, y, n_seeds=5, n_init=1, random_state=0, minibatch=None) -> KMeansScores``
    k-means (K = number of distinct labels in ``y``) on the full features, once per k-means seed
    ``random_state + s`` (s < ``n_seeds``), each seed a single k-means run unless ``n_init > 1``. Keeps the
    cluster labels of every seed, so bootstraps and chance floors need no re-clustering.
``KMeansScores``
    ``y`` (label codes), ``clusters`` (n_seeds, n), per-seed ``nmi``, ``ami``, ``emi`` arrays;
    ``nmi_mean/nmi_std/ami_mean/ami_std`` (std over seeds, ``ddof=0``), ``take(rows)``, ``to_arrays()`` /
    ``from_arrays(d)`` (a result-cache round trip).
``contingency_scores(y, c, rows=None, emi=None) -> (nmi, ami)``
    NMI and AMI of two label vectors (of the ``rows`` resample when given) from their contingency table;
    equal to scikit-learn's ``normalized_mutual_info_score`` / ``adjusted_mutual_info_score`` (arithmetic).
``chance_floor(scores, n_perm=20, seed=0) -> ChanceFloor``
    NMI / AMI of the same clusters against permuted labels (the permutation null).
``gaussian_floor(n, n_features, y, n_seeds=5, n_init=1, seed=0) -> ChanceFloor``
    The same k-means on Gaussian features of the given shape (a re-clustering null; slower).
``ChanceFloor``
    ``nmi_mean, nmi_std, ami_mean, ami_std, n_draws, method``; ``threshold`` (= nmi_mean + 2 nmi_std) and
    ``within(nmi)``: a score at or below the threshold is "within chance".
``bootstrap_ci(stat_fn, n, n_boot=200, seed=0, alpha=0.05, method="shift") -> Interval``
    Bootstrap over images of any statistic ``stat_fn(rows) -> float``.
``paired_bootstrap(stat_a, stat_b, n, n_boot=200, seed=0, alpha=0.05) -> Interval``
    Interval of the difference A - B, both evaluated on the SAME resampled images in every draw.
``score_intervals(runs, n_boot=200, seed=0, alpha=0.05) -> {"nmi": Interval, "ami": Interval}``
    (``score_interval(runs, stat="nmi", ...)``: one of them.)
    Interval of a mean k-means score that combines noise seeds (one ``KMeansScores`` per extraction seed,
    all on the same images), k-means seeds and a bootstrap over images (hierarchical bootstrap, below).
``paired_score_differences(runs_a, runs_b, n_boot=200, seed=0, alpha=0.05) -> {"nmi": .., "ami": ..}``
``paired_score_difference(runs_a, runs_b, stat="nmi", n_boot=200, seed=0, alpha=0.05) -> Interval``
    The same for the difference A - B, images (and noise seeds, when both sides have the same number)
    paired.

Statistics
----------
* NMI: ``I(Y;C) / ((H(Y) + H(C)) / 2)`` with natural logs (scikit-learn's arithmetic normalisation). Its
  chance level is NOT 0: independent labels and clusters give ``E[I] ~ (K_Y - 1)(K_C - 1) / (2 n)`` nats, so
  noise features score high when there are many labels per image (65 classes x 2,000 images: ~0.23).
* AMI: ``(I - E[I]) / ((H(Y) + H(C)) / 2 - E[I])``, ``E[I]`` the expected mutual information under random
  permutation of the labels with both marginals fixed (Vinh et al. 2010). Chance level 0, perfect 1.
  ``E[I]`` is exact (scikit-learn's ``expected_mutual_information``) when its cost
  (``sum_ij min(a_i, b_j)`` over label and cluster sizes) is at most :data:`EXACT_EMI_MAX_OPS`; above that
  (e.g. 345 classes x 586k images: 18 s per seed exact) it is the mean mutual information over
  :data:`EMI_PERMUTATIONS` label permutations, an unbiased Monte-Carlo estimate of the same quantity.
* Spread over k-means seeds: one k-means run per seed by default (``n_init=1``), so the std over seeds
  is the spread of the procedure the paper describes (one k-means). ``n_init=3`` (DomainLens before
  this module) keeps the best of 3 runs per seed; its std only shows how often the best-of-3 differs.
* Chance floor: the permutation null of the reported score. Labels are permuted ``n_perm`` times per k-means
  seed against the fixed clusters; the floor is the mean and std of those NMIs (and AMIs, which have mean 0
  by construction). A score is within chance when ``nmi <= floor.nmi_mean + 2 * floor.nmi_std``.
* Bootstrap over images: rows drawn with replacement, ``n`` of ``n``; the k-means clusters of each seed are
  reused (NMI of the resampled (label, cluster) pairs) rather than re-clustering every draw. That measures
  how much the score depends on which images were sampled given the clustering; it leaves out the
  clustering's own reaction to the resample (bench/ shows k-means seeds dominate that part, and they are
  varied separately). In AMI draws ``E[I]`` is held at its full-sample value (it depends only on the label
  and cluster sizes, which a bootstrap barely moves). The interval is the shifted percentile interval
  (``method="shift"``): the 2.5 and 97.5 % points of the draws minus the bootstrap bias estimate
  ``mean(draws) - estimate``. Plug-in NMI is biased upward on a resample with repeated images (a resample
  has about n/2 effective images: 2,000 noise images x 65 classes give 0.235 on the sample and ~0.33 on
  resamples), so the plain percentile interval (``method="percentile"``) can miss the estimate entirely.
  ``Interval.bias`` keeps the bias estimate.
* Hierarchical bootstrap (``score_interval``): each draw resamples the noise seeds (extraction seeds) with
  replacement, within each of them the k-means seeds with replacement, and the images (one resample shared
  by all seeds: same images); the draw's value is the mean score over the drawn (noise, k-means) pairs.
  So the interval covers noise-seed, k-means-seed and image-sample variation of the reported mean. With a
  single noise seed (the default extraction) it covers k-means seeds and images only: say so.
* Paired bootstrap: in every draw A and B are scored on the same resampled images (and, with equally many
  noise runs on both sides, the same noise-seed draw); the interval is that of the difference. Only an
  interval that excludes 0 supports "A beats B".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import Callable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

N_BOOT = 200  # default bootstrap draws
ALPHA = 0.05  # two-sided 95 % intervals
N_PERM = 20  # default label permutations per k-means seed for the chance floor
CHANCE_SIGMAS = 2.0  # "within chance": at or below floor mean + CHANCE_SIGMAS * floor std
EXACT_EMI_MAX_OPS = 1_000_000  # exact expected MI above this cost (~0.1 s) is replaced by a permutation estimate
EMI_PERMUTATIONS = 20  # permutations behind the Monte-Carlo expected MI
_EPS = np.finfo("float64").eps
_TOL = 1e-12


# --------------------------------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """A point ``estimate`` with a two-sided ``level`` interval ``[lo, hi]`` from ``n_boot`` draws."""

    estimate: float
    lo: float
    hi: float
    level: float = 0.95
    n_boot: int = 0
    method: str = "shift"
    bias: float = 0.0  # bootstrap bias estimate mean(draws) - estimate (already removed by method "shift")

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference is then called); bounds within
        1e-12 of 0 (floating-point residue of identical settings) count as 0."""
        return bool(self.lo > _TOL or self.hi < -_TOL)

    def contains(self, x: float) -> bool:
        return bool(self.lo <= x <= self.hi)

    @property
    def width(self) -> float:
        return float(self.hi - self.lo)

    def format(self, digits: int = 3, signed: bool = False) -> str:
        """``"0.412 [0.388, 0.437]"`` (``signed``: ``"+0.012 [-0.004, +0.029]"``)."""
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.estimate)} [{f.format(self.lo)}, {f.format(self.hi)}]"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self, prefix: str = "") -> dict:
        """``{prefix: estimate, prefix_lo: lo, prefix_hi: hi}`` (no prefix: estimate/lo/hi/level/n_boot)."""
        if prefix:
            return {prefix: self.estimate, f"{prefix}_lo": self.lo, f"{prefix}_hi": self.hi}
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "level": self.level, "n_boot": self.n_boot}


def _interval(estimate: float, draws: np.ndarray, alpha: float, method: str) -> Interval:
    """Interval of bootstrap ``draws`` around ``estimate``: "shift" (default) the percentile interval of the
    draws moved by the bootstrap bias estimate ``mean(draws) - estimate`` (Efron & Tibshirani 1993, ch. 10),
    so it is centred on the estimate; "percentile" the plain percentile interval."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    b = len(draws)
    if b == 0:
        return Interval(float(estimate), float(estimate), float(estimate), 1 - alpha, 0, method)
    if method == "shift":
        bias = float(draws.mean() - estimate)
    elif method == "percentile":
        bias = 0.0
    else:
        raise ValueError(f"unknown interval method {method!r}; use 'shift' or 'percentile'")
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2]) - bias
    return Interval(float(estimate), float(lo), float(hi), 1 - alpha, b, method, float(draws.mean() - estimate))


def bootstrap_rows(n: int, n_boot: int = N_BOOT, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` resamples of ``n`` row indices drawn with replacement, one (n,) array at a time (seeded: the
    same ``seed`` gives the same resamples, which is what pairs A and B): every bootstrap here uses them."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, size=n)


def bootstrap_ci(stat_fn: Callable[[np.ndarray], float], n: int, n_boot: int = N_BOOT, seed: int = 0,
                 alpha: float = ALPHA, method: str = "shift") -> Interval:
    """Bootstrap over images: ``stat_fn(rows)`` on all rows (the estimate) and on ``n_boot`` resamples of
    ``n`` rows drawn with replacement (seeded); the ``1 - alpha`` interval of the draws (see module doc)."""
    est = float(stat_fn(np.arange(n)))
    draws = np.array([stat_fn(r) for r in bootstrap_rows(n, n_boot, seed)], dtype=float)
    return _interval(est, draws, alpha, method)


def paired_bootstrap(stat_a: Callable[[np.ndarray], float], stat_b: Callable[[np.ndarray], float], n: int,
                     n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA, method: str = "shift") -> Interval:
    """Interval of ``stat_a - stat_b`` where both are evaluated on the SAME resampled rows in every draw
    (row i must be the same image for A and B). Call "A beats B" only when ``.excludes_zero``."""
    rows = np.arange(n)
    est = float(stat_a(rows) - stat_b(rows))
    draws = np.array([stat_a(r) - stat_b(r) for r in bootstrap_rows(n, n_boot, seed)], dtype=float)
    return _interval(est, draws, alpha, method)


# ------------------------------------------------------------------------------------------- NMI / AMI core

def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(np.asarray(labels), return_inverse=True)
    return inv.astype(np.int64).ravel(), len(uniq)


def _entropy(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(float)
    n = c.sum()
    return float(-np.sum(c / n * (np.log(c) - np.log(n)))) if n > 0 else 0.0


def _mi(cont: np.ndarray) -> float:
    """Mutual information (nats) of a dense contingency table."""
    n = cont.sum()
    a, b = cont.sum(1), cont.sum(0)
    i, j = np.nonzero(cont)
    nij = cont[i, j].astype(float)
    mi = np.sum(nij / n * (np.log(nij) + np.log(n) - np.log(a[i]) - np.log(b[j])))
    return float(max(mi, 0.0))


def _emi_cost(a: np.ndarray, b: np.ndarray) -> float:
    """``sum_ij min(a_i, b_j)``: the work of the exact expected-MI sum."""
    a, b = np.sort(a[a > 0]), np.sort(b[b > 0])
    cb = np.concatenate([[0], np.cumsum(b)])
    k = np.searchsorted(b, a, side="right")  # b_j <= a_i for j < k
    return float(np.sum(cb[k] + a * (len(b) - k)))


def _expected_mi(cont: np.ndarray, y: np.ndarray | None = None, c: np.ndarray | None = None,
                 seed: int = 0) -> tuple[float, bool]:
    """E[I] under the permutation model for the margins of ``cont``: (value, exact). Exact via scikit-learn
    when cheap; otherwise (needs the label vectors ``y``, ``c``) the mean MI over label permutations."""
    n = int(cont.sum())
    a, b = cont.sum(1), cont.sum(0)
    if _emi_cost(a, b) <= EXACT_EMI_MAX_OPS or y is None:
        try:
            from sklearn.metrics.cluster._expected_mutual_info_fast import expected_mutual_information

            return float(expected_mutual_information(cont[a > 0][:, b > 0], n)), True
        except ImportError:  # pragma: no cover - a scikit-learn without the private helper
            if y is None:
                raise
    rng = np.random.default_rng(seed)
    kc = cont.shape[1]
    mis = [_mi(np.bincount(rng.permutation(y) * kc + c, minlength=cont.size).reshape(cont.shape))
           for _ in range(EMI_PERMUTATIONS)]
    return float(np.mean(mis)), False


def _nmi_ami(cont: np.ndarray, emi: float | None) -> tuple[float, float]:
    """scikit-learn's arithmetic NMI and AMI from a contingency table (AMI nan when ``emi`` is None)."""
    a, b = cont.sum(1), cont.sum(0)
    ka, kb = int(np.sum(a > 0)), int(np.sum(b > 0))
    if ka == kb == 1 or ka == kb == 0:
        return 1.0, 1.0
    mi = _mi(cont)
    norm = (_entropy(a) + _entropy(b)) / 2
    nmi = 0.0 if mi == 0 else float(mi / norm)
    if emi is None:
        return nmi, float("nan")
    if ka == 1 or kb == 1:
        return nmi, 0.0
    den, num = norm - emi, mi - emi
    den = min(den, -_EPS) if den < 0 else max(den, _EPS)
    num = min(num, -_EPS) if num < 0 else max(num, _EPS)
    return nmi, float(num / den)


def _contingency(codes: np.ndarray, shape: tuple[int, int], rows: np.ndarray | None = None) -> np.ndarray:
    x = codes if rows is None else codes[rows]
    return np.bincount(x, minlength=shape[0] * shape[1]).reshape(shape)


def contingency_scores(y: np.ndarray, c: np.ndarray, rows: np.ndarray | None = None,
                       emi: float | None = None) -> tuple[float, float]:
    """(NMI, AMI) of labels ``y`` against clusters ``c`` (of the resample ``rows`` when given). Without ``emi``
    the expected MI is computed for this table (exact or by permutations, see the module doc); pass the
    full-sample value to hold it fixed across bootstrap draws."""
    yc, ky = _codes(y)
    cc, kc = _codes(c)
    cont = _contingency(yc * kc + cc, (ky, kc), rows)
    if emi is None:
        yy, ccs = (yc, cc) if rows is None else (yc[rows], cc[rows])
        emi = _expected_mi(cont, yy, ccs)[0]
    return _nmi_ami(cont, emi)


# ----------------------------------------------------------------------------------------- k-means scores

@dataclass
class KMeansScores:
    """k-means against one labelling, per k-means seed: the clusters and their NMI / AMI."""

    y: np.ndarray  # (n,) label codes 0..n_labels-1
    clusters: np.ndarray  # (n_seeds, n) cluster labels 0..n_labels-1
    nmi: np.ndarray  # (n_seeds,)
    ami: np.ndarray  # (n_seeds,)
    emi: np.ndarray  # (n_seeds,) expected MI (nats) behind each AMI
    emi_exact: bool = True  # False: the expected MI is a permutation estimate (large tables)
    n_init: int = 1  # k-means runs per seed (the best kept); 1 = one k-means, the paper's protocol
    seeds: tuple = ()
    label_names: tuple = field(default=())

    @property
    def n_seeds(self) -> int:
        return int(len(self.nmi))

    @property
    def n_labels(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0

    @property
    def nmi_mean(self) -> float:
        return float(np.mean(self.nmi))

    @property
    def nmi_std(self) -> float:
        """Std over k-means seeds (``ddof=0``)."""
        return float(np.std(self.nmi))

    @property
    def ami_mean(self) -> float:
        return float(np.mean(self.ami))

    @property
    def ami_std(self) -> float:
        return float(np.std(self.ami))

    def take(self, rows: np.ndarray) -> "KMeansScores":
        """The same clusters restricted / reordered to ``rows`` (scores recomputed on them, expected MI
        recomputed), e.g. to align two settings on their shared images."""
        rows = np.asarray(rows)
        y, cl = self.y[rows], self.clusters[:, rows]
        out = [_seed_scores(y, c, self.n_labels, s) for s, c in enumerate(cl)]
        return KMeansScores(y, cl, np.array([o[0] for o in out]), np.array([o[1] for o in out]),
                            np.array([o[2] for o in out]), all(o[3] for o in out), self.n_init, self.seeds,
                            self.label_names)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a result cache (:meth:`from_arrays` inverts it)."""
        small = np.int16 if max(self.n_labels, int(self.clusters.max(initial=0)) + 1) < 2**15 else np.int32
        return {"y": self.y.astype(small), "clusters": self.clusters.astype(small), "nmi": self.nmi,
                "ami": self.ami, "emi": self.emi, "emi_exact": np.array(self.emi_exact),
                "n_init": np.array(self.n_init), "seeds": np.array(self.seeds, dtype=np.int64),
                "label_names": np.array(self.label_names, dtype=str)}

    @classmethod
    def from_arrays(cls, d: dict) -> "KMeansScores":
        return cls(np.asarray(d["y"]).astype(np.int64), np.asarray(d["clusters"]).astype(np.int64),
                   np.asarray(d["nmi"], float), np.asarray(d["ami"], float), np.asarray(d["emi"], float),
                   bool(np.asarray(d["emi_exact"])), int(np.asarray(d["n_init"])),
                   tuple(int(v) for v in np.asarray(d["seeds"])), tuple(str(v) for v in np.asarray(d["label_names"])))


def _seed_scores(y: np.ndarray, c: np.ndarray, k: int, seed: int) -> tuple[float, float, float, bool]:
    kc = max(int(c.max()) + 1 if len(c) else 1, 1)
    cont = _contingency(y * kc + c, (k, kc))
    emi, exact = _expected_mi(cont, y, c, seed)
    nmi, ami = _nmi_ami(cont, emi)
    return nmi, ami, emi, exact


def cluster_scores(X: np.ndarray, y: np.ndarray, n_seeds: int = 5, n_init: int = 1, random_state: int = 0,
                   minibatch: bool | None = None) -> KMeansScores:
    """k-means with K = number of distinct labels of ``y`` on the full features ``X`` (n, d), seeds
    ``random_state .. random_state + n_seeds - 1``, each ``n_init`` runs (best inertia kept; 1 = a single
    k-means as in the paper); NMI and AMI of each seed against ``y`` (see the module doc). Fewer than 2
    labels: NMI = AMI = 0 and no clustering."""
    from core.analysis.clustering import _check, kmeans_labels

    X, labels = _check(X, y)
    if n_seeds < 1 or n_init < 1:
        raise ValueError(f"n_seeds and n_init must be >= 1, got {n_seeds} and {n_init}")
    yc, k = _codes(labels)
    names = tuple(str(v) for v in np.unique(labels))
    seeds = tuple(int(random_state) + s for s in range(n_seeds))
    if k < 2:
        z = np.zeros(n_seeds)
        return KMeansScores(yc, np.zeros((n_seeds, len(yc)), np.int64), z, z.copy(), z.copy(), True, n_init,
                            seeds, names)
    clusters = np.stack([kmeans_labels(X, k, s, minibatch, n_init=n_init)[0].astype(np.int64) for s in seeds])
    out = [_seed_scores(yc, c, k, s) for s, c in zip(seeds, clusters)]
    return KMeansScores(yc, clusters, np.array([o[0] for o in out]), np.array([o[1] for o in out]),
                        np.array([o[2] for o in out]), all(o[3] for o in out), int(n_init), seeds, names)


# ------------------------------------------------------------------------------------------- chance floors

@dataclass(frozen=True)
class ChanceFloor:
    """The score k-means reaches by chance: mean and std of NMI / AMI under a null (``method``)."""

    nmi_mean: float
    nmi_std: float
    ami_mean: float
    ami_std: float
    n_draws: int
    method: str = "permutation"

    @property
    def threshold(self) -> float:
        """NMI at or below this is within chance: floor mean + :data:`CHANCE_SIGMAS` floor std."""
        return float(self.nmi_mean + CHANCE_SIGMAS * self.nmi_std)

    def within(self, nmi: float) -> bool:
        """True when ``nmi`` is within the noise floor's spread (not distinguishable from chance)."""
        return bool(nmi <= self.threshold)

    def format(self, digits: int = 3) -> str:
        return f"{self.nmi_mean:.{digits}f} ± {self.nmi_std:.{digits}f}"


def chance_floor(scores: KMeansScores, n_perm: int = N_PERM, seed: int = 0) -> ChanceFloor:
    """Permutation null of ``scores``: the labels permuted ``n_perm`` times per k-means seed against that
    seed's fixed clusters (cluster and label sizes kept); mean and std of the resulting NMI and AMI over
    all ``n_seeds * n_perm`` draws. No re-clustering; AMI has mean 0 here by construction."""
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    rng = np.random.default_rng(seed)
    k = max(scores.n_labels, 1)
    nmis, amis = [], []
    for c, emi in zip(scores.clusters, scores.emi):
        kc = int(c.max()) + 1 if len(c) else 1
        for _ in range(n_perm):
            cont = _contingency(rng.permutation(scores.y) * kc + c, (k, kc))
            a, b = _nmi_ami(cont, float(emi))
            nmis.append(a)
            amis.append(b)
    return ChanceFloor(float(np.mean(nmis)), float(np.std(nmis)), float(np.mean(amis)), float(np.std(amis)),
                       len(nmis), "permutation")


def gaussian_floor(n: int, n_features: int, y: np.ndarray, n_seeds: int = 5, n_init: int = 1, seed: int = 0
                   ) -> ChanceFloor:
    """Gaussian null: the same k-means (K = number of labels, ``n_init``) on standard-normal features of shape
    (n, n_features), scored against ``y``, for ``n_seeds`` seeds (features and k-means seeded from
    ``seed``). Costs ``n_seeds`` k-means fits; :func:`chance_floor` needs none."""
    X = np.random.default_rng(seed).standard_normal((n, n_features)).astype(np.float32)
    s = cluster_scores(X, y, n_seeds=n_seeds, n_init=n_init, random_state=seed)
    return ChanceFloor(s.nmi_mean, s.nmi_std, s.ami_mean, s.ami_std, s.n_seeds, "gaussian")


# ------------------------------------------------------------------------------ hierarchical bootstrap

def _as_runs(runs: KMeansScores | Sequence[KMeansScores]) -> list[KMeansScores]:
    runs = [runs] if isinstance(runs, KMeansScores) else list(runs)
    if not runs:
        raise ValueError("no k-means scores given")
    n = len(runs[0].y)
    if any(len(r.y) != n or not np.array_equal(r.y, runs[0].y) for r in runs):
        raise ValueError("every run must score the same images in the same order (same labels); align them "
                         "first (KMeansScores.take)")
    return runs


def _xlogx(v: np.ndarray) -> np.ndarray:
    """``sum v log v`` over the last axis, 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sum(np.where(v > 0, v * np.log(np.where(v > 0, v, 1)), 0.0), axis=-1)


def _weighted_nmi_ami(cell_row: np.ndarray, cell_col: np.ndarray, k: int, kc: int,
                      counts: np.ndarray, emi: float) -> tuple[np.ndarray, np.ndarray]:
    """NMI and AMI (fixed ``emi``) of a stack of resampled contingency tables given sparsely: ``counts``
    (B, m) the weight of each of the m occupied cells (label ``cell_row``, cluster ``cell_col``). Uses
    ``I = H(Y) + H(C) - H(Y, C)`` with the same special cases as :func:`_nmi_ami`."""
    n = counts.sum(1)
    a = np.stack([np.bincount(cell_row, weights=c, minlength=k) for c in counts])  # (B, k)
    b = np.stack([np.bincount(cell_col, weights=c, minlength=kc) for c in counts])  # (B, kc)
    logn = np.log(n)
    h_y, h_c = logn - _xlogx(a) / n, logn - _xlogx(b) / n
    h_yc = logn - _xlogx(counts) / n
    mi = np.maximum(h_y + h_c - h_yc, 0.0)
    mi = np.where(np.abs(mi) < 1e-15, 0.0, mi)
    norm = (h_y + h_c) / 2
    ka, kb = (a > 0).sum(1), (b > 0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        nmi = np.where(mi == 0, 0.0, mi / norm)
        den, num = norm - emi, mi - emi
        den = np.where(den < 0, np.minimum(den, -_EPS), np.maximum(den, _EPS))
        num = np.where(num < 0, np.minimum(num, -_EPS), np.maximum(num, _EPS))
        ami = num / den
    ami = np.where((ka == 1) | (kb == 1), 0.0, ami)
    same = ((ka == 1) & (kb == 1)) | ((ka == 0) & (kb == 0))
    return np.where(same, 1.0, nmi), np.where(same, 1.0, ami)


_BATCH = 32  # bootstrap draws scored at once


def _draw_values(runs: list[KMeansScores], rows: Iterator[np.ndarray]) -> dict[str, np.ndarray]:
    """{"nmi", "ami"}: (n_boot, n_runs, n_seeds) score of every (noise run, k-means seed) on every image
    resample (AMI with each seed's full-sample expected MI). Each resample becomes per-image counts once;
    every seed's resampled table is a weighted count over the cells its (label, cluster) pairs occupy, so a
    draw costs O(n) however many labels there are."""
    n_seeds = min(r.n_seeds for r in runs)
    n = len(runs[0].y)
    tables = []  # (run, seed, cell of each image, cell rows, cell cols, k, kc, emi)
    for ri, run in enumerate(runs):
        k = max(run.n_labels, 1)
        for si in range(n_seeds):
            c = run.clusters[si]
            kc = int(c.max()) + 1 if len(c) else 1
            cells, cell_of = np.unique(run.y * kc + c, return_inverse=True)
            tables.append((ri, si, cell_of.ravel(), cells // kc, cells % kc, k, kc, float(run.emi[si])))
    out: dict[str, list] = {"nmi": [], "ami": []}
    rows = iter(rows)
    while True:  # a batch of resamples at a time: memory O(_BATCH * n), never O(n_boot * n)
        w = [np.bincount(r, minlength=n).astype(float) for r in islice(rows, _BATCH)]
        if not w:
            break
        batch = {s: np.empty((len(w), len(runs), n_seeds)) for s in ("nmi", "ami")}
        for ri, si, cell_of, rr, cc, k, kc, emi in tables:
            counts = np.stack([np.bincount(cell_of, weights=x, minlength=len(rr)) for x in w])
            batch["nmi"][:, ri, si], batch["ami"][:, ri, si] = _weighted_nmi_ami(rr, cc, k, kc, counts, emi)
        for s_ in out:
            out[s_].append(batch[s_])
    empty = np.empty((0, len(runs), n_seeds))
    return {s_: np.concatenate(v) if v else empty for s_, v in out.items()}


def _check_stat(stat: str) -> None:
    if stat not in ("nmi", "ami"):
        raise ValueError(f"stat must be 'nmi' or 'ami', got {stat!r}")


def _hier_means(values: np.ndarray, rng: np.random.Generator, run_picks: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: noise runs resampled with replacement (or ``run_picks``), within each the k-means seeds;
    the mean over the drawn pairs. Returns (means, run_picks)."""
    n_boot, n_runs, n_seeds = values.shape
    if run_picks is None:
        run_picks = rng.integers(0, n_runs, size=(n_boot, n_runs))
    seed_picks = rng.integers(0, n_seeds, size=(n_boot, n_runs, n_seeds))
    b = np.arange(n_boot)[:, None, None]
    return values[b, run_picks[:, :, None], seed_picks].mean(axis=(1, 2)), run_picks


def score_intervals(runs: KMeansScores | Sequence[KMeansScores], n_boot: int = N_BOOT, seed: int = 0,
                    alpha: float = ALPHA, method: str = "shift") -> dict[str, Interval]:
    """``{"nmi": Interval, "ami": Interval}`` of the mean score over noise seeds x k-means seeds, from the
    hierarchical bootstrap of the module doc (one pass over the resamples for both): ``runs`` is one
    :class:`KMeansScores` per noise (extraction) seed, all on the same images. Each estimate is the plain
    mean over every (noise seed, k-means seed)."""
    runs = _as_runs(runs)
    n_seeds = min(r.n_seeds for r in runs)
    values = _draw_values(runs, bootstrap_rows(len(runs[0].y), n_boot, seed))
    out = {}
    for stat in ("nmi", "ami"):
        est = float(np.mean([getattr(r, stat)[:n_seeds] for r in runs]))
        means, _ = _hier_means(values[stat], np.random.default_rng(seed))
        iv = _interval(est, means, alpha, method)
        # the shift can push a bound past the score's range: NMI lies in [0, 1], AMI is at most 1
        out[stat] = replace(iv, lo=max(iv.lo, 0.0) if stat == "nmi" else iv.lo, hi=min(iv.hi, 1.0))
    return out


def score_interval(runs: KMeansScores | Sequence[KMeansScores], stat: str = "nmi", n_boot: int = N_BOOT,
                   seed: int = 0, alpha: float = ALPHA, method: str = "shift") -> Interval:
    """The ``stat`` ("nmi" or "ami") entry of :func:`score_intervals`."""
    _check_stat(stat)
    return score_intervals(runs, n_boot, seed, alpha, method)[stat]


def paired_score_differences(runs_a: KMeansScores | Sequence[KMeansScores],
                             runs_b: KMeansScores | Sequence[KMeansScores], n_boot: int = N_BOOT, seed: int = 0,
                             alpha: float = ALPHA, method: str = "shift") -> dict[str, Interval]:
    """``{"nmi": Interval, "ami": Interval}`` of A minus B, as :func:`paired_score_difference` (one pass)."""
    runs_a, runs_b = _as_runs(runs_a), _as_runs(runs_b)
    if not np.array_equal(runs_a[0].y, runs_b[0].y):
        raise ValueError("A and B must score the same images in the same order (same labels); align them "
                         "first (KMeansScores.take on the shared image ids)")
    n = len(runs_a[0].y)  # the same seed gives A and B the same image resamples
    va = _draw_values(runs_a, bootstrap_rows(n, n_boot, seed))
    vb = _draw_values(runs_b, bootstrap_rows(n, n_boot, seed))
    sa, sb = min(r.n_seeds for r in runs_a), min(r.n_seeds for r in runs_b)
    out = {}
    for stat in ("nmi", "ami"):
        est = float(np.mean([getattr(r, stat)[:sa] for r in runs_a]) -
                    np.mean([getattr(r, stat)[:sb] for r in runs_b]))
        rng = np.random.default_rng(seed)
        ma, picks = _hier_means(va[stat], rng)
        mb, _ = _hier_means(vb[stat], rng, picks if len(runs_a) == len(runs_b) else None)
        out[stat] = _interval(est, ma - mb, alpha, method)
    return out


def paired_score_difference(runs_a: KMeansScores | Sequence[KMeansScores],
                            runs_b: KMeansScores | Sequence[KMeansScores], stat: str = "nmi",
                            n_boot: int = N_BOOT, seed: int = 0, alpha: float = ALPHA,
                            method: str = "shift") -> Interval:
    """Interval of mean ``stat`` of A minus that of B (paired bootstrap, module doc): the same image
    resample for both in every draw; the same noise-seed draw too when both have equally many runs
    (run i of A and B must then share noise seed i). Rows must be the same images on both sides."""
    _check_stat(stat)
    return paired_score_differences(runs_a, runs_b, n_boot, seed, alpha, method)[stat]
