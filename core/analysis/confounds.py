"""Confounds: is a "domain" score reading the domain, or the class that comes with it?

When classes are spread unevenly over domains (TerraIncognita: some animals only at some camera locations),
features that encode only the class still separate the domains. For one feature matrix (n_images,
n_features) with domain and class labels, :func:`confounds` reports:

* **class-only domain accuracy** (``class_only_acc``): the accuracy of guessing each image's domain from its
  class alone (the majority domain of its class), sum_c max_d n(c, d) / n. What a probe could reach with no
  domain information in the features; 1 = domain fully confounded with class.
* **domain probe, cross-validated** (stratified k-fold, a standardised logistic regression, C = 0.5):
  ``accuracy`` with its chance level ``majority_share`` (the largest domain's share of the images: always
  guessing that domain; TerraIncognita's largest domain holds ~40 %, not 25 %), and ``balanced_accuracy``
  (the mean of the per-domain recalls) with its chance level ``1 / K`` (K domains) for any guess that
  ignores the image. The per-domain confusion matrix (rows: true domain, columns: predicted; rows sum to 1,
  its diagonal = the recalls).
* **leave-class-out domain probe**: for each class c, the probe trained on the images of every other class
  and tested on class c's images (accuracy, balanced accuracy over the domains present in c, and c's own
  majority-domain share as the accuracy of an image-blind guess that knew c's domain mix; the balanced
  accuracy's chance is 1 / K for uniform guessing). A probe that reads the class cannot name the domain of a class it
  never saw; mean over classes weighted by images (``lco_accuracy``) and unweighted (``lco_balanced``).
* **domain NMI within each class**: k-means with K = the number of domains present in class c on c's images
  only, NMI (arithmetic) and AMI (adjusted for chance: 0 in expectation for random clusters, whereas NMI
  is biased upward for small classes), mean over ``n_seeds`` k-means seeds; NaN for a class seen in fewer
  than 2 domains or with fewer than 2 images per domain present. Class cannot explain a within-class
  domain NMI.

Every random step takes ``seed``. Numbers only depend on the rows given, never on their order in batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score, balanced_accuracy_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.analysis.metrics import _check, kmeans_labels

MIN_PER_DOMAIN = 2
CLASS_COLUMNS = ["class", "n_images", "n_domains", "majority_share", "lco_accuracy", "lco_balanced_accuracy",
                 "within_nmi", "within_ami"]


def _probe(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.5, random_state=seed))


def class_only_accuracy(domains: Sequence[str], classes: Sequence[str]) -> float:
    """Accuracy of predicting the domain from the class label alone: sum_c max_d n(c, d) / n."""
    ct = pd.crosstab(np.asarray(classes), np.asarray(domains)).to_numpy()
    return float(ct.max(1).sum() / ct.sum())


def majority_share(labels: Sequence[str]) -> float:
    """The largest label's share: the accuracy of always guessing it (the chance level of plain accuracy)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


@dataclass
class Confounds:
    """:func:`confounds`' result (see the module docstring for every statistic and its chance level)."""

    n_images: int
    n_domains: int
    n_classes: int
    class_only_acc: float
    accuracy: float
    balanced_accuracy: float
    majority_share: float
    balanced_chance: float
    lco_accuracy: float
    lco_balanced: float
    within_nmi: float  # image-weighted mean over the classes where it is defined
    within_ami: float
    per_class: pd.DataFrame = field(repr=False, default=None)  # CLASS_COLUMNS
    confusion: pd.DataFrame = field(repr=False, default=None)  # true domain x predicted domain, rows sum to 1
    notes: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        """One row per statistic: value, chance level and what it checks."""
        rows = [
            ("class-only domain accuracy", self.class_only_acc, self.majority_share,
             "domain guessed from the class label alone (1 = fully confounded)"),
            ("domain probe accuracy", self.accuracy, self.majority_share,
             "cross-validated; chance = the largest domain's share"),
            ("domain probe balanced accuracy", self.balanced_accuracy, self.balanced_chance,
             "mean per-domain recall; chance = 1 / domains"),
            ("leave-class-out probe accuracy", self.lco_accuracy, float("nan"),
             "trained on the other classes; chance per class in the per-class table"),
            ("leave-class-out balanced accuracy", self.lco_balanced, self.balanced_chance,
             "mean over classes of the mean recall over the domains present in the class; chance = 1 / domains "
             "(uniform guessing)"),
            ("domain NMI within classes", self.within_nmi, 0.0, "k-means within each class; NMI is biased up "
                                                                "for small classes, see AMI"),
            ("domain AMI within classes", self.within_ami, 0.0, "adjusted for chance: 0 for random clusters"),
        ]
        return pd.DataFrame(rows, columns=["statistic", "value", "chance", "meaning"])


def confounds(features: np.ndarray, domains: Sequence[str], classes: Sequence[str], *, seed: int = 0,
              n_splits: int = 5, n_seeds: int = 3, max_points: int = 20_000) -> Confounds:
    """The confound checks of one feature matrix (n_images, n_features) (module docstring).

    ``max_points``: above this many images every statistic runs on a seeded sample stratified by
    (domain, class) cell proportions (a note says so)."""
    X, d = _check(features, np.asarray(domains))
    y = np.asarray(classes)
    if len(y) != len(d):
        raise ValueError(f"{len(d)} domain labels but {len(y)} class labels")
    notes = []
    if len(X) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(X), max_points, replace=False))
        X, d, y = X[idx], d[idx], y[idx]
        notes.append(f"computed on a seeded random sample of {max_points:,} images")
    doms = sorted(set(d.tolist()))
    if len(doms) < 2:
        raise ValueError(f"confound checks need at least 2 domains, got {doms}")
    n = len(d)
    _, dcounts = np.unique(d, return_counts=True)
    splits = int(min(n_splits, dcounts.min()))
    if splits < 2:
        raise ValueError(f"a cross-validated domain probe needs at least 2 images per domain; the smallest domain "
                         f"has {dcounts.min()}")
    cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    pred = cross_val_predict(_probe(seed), X, d, cv=cv)
    conf = pd.crosstab(pd.Categorical(d, doms), pd.Categorical(pred, doms), normalize="index", dropna=False)
    conf.index.name, conf.columns.name = "true domain", "predicted domain"

    rows = []
    classes_ = sorted(set(y.tolist()))
    for c in classes_:
        m = y == c
        dc = d[m]
        present, counts = np.unique(dc, return_counts=True)
        row = {"class": c, "n_images": int(m.sum()), "n_domains": len(present),
               "majority_share": float(counts.max() / counts.sum())}
        rest = ~m
        if len(np.unique(d[rest])) >= 2:
            clf = _probe(seed).fit(X[rest], d[rest])
            p = clf.predict(X[m])
            row["lco_accuracy"] = float((p == dc).mean())
            row["lco_balanced_accuracy"] = float(np.mean([(p[dc == x] == x).mean() for x in present]))
        else:
            row["lco_accuracy"] = row["lco_balanced_accuracy"] = float("nan")
        if len(present) >= 2 and counts.min() >= MIN_PER_DOMAIN:
            labs = [kmeans_labels(X[m], len(present), seed + s)[0] for s in range(n_seeds)]
            row["within_nmi"] = float(np.mean([normalized_mutual_info_score(dc, lab) for lab in labs]))
            row["within_ami"] = float(np.mean([adjusted_mutual_info_score(dc, lab) for lab in labs]))
        else:
            row["within_nmi"] = row["within_ami"] = float("nan")
        rows.append(row)
    per = pd.DataFrame(rows, columns=CLASS_COLUMNS)
    ok = per["within_nmi"].notna()
    if not (per["n_domains"] >= 2).any():
        notes.append("no class has images of 2 or more domains: domain is fully confounded with class, so no "
                     "within-class domain score exists")
    elif not ok.any():
        notes.append(f"no class has {MIN_PER_DOMAIN}+ images in each of 2 or more domains, so no within-class "
                     "domain NMI was computed; use more images per domain (e.g. --max-per-domain)")
    w = per.loc[ok, "n_images"].to_numpy(float)
    lco = per["lco_accuracy"].notna()
    return Confounds(
        n_images=n, n_domains=len(doms), n_classes=len(classes_), class_only_acc=class_only_accuracy(d, y),
        accuracy=float((pred == d).mean()), balanced_accuracy=float(balanced_accuracy_score(d, pred)),
        majority_share=majority_share(d), balanced_chance=1.0 / len(doms),
        lco_accuracy=float(np.average(per.loc[lco, "lco_accuracy"], weights=per.loc[lco, "n_images"]))
        if lco.any() else float("nan"),
        lco_balanced=float(per.loc[lco, "lco_balanced_accuracy"].mean()) if lco.any() else float("nan"),
        within_nmi=float(np.average(per.loc[ok, "within_nmi"], weights=w)) if ok.any() else float("nan"),
        within_ami=float(np.average(per.loc[ok, "within_ami"], weights=w)) if ok.any() else float("nan"),
        per_class=per, confusion=conf, notes=notes)


def confounds_of(fs, block: str, **kwargs) -> Confounds:
    """:func:`confounds` on one block of a :class:`core.engine.extract.FeatureSet`."""
    if block not in fs.features:
        raise ValueError(f"unknown block {block!r}; the feature set has {list(fs.features)}")
    return confounds(fs.features[block], fs.domains, fs.classes, **kwargs)
