"""GUIDE-style pseudo-domains: k-means clusters of the features, their contingency with the true domains and
classes, and exemplar images per cluster."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


logger = logging.getLogger(__name__)

# -------------------------------------------------------------------------------------- pseudo-domains


@dataclass
class PseudoDomains:
    """GUIDE-style pseudo-domains: k-means (k-means++) clusters of the features."""

    labels: np.ndarray  # (n_samples,) cluster of each image, 0..k-1
    centroids: np.ndarray  # (k, n_features)
    exemplars: list[np.ndarray]  # per cluster: row indices nearest to its centroid, nearest first
    by_domain: pd.DataFrame  # (k, n_domains) counts
    by_class: pd.DataFrame  # (k, n_classes) counts
    domain_nmi: float  # NMI(clusters, domains)
    class_nmi: float  # NMI(clusters, classes)

    def summary(self) -> pd.DataFrame:
        """Per cluster: size, its most frequent domain and class and their shares."""
        rows = []
        for c, name in enumerate(self.by_domain.index):
            d, k = self.by_domain.loc[name], self.by_class.loc[name]
            n = int(d.sum())
            rows.append({"cluster": c, "images": n,
                         "top domain": str(d.idxmax()) if n else "", "domain share": float(d.max() / n) if n else 0.0,
                         "top class": str(k.idxmax()) if n else "", "class share": float(k.max() / n) if n else 0.0})
        return pd.DataFrame(rows)

    def assignments(self, ids: Sequence[str], paths: Sequence[str], domains: Sequence[str],
                    classes: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame({"id": list(ids), "path": list(paths), "domain": list(domains),
                             "class": list(classes), "cluster": self.labels.astype(int)})


def pseudo_domains(
    features: np.ndarray,
    n_clusters: int,
    domains: Sequence[str],
    classes: Sequence[str],
    *,
    random_state: int = 0,
    n_exemplars: int = 6,
    domain_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> PseudoDomains:
    """k-means with ``n_clusters`` on ``features`` (n_samples, n_features), its contingency tables with
    the true domains and classes, and the ``n_exemplars`` images nearest to each centroid."""
    from sklearn.metrics import normalized_mutual_info_score

    from core.analysis.clustering import kmeans_labels

    X = np.asarray(features, dtype=np.float32)
    if len(X) != len(domains) or len(X) != len(classes):
        raise ValueError(f"{len(X)} feature rows but {len(domains)} domains and {len(classes)} classes")
    labels, centroids = kmeans_labels(X, n_clusters, random_state)
    labels = np.asarray(labels, dtype=np.int64)
    exemplars = []
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        dist = ((X[idx] - centroids[c]) ** 2).sum(axis=1)  # (n_c,)
        exemplars.append(idx[np.argsort(dist, kind="stable")[:n_exemplars]])
    clusters = pd.Categorical([f"cluster {c}" for c in labels], categories=[f"cluster {c}" for c in range(n_clusters)])

    def table(values, names, name):
        cat = pd.Categorical(list(values), categories=list(names) if names is not None else sorted(set(values)))
        t = pd.crosstab(clusters, cat, dropna=False)
        t.index.name, t.columns.name = "pseudo-domain", name
        return t

    return PseudoDomains(
        labels=labels, centroids=np.asarray(centroids, dtype=np.float32), exemplars=exemplars,
        by_domain=table(domains, domain_names, "domain"), by_class=table(classes, class_names, "class"),
        domain_nmi=float(normalized_mutual_info_score(list(domains), labels)),
        class_nmi=float(normalized_mutual_info_score(list(classes), labels)),
    )


def centroid_frame(centroids: np.ndarray) -> pd.DataFrame:
    """Centroids (k, n_features) as a table: one row per cluster, columns f0..f{n-1}."""
    c = np.asarray(centroids)
    df = pd.DataFrame(c, columns=[f"f{j}" for j in range(c.shape[1])])
    df.insert(0, "cluster", np.arange(len(c)))
    return df
