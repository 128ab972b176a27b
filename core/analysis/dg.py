"""Domain-generalization what-if, leave one domain out, on cached features.

For a feature setting (model, layer, timestep) and each domain held out in turn ("fold"):

* **pseudo-domains** (GUIDE): k-means (k-means++) fitted on the features of the other domains; every held-out
  image lands on its nearest centroid. Where they land: the share per pseudo-domain and its entropy (0 = all
  on one pseudo-domain; ``entropy_norm`` 1 = spread evenly). ``K`` defaults to the number of classes, GUIDE's
  smallest choice (GUIDE used K = classes x {1, 3, 5}; :func:`k_sweep` runs all three).
* **pseudo-domain quality** (what GUIDE uses them for, and the ranking's default): the held-out class accuracy
  of a *learner that uses domain labels* given the pseudo-domains, minus the same learner given one domain
  (no domain information): ``pd_gain = acc_pseudo_domains - acc_one_domain``. Beside it the same learner given
  the true training domains (``true_gain``: what perfect domain labels would add). The learners (``learner``):

  - ``"normalised"`` (default): per-domain-normalised probe. Each training (pseudo-)domain is standardised
    with its own mean and standard deviation (domain-specific normalisation, as domain-specific batch norm
    does); the held-out domain is standardised with its own statistics (no labels used, as AdaBN at test
    time); then a logistic regression. With one domain this is global standardisation.
  - ``"balanced"``: group-balanced probe: a standardised logistic regression whose sample weights give every
    (pseudo-)domain the same total weight; the held-out images are used as they are. With one domain this
    is the plain probe (``heldout_acc``).

  Fold error bars: the mean row carries the standard deviation over folds (``*_sd``, ddof 1) and the
  half-width of the 95 % Student-t interval of the mean (``*_ci95`` = t(0.975, n-1) * sd / sqrt(n); n = the
  number of held-out domains, so with 4 folds the interval is wide: t = 3.18).
* **pseudo-domains against the true training domains**: NMI (arithmetic), homogeneity (1 = every
  pseudo-domain holds one domain only), completeness (1 = every domain in one pseudo-domain) and purity
  (share of training images in their pseudo-domain's majority domain). NMI falls as K grows past the number
  of domains even when every pseudo-domain is pure (homogeneity 1): read them together.
* **class probe**: a standardised logistic regression (fixed seed) trained on the other domains, tested on the
  held-out domain (``heldout_acc``), beside the same probe's in-domain accuracy (stratified k-fold
  cross-validation on the other domains, ``in_domain_acc``). ``gap = in_domain_acc - heldout_acc`` is the
  domain shift the features carry for that domain.
* **pseudo-domain augmentation** (the one-hot pseudo-domain appended to the features):
  ``aug_delta`` = held-out accuracy with minus without.
* **the backbone saw the held-out domain**: :func:`backbone_training_data` reads a model folder's own record of
  its training data (``training_log.json`` or ``config.json``: ``train_data``); ``heldout_seen`` is True when
  the analysed dataset's base name (``synthetic-pacs`` of ``synthetic-pacs:heldout``) is among them and the
  held-out domain among its domains (a listed dataset without a domain list counts as all its domains), None
  when the model has no such record (a hub checkpoint: unknown, often yes for web-scale pre-training). A
  backbone trained on the held-out domain is not a domain-generalization test of the backbone.

:func:`rank_settings` does this for every (model, layer, timestep) asked for (features from the cache,
computed when missing) and ranks the settings by mean ``pd_gain`` (and, beside it, by held-out accuracy and
by gap); :func:`k_sweep` and :func:`train_domain_sweep` sweep K and the number of training domains of one
setting; :mod:`core.analysis.dg_export` writes a setting's pseudo-domain assignment per training image and its
centroids in the form a GUIDE/DomainBed training run reads, and the command that reproduces a ranking.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import homogeneity_completeness_v_measure, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.analysis.metrics import _check, kmeans_labels

logger = logging.getLogger(__name__)

LEARNERS = ("normalised", "balanced")
DEFAULT_LEARNER = "normalised"
GUIDE_K_FACTORS = (1, 3, 5)  # GUIDE: K = classes x {1, 3, 5}
FOLD_COLUMNS = ["model", "block", "timestep", "heldout_domain", "n_train", "n_test", "n_pseudo_domains", "learner",
                "acc_one_domain", "acc_pseudo_domains", "acc_true_domains", "pd_gain", "true_gain",
                "pd_nmi", "pd_homogeneity", "pd_completeness", "pd_purity", "heldout_acc",
                "in_domain_acc", "gap", "heldout_acc_aug", "aug_delta", "landing_entropy", "landing_entropy_norm",
                "top_pseudo_domain", "top_share", "heldout_seen"]
ERROR_BAR_OF = ("pd_gain", "heldout_acc", "gap")
ERROR_COLUMNS = [f"{c}_{s}" for c in ERROR_BAR_OF for s in ("sd", "ci95")]
RANK_COLUMNS = FOLD_COLUMNS + ERROR_COLUMNS + ["rank_pd_gain", "rank_heldout_acc", "rank_gap"]
MEAN_ROW = "mean"
_MEANS = ("acc_one_domain", "acc_pseudo_domains", "acc_true_domains", "pd_gain", "true_gain", "pd_nmi",
          "pd_homogeneity", "pd_completeness", "pd_purity", "heldout_acc", "in_domain_acc", "gap",
          "heldout_acc_aug", "aug_delta", "landing_entropy", "landing_entropy_norm", "top_share")


def _probe(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5, random_state=seed))


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k), dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def nearest_centroid(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared Euclidean) of each row of ``X``."""
    d = ((X[:, None, :].astype(np.float64) - centroids[None, :, :]) ** 2).sum(-1)  # (n, k)
    return d.argmin(1)


def guide_ks(n_classes: int) -> list[int]:
    """GUIDE's pseudo-domain counts: K = classes x {1, 3, 5}."""
    return [int(n_classes) * f for f in GUIDE_K_FACTORS]


def t_halfwidth(values: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of the mean of ``values`` (NaN below 2 values)."""
    from scipy import stats

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def _standardise(X: np.ndarray) -> np.ndarray:
    mu, sd = X.mean(0), X.std(0)
    return (X - mu) / np.where(sd > 1e-8, sd, 1.0)


def _groupwise_standardise(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(X, dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        out[m] = _standardise(X[m].astype(np.float64))
    return out


def domain_learner_accuracy(X_train: np.ndarray, y_train: np.ndarray, groups: np.ndarray, X_test: np.ndarray,
                            y_test: np.ndarray, learner: str = DEFAULT_LEARNER, seed: int = 0) -> float:
    """Held-out class accuracy of a learner that uses the domain labels ``groups`` of the training rows.

    ``"normalised"``: each training group standardised with its own statistics, the test set with its own
    (one new domain), then a logistic regression (C=0.5). ``"balanced"``: a standardised logistic regression
    with sample weights ``n / (G * n_g)`` (every group the same total weight). One group = no domain
    information (the reference of ``pd_gain``)."""
    groups = np.asarray(groups)
    if learner == "normalised":
        clf = LogisticRegression(max_iter=500, C=0.5, random_state=seed)
        clf.fit(_groupwise_standardise(X_train, groups), y_train)
        return float((clf.predict(_standardise(X_test.astype(np.float64))) == y_test).mean())
    if learner == "balanced":
        _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
        w = len(groups) / (len(counts) * counts[inv])
        clf = _probe(seed).fit(X_train, y_train, logisticregression__sample_weight=w)
        return float((clf.predict(X_test) == y_test).mean())
    raise ValueError(f"learner must be one of {list(LEARNERS)}, got {learner!r}")


def cluster_agreement(domains: Sequence[str], clusters: Sequence[int]) -> dict[str, float]:
    """Pseudo-domains against true domains: NMI (arithmetic), homogeneity, completeness (sklearn's
    definitions: conditional entropies H(domain | cluster), H(cluster | domain), normalised) and purity
    (share of images in their cluster's majority domain; chance = the largest domain's share at K = 1)."""
    d = np.asarray(domains)
    c = np.asarray(clusters)
    h, comp, _ = homogeneity_completeness_v_measure(d, c)
    ct = pd.crosstab(c, d).to_numpy()
    return {"nmi": float(normalized_mutual_info_score(d, c)), "homogeneity": float(h),
            "completeness": float(comp), "purity": float(ct.max(1).sum() / max(1, ct.sum()))}


@dataclass
class HeldOut:
    """One held-out domain of one setting."""

    domain: str
    train_idx: np.ndarray  # rows of the feature set used for training (the other domains)
    test_idx: np.ndarray  # rows of the held-out domain
    pseudo_train: np.ndarray  # (n_train,) pseudo-domain of each training image
    pseudo_test: np.ndarray  # (n_test,) nearest centroid of each held-out image
    centroids: np.ndarray  # (k, n_features)
    pseudo_names: list[str]  # per pseudo-domain: "pd<i> (mostly <domain>)"
    shares: np.ndarray  # (k,) share of the held-out images landing on each pseudo-domain
    entropy: float  # nats
    heldout_acc: float
    in_domain_acc: float
    heldout_acc_aug: float
    learner: str = DEFAULT_LEARNER
    acc_one_domain: float = float("nan")
    acc_pseudo_domains: float = float("nan")
    acc_true_domains: float = float("nan")
    agreement: dict = field(default_factory=dict)  # cluster_agreement of the training images

    @property
    def gap(self) -> float:
        return self.in_domain_acc - self.heldout_acc

    @property
    def aug_delta(self) -> float:
        return self.heldout_acc_aug - self.heldout_acc

    @property
    def pd_gain(self) -> float:
        return self.acc_pseudo_domains - self.acc_one_domain

    @property
    def true_gain(self) -> float:
        return self.acc_true_domains - self.acc_one_domain

    @property
    def entropy_norm(self) -> float:
        k = len(self.shares)
        return float(self.entropy / np.log(k)) if k > 1 else 0.0


def _fold(X: np.ndarray, d: np.ndarray, y: np.ndarray, heldout: str, train: np.ndarray, k: int, seed: int,
          n_splits: int, learner: str, in_domain: bool = True) -> HeldOut:
    test = np.flatnonzero(d == heldout)
    if len(np.unique(y[train])) < 2:
        raise ValueError(f"holding out {heldout!r} leaves fewer than 2 classes to train on")
    k = min(int(k), len(train))
    pseudo, cent = kmeans_labels(X[train], k, seed)
    pseudo = np.asarray(pseudo, dtype=np.int64)
    cent = np.asarray(cent, dtype=np.float32)
    land = nearest_centroid(X[test], cent)
    shares = np.bincount(land, minlength=k) / max(1, len(land))
    nz = shares[shares > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    pnames = []
    for c in range(k):
        members = d[train][pseudo == c]
        top = pd.Series(members).value_counts().idxmax() if len(members) else "empty"
        pnames.append(f"pd{c} (mostly {top})")
    clf = _probe(seed).fit(X[train], y[train])
    heldout_acc = float((clf.predict(X[test]) == y[test]).mean())
    in_dom = float("nan")
    if in_domain:
        _, counts = np.unique(y[train], return_counts=True)
        splits = int(min(n_splits, counts.min()))
        if splits >= 2:
            cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
            in_dom = float(cross_val_score(_probe(seed), X[train], y[train], cv=cv).mean())
    aug = float("nan")
    if in_domain:  # the full fold; the sweeps report neither in-domain accuracy nor the augmented probe
        Xa_train = np.hstack([X[train], _one_hot(pseudo, k)])
        Xa_test = np.hstack([X[test], _one_hot(land, k)])
        aug = float((_probe(seed).fit(Xa_train, y[train]).predict(Xa_test) == y[test]).mean())
    acc = {name: domain_learner_accuracy(X[train], y[train], g, X[test], y[test], learner, seed)
           for name, g in (("one", np.zeros(len(train), dtype=np.int64)), ("pseudo", pseudo), ("true", d[train]))}
    return HeldOut(heldout, train, test, pseudo, land, cent, pnames, shares, entropy, heldout_acc, in_dom, aug,
                   learner, acc["one"], acc["pseudo"], acc["true"], cluster_agreement(d[train], pseudo))


def _present(d: np.ndarray, domain_names: Sequence[str] | None) -> list[str]:
    names = list(domain_names) if domain_names is not None else sorted(set(d.tolist()))
    present = [n for n in names if (d == n).any()]
    if len(present) < 3:
        raise ValueError(f"leave-one-domain-out needs at least 3 domains (2 to train on), got {len(present)}: "
                         f"{present}")
    return present


def _check_learner(learner: str) -> None:
    if learner not in LEARNERS:
        raise ValueError(f"learner must be one of {list(LEARNERS)}, got {learner!r}")


def leave_one_domain_out(features: np.ndarray, domains: Sequence[str], classes: Sequence[str], *,
                         n_clusters: int | None = None, seed: int = 0, n_splits: int = 5,
                         domain_names: Sequence[str] | None = None, learner: str = DEFAULT_LEARNER
                         ) -> list[HeldOut]:
    """The what-if for each domain held out in turn (see the module docstring).

    ``n_clusters``: pseudo-domains fitted on the other domains (default: the number of classes, GUIDE's
    K = classes x 1; at least 2). ``seed``: k-means, the cross-validation split and the logistic regressions.
    ``learner``: the domain-using learner of ``pd_gain`` (:data:`LEARNERS`).
    """
    _check_learner(learner)
    X, d = _check(features, np.asarray(domains))
    y = np.asarray(classes)
    present = _present(d, domain_names)
    k = int(n_clusters or max(2, len(np.unique(y))))
    return [_fold(X, d, y, h, np.flatnonzero(d != h), k, seed, n_splits, learner) for h in present]


def _summary(folds: Sequence[HeldOut], **extra) -> dict:
    row = dict(extra)
    for name in ("heldout_acc", "pd_gain", "true_gain", "acc_pseudo_domains", "acc_one_domain"):
        v = [getattr(f, name) for f in folds]
        row[name] = float(np.mean(v)) if len(v) else float("nan")
        row[f"{name}_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    row["pd_gain_ci95"] = t_halfwidth([f.pd_gain for f in folds])
    for name in ("nmi", "homogeneity", "completeness", "purity"):
        row[f"pd_{name}"] = float(np.mean([f.agreement[name] for f in folds]))
    row["n_folds"] = len(folds)
    return row


def k_sweep(features: np.ndarray, domains: Sequence[str], classes: Sequence[str], ks: Sequence[int] | None = None,
            *, seed: int = 0, learner: str = DEFAULT_LEARNER, domain_names: Sequence[str] | None = None
            ) -> pd.DataFrame:
    """Leave-one-domain-out at each K (default: GUIDE's classes x {1, 3, 5} and the number of training
    domains): one row per K with the fold means, fold standard deviations (``*_sd``) and the 95 % t interval
    of ``pd_gain``, and the pseudo-domains' NMI / homogeneity / completeness / purity against the true
    training domains. ``n_pseudo_domains`` is the K used: ``k_asked`` capped at the number of training images."""
    _check_learner(learner)
    X, d = _check(features, np.asarray(domains))
    y = np.asarray(classes)
    present = _present(d, domain_names)
    ks = sorted(set(int(k) for k in (ks or [len(present) - 1, *guide_ks(len(np.unique(y)))])))
    if any(k < 1 for k in ks):
        raise ValueError(f"every K must be at least 1, got {ks}")
    rows = []
    for k in ks:
        folds = [_fold(X, d, y, h, np.flatnonzero(d != h), k, seed, 5, learner, in_domain=False) for h in present]
        rows.append(_summary(folds, n_pseudo_domains=min(len(f.centroids) for f in folds), k_asked=k, learner=learner,
                             k_rule=("classes x %d" % (k // len(np.unique(y)))
                                     if k in guide_ks(len(np.unique(y))) else
                                     "training domains" if k == len(present) - 1 else "custom")))
    return pd.DataFrame(rows)


def train_domain_sweep(features: np.ndarray, domains: Sequence[str], classes: Sequence[str], *,
                       n_clusters: int | None = None, seed: int = 0, learner: str = DEFAULT_LEARNER,
                       max_subsets: int = 10, domain_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Held-out results against the number of training domains m (2 .. D-1): for every held-out domain,
    every m-subset of the other domains (at most ``max_subsets`` per held-out domain and m, a seeded draw);
    one row per m with the means and standard deviations over (held-out domain, subset) folds."""
    _check_learner(learner)
    X, d = _check(features, np.asarray(domains))
    y = np.asarray(classes)
    present = _present(d, domain_names)
    k = int(n_clusters or max(2, len(np.unique(y))))
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(2, len(present)):
        folds = []
        for h in present:
            subsets = list(itertools.combinations([x for x in present if x != h], m))
            if len(subsets) > max_subsets:
                subsets = [subsets[i] for i in sorted(rng.choice(len(subsets), max_subsets, replace=False))]
            for sub in subsets:
                train = np.flatnonzero(np.isin(d, list(sub)))
                folds.append(_fold(X, d, y, h, train, k, seed, 5, learner, in_domain=False))
        rows.append(_summary(folds, n_train_domains=m, n_pseudo_domains=k, learner=learner))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- what the backbone was trained on


def _base_name(dataset: str) -> str:
    return str(dataset).split(":")[0].strip().lower()


def backbone_training_data(model: str) -> dict[str, list[str] | None] | None:
    """The training data a model folder records about itself: ``{dataset name: [domains] or None}`` from
    ``training_log.json`` (``train_data``: name -> {"domains": [...]}) or ``config.json`` (``train_data``: a
    list of names, domains not listed). ``{}`` for a built-in without weights (nothing learned), None when the
    model has no such record (unknown)."""
    try:
        from core.backbones.registry import resolve_folder

        folder, _ = resolve_folder(model)
    except Exception:  # an unknown or missing model: nothing recorded
        return None
    if folder is None:  # a built-in without weights (the pixels baseline): it learned from nothing
        return {}
    for name in ("training_log.json", "config.json"):
        p = Path(folder) / name
        if not p.is_file():
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        td = data.get("train_data") if isinstance(data, dict) else None
        if isinstance(td, dict):
            return {str(k): (list(v.get("domains")) if isinstance(v, dict) and v.get("domains") else None)
                    for k, v in td.items()}
        if isinstance(td, list):
            return {str(k): None for k in td}
    return None


def heldout_seen(model: str, dataset: str, domains: Sequence[str]) -> dict[str, bool | None]:
    """Per held-out domain: True when the backbone's recorded training data hold that domain of this dataset
    (matched by the dataset's base name), False when the record says otherwise, None when nothing is recorded."""
    rec = backbone_training_data(model)
    if rec is None:
        return {h: None for h in domains}
    base = _base_name(dataset)
    seen: set[str] = set()
    all_of = False
    for name, doms in rec.items():
        if _base_name(name) == base:
            if doms is None:
                all_of = True
            else:
                seen |= set(doms)
    return {h: bool(all_of or h in seen) for h in domains}


def seen_warning(result: "DGResult") -> str | None:
    """A sentence to show when the backbone was trained on (some of) the held-out domains, or its training
    data are unknown; None when its record says it saw none of them."""
    seen = result.seen
    if not seen:
        return None
    hit = [h for h, v in seen.items() if v]
    if hit:
        return (f"{result.model} was trained on images of the held-out domain(s) {', '.join(hit)} of this dataset "
                "(its own training record says so): held-out accuracy and gain measure features that have seen "
                "those domains, not generalization to unseen ones.")
    if any(v is None for v in seen.values()):
        return (f"{result.model} records no training data: it may have seen the held-out domains (web-scale "
                "pre-training usually has photos, paintings and sketches); read the held-out numbers with that "
                "in mind.")
    return None


@dataclass
class DGResult:
    """The what-if of one setting."""

    model: str
    block: str
    timestep: int | None
    folds: list[HeldOut]
    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    n_model_images: int = 0
    dataset: str = ""
    seen: dict = field(default_factory=dict)  # held-out domain -> the backbone was trained on it (None: unknown)

    @property
    def setting(self) -> str:
        return self.block if self.timestep is None else f"{self.block} @ t={self.timestep}"

    def frame(self) -> pd.DataFrame:
        """One row per held-out domain plus the mean row (columns :data:`FOLD_COLUMNS` and, on the mean row,
        the fold error bars :data:`ERROR_COLUMNS`)."""
        rows = []
        for f in self.folds:
            top = int(np.argmax(f.shares))
            rows.append({"model": self.model, "block": self.block, "timestep": self.timestep,
                         "heldout_domain": f.domain, "n_train": len(f.train_idx), "n_test": len(f.test_idx),
                         "n_pseudo_domains": len(f.centroids), "learner": f.learner,
                         "acc_one_domain": f.acc_one_domain, "acc_pseudo_domains": f.acc_pseudo_domains,
                         "acc_true_domains": f.acc_true_domains, "pd_gain": f.pd_gain, "true_gain": f.true_gain,
                         **{f"pd_{k}": v for k, v in f.agreement.items()},
                         "heldout_acc": f.heldout_acc, "in_domain_acc": f.in_domain_acc, "gap": f.gap,
                         "heldout_acc_aug": f.heldout_acc_aug, "aug_delta": f.aug_delta,
                         "landing_entropy": f.entropy, "landing_entropy_norm": f.entropy_norm,
                         "top_pseudo_domain": f.pseudo_names[top], "top_share": float(f.shares[top]),
                         "heldout_seen": self.seen.get(f.domain)})
        df = pd.DataFrame(rows, columns=FOLD_COLUMNS + ERROR_COLUMNS)
        mean = {c: df[c].mean() for c in _MEANS}
        for c in ERROR_BAR_OF:
            mean[f"{c}_sd"] = float(df[c].std(ddof=1)) if len(df) > 1 else float("nan")
            mean[f"{c}_ci95"] = t_halfwidth(df[c].tolist())
        seen = [self.seen.get(f.domain) for f in self.folds]
        mean.update(model=self.model, block=self.block, timestep=self.timestep, heldout_domain=MEAN_ROW,
                    n_train=int(df["n_train"].mean()), n_test=int(df["n_test"].sum()), top_pseudo_domain="",
                    n_pseudo_domains=int(df["n_pseudo_domains"].iloc[0]), learner=self.folds[0].learner,
                    heldout_seen=True if any(v for v in seen) else (None if not seen or None in seen else False))
        return pd.concat([df, pd.DataFrame([mean], columns=FOLD_COLUMNS + ERROR_COLUMNS)], ignore_index=True)

    def landing(self) -> pd.DataFrame:
        """Held-out domain (rows) x pseudo-domain (columns): share of the held-out images landing there."""
        rows = []
        for f in self.folds:
            rows.append({"held-out domain": f.domain, **{n: float(s) for n, s in zip(f.pseudo_names, f.shares)},
                         "entropy (nats)": f.entropy, "entropy / log K": f.entropy_norm})
        return pd.DataFrame(rows)

    def fold(self, domain: str) -> HeldOut:
        for f in self.folds:
            if f.domain == domain:
                return f
        raise ValueError(f"no held-out domain {domain!r}; have {[f.domain for f in self.folds]}")


def dg_whatif(fs, block: str, *, uses_timestep: bool = True, n_clusters: int | None = None,
              seed: int = 0, learner: str = DEFAULT_LEARNER) -> DGResult:
    """:func:`leave_one_domain_out` on one block of a :class:`core.engine.extract.FeatureSet`
    (``uses_timestep=False`` for a model without a timestep: the setting then has none)."""
    if block not in fs.features:
        raise ValueError(f"unknown block {block!r}; the feature set has {list(fs.features)}")
    folds = leave_one_domain_out(fs.features[block], fs.domains, fs.classes, n_clusters=n_clusters, seed=seed,
                                 domain_names=fs.domain_names, learner=learner)
    return DGResult(model=fs.config.model, block=block, timestep=int(fs.config.timestep) if uses_timestep else None,
                    folds=folds, ids=list(fs.ids), paths=list(fs.paths), domains=list(fs.domains),
                    classes=list(fs.classes), n_model_images=fs.n_unet_images, dataset=fs.config.dataset,
                    seen=heldout_seen(fs.config.model, fs.config.dataset, [f.domain for f in folds]))


RANK_BY = ("pd_gain", "heldout_acc")


def rank_frame(results: Sequence[DGResult], rank_by: str = "pd_gain") -> pd.DataFrame:
    """Every setting's rows, the settings ordered by ``rank_by`` (default: mean ``pd_gain``, the pseudo-domain
    quality GUIDE relies on; ``"heldout_acc"``: mean held-out accuracy), best first; the mean rows carry
    ``rank_pd_gain`` (1 = largest mean gain), ``rank_heldout_acc`` (1 = highest mean held-out accuracy) and
    ``rank_gap`` (1 = smallest mean gap)."""
    if not results:
        raise ValueError("no settings to rank")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {list(RANK_BY)}, got {rank_by!r}")
    frames = [r.frame() for r in results]
    means = pd.DataFrame([f.iloc[-1] for f in frames]).reset_index(drop=True)
    ranks = {"rank_pd_gain": means["pd_gain"].rank(ascending=False, method="min").astype(int),
             "rank_heldout_acc": means["heldout_acc"].rank(ascending=False, method="min").astype(int),
             "rank_gap": means["gap"].rank(ascending=True, method="min").astype(int)}
    first = ranks[f"rank_{rank_by}"]
    order = sorted(range(len(frames)), key=lambda i: (first[i], ranks["rank_heldout_acc"][i], ranks["rank_gap"][i], i))
    out = []
    for i in order:
        f = frames[i].copy()
        for name, r in ranks.items():
            f[name] = pd.array([pd.NA] * (len(f) - 1) + [int(r[i])], dtype="Int64")
        out.append(f)
    df = pd.concat(out, ignore_index=True)
    df["timestep"] = df["timestep"].astype("Int64")
    return df[RANK_COLUMNS]


def mean_rows(ranking: pd.DataFrame, rank_by: str | None = None) -> pd.DataFrame:
    """The mean rows of :func:`rank_frame`, best first (by ``rank_by``, default the ranking's own order)."""
    means = ranking[ranking["heldout_domain"] == MEAN_ROW]
    if rank_by is None:
        return means.reset_index(drop=True)
    return means.sort_values([f"rank_{rank_by}", "rank_heldout_acc", "rank_gap"]).reset_index(drop=True)


def rank_settings(
    dataset: str,
    models: Sequence[str],
    blocks: Sequence[str] | str | None = None,
    timesteps: Sequence[int] = (50,),
    *,
    max_per_domain: int | None = None,
    seed: int = 0,
    analysis_seed: int = 0,
    n_clusters: int | None = None,
    learner: str = DEFAULT_LEARNER,
    rank_by: str = "pd_gain",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    loaded: dict | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, str, int | None], DGResult]]:
    """The what-if for every (model, block, timestep): the ranking (:func:`rank_frame`) and the results.

    ``blocks``: ``None``/``"all"`` = every block of each model; a model with none of the given blocks (a
    baseline) uses all of its own. ``seed``: image sample and diffusion noise (part of the feature cache
    key); ``analysis_seed``: k-means, cross-validation split and probes."""
    from core.backbones.registry import load_backbone as load_model
    from core.engine.extract import ExtractionConfig, get_features

    _check_learner(learner)
    loaded = dict(loaded or {})
    wanted = None if blocks is None or blocks == "all" else (
        [b.strip() for b in blocks.split(",") if b.strip()] if isinstance(blocks, str) else list(blocks))
    plan = []
    for m in models:
        model = loaded.get(m) or load_model(m, device, dtype)
        loaded[m] = model
        bl = list(model.blocks) if not wanted else ([b for b in wanted if b in model.blocks] or list(model.blocks))
        ts = [int(t) for t in dict.fromkeys(timesteps)] if model.uses_timestep else [None]
        plan += [(m, model, bl, t) for t in ts]
    from core.analysis.report import check_blocks

    check_blocks(wanted, loaded)
    results: dict[tuple[str, str, int | None], DGResult] = {}
    for i, (m, model, bl, t) in enumerate(plan):
        cfg = ExtractionConfig(dataset=dataset, model=m, timestep=50 if t is None else t, seed=seed,
                               max_per_domain=max_per_domain)
        step = (lambda d, n, i=i: progress(i * n + d, len(plan) * n)) if progress else None
        fs = get_features(cfg, bl, device=device, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                          progress=step, model=model)
        for b in bl:
            r = dg_whatif(fs, b, uses_timestep=t is not None, n_clusters=n_clusters, seed=analysis_seed,
                          learner=learner)
            results[(m, b, t)] = r
    return rank_frame(list(results.values()), rank_by), results


def layout_labels(result: DGResult, domain: str) -> tuple[list[str], list[str]]:
    """Point labels for a layout of every image of one fold: training images by their pseudo-domain,
    held-out images by the pseudo-domain they land on; and the category order."""
    f = result.fold(domain)
    labels = [""] * (len(f.train_idx) + len(f.test_idx))
    for j, i in enumerate(f.train_idx):
        labels[i] = f"train · {f.pseudo_names[f.pseudo_train[j]]}"
    for j, i in enumerate(f.test_idx):
        labels[i] = f"held-out {domain} → {f.pseudo_names[f.pseudo_test[j]]}"
    cats = [f"train · {n}" for n in f.pseudo_names] + [f"held-out {domain} → {n}" for n in f.pseudo_names]
    return labels, cats
