"""Scores of how features separate domains (and classes), all via scikit-learn.

* NMI: k-means with K = number of labels on the full-dimension features, then
  ``normalized_mutual_info_score(labels, clusters)`` (arithmetic); mean and std over k-means seeds, each seed
  one k-means run (``n_init=1``, the paper's protocol; ``n_init=3`` was DomainLens's old default).
* AMI beside every NMI (chance level 0; NMI's chance level grows with the number of labels per image), the
  NMI's chance floor (same clusters, permuted labels) and a 95 % interval over k-means seeds and a bootstrap
  over images: :mod:`core.analysis.stats` states and implements them.
* Domain predictability: cross-validated logistic-regression accuracy of predicting the domain.
* Silhouette of the domain labels (cosine distance on standardized features).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.analysis.clustering import DEFAULT_N_INIT, FIT_SAMPLE, _check, kmeans_labels  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

def nmi(features: np.ndarray, labels: np.ndarray, n_seeds: int = 5, minibatch: bool | None = None,
        n_init: int = DEFAULT_N_INIT) -> tuple[float, float]:
    """NMI between ``labels`` and k-means clusters (K = number of distinct labels): (mean, std) over
    ``n_seeds`` k-means seeds (0 .. n_seeds - 1), each the best of ``n_init`` runs (default one run)."""
    X, y = _check(features, labels)
    k = len(np.unique(y))
    if k < 2:
        return 0.0, 0.0
    scores = [normalized_mutual_info_score(y, kmeans_labels(X, k, s, minibatch, n_init)[0]) for s in range(n_seeds)]
    return float(np.mean(scores)), float(np.std(scores))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, n_splits: int = 5, random_state: int = 0) -> float:
    """Mean stratified k-fold accuracy of a standardized logistic regression predicting ``labels``."""
    X, y = _check(features, labels)
    _, counts = np.unique(y, return_counts=True)
    n_splits = int(min(n_splits, counts.min()))
    if n_splits < 2 or len(counts) < 2:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.5))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return float(cross_val_score(clf, X, y, cv=cv).mean())


def silhouette(features: np.ndarray, labels: np.ndarray, max_samples: int = 5000, random_state: int = 0) -> float:
    X, y = _check(features, labels)
    if len(np.unique(y)) < 2:
        return float("nan")
    Xs = StandardScaler().fit_transform(X)
    n = min(len(X), max_samples)
    return float(silhouette_score(Xs, y, metric="cosine", sample_size=n if n < len(X) else None,
                                  random_state=random_state))


@dataclass
class Scores:
    """Scores of one feature matrix. NMI / AMI: mean and std (ddof 0) over k-means seeds; ``*_chance``: the
    NMI the same clusters reach against permuted labels (mean, std: :func:`core.analysis.stats.chance_floor`);
    ``*_lo`` / ``*_hi``: 95 % interval over k-means seeds and a bootstrap over images
    (:func:`core.analysis.stats.score_interval`; nan when not computed)."""

    domain_nmi: float
    domain_nmi_std: float
    class_nmi: float
    class_nmi_std: float
    domain_probe_acc: float
    domain_silhouette: float
    n_images: int
    kmeans_fit_points: int = 0  # k-means was fitted on a seeded sample of this many points (all points labelled)
    probe_points: int = 0  # the domain probe used a stratified sample of this many points
    domain_ami: float = float("nan")
    domain_ami_std: float = float("nan")
    class_ami: float = float("nan")
    class_ami_std: float = float("nan")
    domain_nmi_chance: float = float("nan")  # chance floor of the domain NMI: mean over label permutations
    domain_nmi_chance_std: float = float("nan")
    class_nmi_chance: float = float("nan")
    class_nmi_chance_std: float = float("nan")
    domain_nmi_lo: float = float("nan")
    domain_nmi_hi: float = float("nan")
    domain_ami_lo: float = float("nan")
    domain_ami_hi: float = float("nan")
    class_nmi_lo: float = float("nan")
    class_nmi_hi: float = float("nan")
    class_ami_lo: float = float("nan")
    class_ami_hi: float = float("nan")
    n_seeds: int = 0  # k-means seeds behind the means and stds
    n_init: int = 0  # k-means runs per seed (best kept); 1 = one k-means per seed (0: unknown, older scores)
    n_boot: int = 0  # bootstrap draws behind the intervals (0: none)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        """Inverse of :meth:`to_dict` (values may be 0-d arrays, as the score cache stores them); unknown keys
        are ignored and missing ones keep their defaults."""
        out = {}
        for f in fields(cls):
            if f.name in d:
                v = np.asarray(d[f.name]).item()
                out[f.name] = int(v) if f.type in ("int", int) else float(v)
        return cls(**out)

    @property
    def domain_within_chance(self) -> bool:
        """The domain NMI is within its chance floor's spread (:meth:`core.analysis.stats.ChanceFloor.within`)."""
        return _within(self.domain_nmi, self.domain_nmi_chance, self.domain_nmi_chance_std)

    @property
    def class_within_chance(self) -> bool:
        """The class NMI is within its chance floor's spread."""
        return _within(self.class_nmi, self.class_nmi_chance, self.class_nmi_chance_std)

    def row(self) -> dict:
        """:meth:`to_dict` plus the two within-chance flags: one row of a CSV."""
        return {**self.to_dict(), "domain_within_chance": self.domain_within_chance,
                "class_within_chance": self.class_within_chance}


def _within(nmi_: float, chance: float, chance_std: float) -> bool:
    from core.analysis.stats import ChanceFloor

    if any(np.isnan(v) for v in (nmi_, chance, chance_std)):
        return False
    return ChanceFloor(chance, chance_std, 0.0, 0.0, 0).within(nmi_)


def score_features(features: np.ndarray, domain_labels: np.ndarray, class_labels: np.ndarray,
                   n_seeds: int = 5, probe: bool = True, n_init: int = DEFAULT_N_INIT, n_boot: int | None = None,
                   n_perm: int | None = None, seed: int = 0, keep: dict | None = None) -> Scores:
    """All scores of one feature matrix (n_images, n_features): NMI and AMI against domains and classes
    (k-means seeds 0 .. n_seeds - 1, ``n_init`` runs each), their chance floors (``n_perm`` label
    permutations per seed) and intervals (``n_boot`` bootstrap draws over images, 0: none), the domain
    probe and silhouette. Bootstrap and permutations are seeded by ``seed``. ``keep``: a dict that receives the
    :class:`core.analysis.stats.KMeansScores` of "domain" and "class" (the clusters, for later bootstraps)."""
    from core.analysis import stats

    n_boot = stats.N_BOOT if n_boot is None else int(n_boot)
    n_perm = stats.N_PERM if n_perm is None else int(n_perm)
    out: dict = {}
    for name, labels in (("domain", domain_labels), ("class", class_labels)):
        ks = stats.cluster_scores(features, labels, n_seeds=n_seeds, n_init=n_init)
        if keep is not None:
            keep[name] = ks
        out.update({f"{name}_nmi": ks.nmi_mean, f"{name}_nmi_std": ks.nmi_std,
                    f"{name}_ami": ks.ami_mean, f"{name}_ami_std": ks.ami_std})
        if ks.n_labels >= 2:
            floor = stats.chance_floor(ks, n_perm=n_perm, seed=seed)
            out.update({f"{name}_nmi_chance": floor.nmi_mean, f"{name}_nmi_chance_std": floor.nmi_std})
            if n_boot > 0:
                for stat, ci in stats.score_intervals(ks, n_boot=n_boot, seed=seed).items():
                    out.update({f"{name}_{stat}_lo": ci.lo, f"{name}_{stat}_hi": ci.hi})
    n = len(features)
    k = max(len(np.unique(domain_labels)), len(np.unique(class_labels)))
    fit = n if n <= max(FIT_SAMPLE, 20 * k) else max(FIT_SAMPLE, 20 * k)
    n_probe = min(n, PROBE_SAMPLE)
    acc = float("nan")
    if probe:
        idx = _stratified(np.asarray(domain_labels), n_probe)
        acc = probe_accuracy(np.asarray(features)[idx], np.asarray(domain_labels)[idx])
    sil = silhouette(features, domain_labels)
    return Scores(domain_probe_acc=acc, domain_silhouette=sil, n_images=int(n), kmeans_fit_points=int(fit),
                  probe_points=int(n_probe if probe else 0), n_seeds=int(n_seeds), n_init=int(n_init),
                  n_boot=int(n_boot), **out)


PROBE_SAMPLE = 20_000  # the cross-validated domain probe runs on at most this many points (stratified, seeded)


def _stratified(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    from core.analysis.reduce import stratified_sample

    return stratified_sample(labels, n, seed)
