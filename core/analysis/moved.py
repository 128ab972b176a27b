"""Compare: what moved between two settings A and B on the same images.

* **Neighbourhood change** of each image: the fraction of its ``k`` nearest neighbours in A's full feature
  space that are *not* among its ``k`` nearest neighbours in B's (Euclidean, self excluded, computed on the
  images both settings share). 0: the same neighbours; 1: none in common. Layouts are never used.
* **Per-domain NMI**: k-means on the full features as the domain NMI does it (K = number of domains, seeds
  0 .. ``n_seeds`` - 1); for each domain, the NMI between "is this image from the domain" and "is it in the
  cluster holding most of the domain's images", mean over the seeds. 1: the domain is exactly one cluster;
  near 0: its images are spread like everyone else's. B - A says which domain gained or lost separation.

Results are cached on disk, keyed by both feature sets' cache keys and the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from core.engine.cache import FeatureCache, stable_hash

DEFAULT_K = 10


@dataclass
class WhatMoved:
    table: pd.DataFrame  # one row per shared image, most moved first: rank, id, path, domain, class, moved, shared
    per_domain: pd.DataFrame  # domain, images, A, B, delta (per-domain NMI), mean moved
    k: int
    n_common: int


def knn_indices(X: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each row's ``k`` nearest other rows (Euclidean), nearest first."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32)
    return NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)


def neighbourhood_change(Xa: np.ndarray, Xb: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Per row, the fraction of its ``k`` nearest neighbours under ``Xa`` not among those under ``Xb``
    (rows are the same images in the same order; the feature widths may differ)."""
    Xa, Xb = np.asarray(Xa, dtype=np.float32), np.asarray(Xb, dtype=np.float32)
    if Xa.ndim != 2 or Xb.ndim != 2 or len(Xa) != len(Xb):
        raise ValueError(f"need two (n_images, n_features) matrices over the same images, got {Xa.shape} and {Xb.shape}")
    n = len(Xa)
    if n < 3:
        raise ValueError(f"need at least 3 shared images, got {n}")
    if not (np.isfinite(Xa).all() and np.isfinite(Xb).all()):
        raise ValueError("features contain NaN or inf; recompute them in float32")
    k = int(min(k, n - 1))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    na, nb = knn_indices(Xa, k), knn_indices(Xb, k)
    shared = (na[:, :, None] == nb[:, None, :]).any(axis=2).sum(axis=1)  # (n,): O(n k^2), no n x n mask
    return 1.0 - shared / k


def per_domain_nmi(X: np.ndarray, domains, domain_names=None, n_seeds: int = 5) -> dict[str, float]:
    """{domain: mean over k-means seeds of NMI(1[domain], 1[its majority cluster])}, K = number of domains."""
    from core.analysis.metrics import kmeans_labels

    X = np.asarray(X, dtype=np.float32)
    dom = np.asarray([str(d) for d in domains])
    names = list(domain_names) if domain_names is not None else sorted(set(dom.tolist()))
    present = [d for d in names if (dom == d).any()]
    k = len(present)
    if k < 2:
        raise ValueError("need at least 2 domains for per-domain NMI")
    clusterings = [kmeans_labels(X, k, s)[0] for s in range(n_seeds)]

    def one(d, c):
        inside = dom == d
        best = np.bincount(c[inside], minlength=k).argmax()
        return normalized_mutual_info_score(inside, c == best)

    return {d: float(np.mean([one(d, c) for c in clusterings])) for d in present}


def what_moved(fs_a, block_a: str, fs_b, block_b: str, k: int = DEFAULT_K, n_seeds: int = 5,
               cache: FeatureCache | None = None) -> WhatMoved:
    """Neighbourhood change per shared image (ranked, most moved first) and per-domain NMI of A and B.

    ``fs_a``/``fs_b`` are :class:`core.engine.extract.FeatureSet` s (e.g. ``explore_view(...).features``)."""
    cache = cache or FeatureCache()
    pos_b = {i: j for j, i in enumerate(fs_b.ids)}
    common = [(i, pos_b[iid]) for i, iid in enumerate(fs_a.ids) if iid in pos_b]
    if len(common) < 3:
        raise ValueError(f"the two settings share {len(common)} images; at least 3 are needed to compare neighbours")
    ia, ib = (np.array(x) for x in zip(*common))
    Xa, Xb = fs_a.features[block_a][ia], fs_b.features[block_b][ib]
    k = int(min(k, len(ia) - 1))
    key = stable_hash({"a": fs_a.cache_key, "ba": block_a, "b": fs_b.cache_key, "bb": block_b, "k": k,
                       "n_seeds": n_seeds, "ids": stable_hash([fs_a.ids[i] for i in ia], 32),
                       "v": 2}, 32)  # v2: per-domain NMI from single k-means runs per seed (n_init 1, was 3)
    domains = [fs_a.domains[i] for i in ia]
    names = [d for d in fs_a.domain_names if d in set(domains)]
    hit = cache.load_result("moved", key)
    if hit is not None:
        moved, nmi_a, nmi_b = hit["moved"], hit["nmi_a"], hit["nmi_b"]
    else:
        moved = neighbourhood_change(Xa, Xb, k)
        da, db = per_domain_nmi(Xa, domains, names, n_seeds), per_domain_nmi(Xb, domains, names, n_seeds)
        nmi_a, nmi_b = np.array([da[d] for d in names]), np.array([db[d] for d in names])
        cache.save_result("moved", key, {"moved": moved, "nmi_a": nmi_a, "nmi_b": nmi_b})
    table = pd.DataFrame({
        "id": [fs_a.ids[i] for i in ia], "path": [fs_a.paths[i] for i in ia], "domain": domains,
        "class": [fs_a.classes[i] for i in ia], "moved": np.asarray(moved, dtype=float),
        "shared": np.round((1.0 - np.asarray(moved, dtype=float)) * k).astype(int)})
    table = table.sort_values(["moved", "id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    mean_moved = table.groupby("domain")["moved"].mean()
    per_domain = pd.DataFrame({"domain": names, "images": [int((np.asarray(domains) == d).sum()) for d in names],
                               "A": nmi_a, "B": nmi_b, "delta": np.asarray(nmi_b) - np.asarray(nmi_a),
                               "mean moved": [float(mean_moved[d]) for d in names]})
    return WhatMoved(table, per_domain, k, len(ia))
