"""How far to trust a 2-D layout: trustworthiness and k-NN accuracy of the domain label, 2-D vs full space.

* **Trustworthiness** (:func:`sklearn.manifold.trustworthiness`, Venna & Kaski): 1 when every point's ``k``
  nearest neighbours in the layout are also near it in the full feature space; it drops when the layout
  puts together points that are far apart. Its cost is quadratic in the number of points, so above
  :data:`TRUST_MAX_POINTS` it is computed on a seeded random sample of that size
  (``n_trust`` says how many points it used).
* **k-NN accuracy** of the domain label, leave-one-out: each image gets the majority domain of its ``k``
  nearest other images (ties go to the label that comes first, as scikit-learn's ``KNeighborsClassifier``
  does), once in the layout and once in the full feature space. When the 2-D figure is much lower than the
  full-space one, the picture hides domain structure the numbers see; when it is higher, the layout
  exaggerates it. Above :data:`KNN_MAX_POINTS` both accuracies use one seeded random sample (``n_knn``).
* A layout fitted on a sample of a large set (the other rows NaN) is judged on the points it placed.

Both use Euclidean distance on the features as given (what t-SNE and UMAP preserve, after their PCA-50).
Results are cached on disk like the scores (keyed by the content of the features, the layout and the labels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.engine.cache import FeatureCache, stable_hash

TRUST_MAX_POINTS = 2000  # trustworthiness builds n x n distance ranks: 2000 points ~ 0.1 s, 20k would be minutes
KNN_MAX_POINTS = 20_000  # brute-force k-NN is quadratic too: 20k x 1280 ~ seconds; DomainNet's 586k would be hours
DEFAULT_K = 10


@dataclass(frozen=True)
class Faithfulness:
    trustworthiness: float
    knn_acc_2d: float
    knn_acc_full: float
    k: int  # neighbours used by both measures
    n_trust: int  # points trustworthiness was computed on (a sample above TRUST_MAX_POINTS)
    n_images: int  # images the layout places (a layout fitted on a sample leaves the others NaN: not judged)
    chance: float  # share of the most frequent label: the accuracy of always guessing it
    n_knn: int = 0  # points the k-NN accuracies were computed on (a sample above KNN_MAX_POINTS)

    def to_dict(self) -> dict:
        return asdict(self)


def _codes(labels) -> np.ndarray:
    _, codes = np.unique(np.asarray([str(x) for x in labels]), return_inverse=True)
    return codes.astype(np.int64)


def knn_accuracy(X: np.ndarray, labels, k: int = DEFAULT_K) -> float:
    """Leave-one-out accuracy of a ``k``-nearest-neighbour majority vote (Euclidean) predicting ``labels``."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32)
    y = _codes(labels)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"need (n_samples, n_features) features and one label per row, got {X.shape} and {len(y)}")
    n = len(X)
    if n < 3:
        raise ValueError(f"need at least 3 points for a k-NN accuracy, got {n}")
    k = int(min(k, n - 1))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    nbrs = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(return_distance=False)  # (n, k), self excluded
    votes = np.zeros((n, int(y.max()) + 1), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), k), y[nbrs].ravel()), 1)
    return float((votes.argmax(axis=1) == y).mean())


def layout_faithfulness(features: np.ndarray, embedding: np.ndarray, labels, k: int = DEFAULT_K,
                        random_state: int = 0, max_trust_points: int = TRUST_MAX_POINTS,
                        max_knn_points: int = KNN_MAX_POINTS) -> Faithfulness:
    """Trustworthiness of ``embedding`` (n, 2) with respect to ``features`` (n, d) and the k-NN accuracy of
    ``labels`` in both spaces. Rows the layout leaves NaN (a t-SNE / UMAP fitted on a sample of a large set)
    are not judged; above ``max_knn_points`` / ``max_trust_points`` placed rows, seeded random samples are."""
    from sklearn.manifold import trustworthiness

    X = np.asarray(features, dtype=np.float32)
    E = np.asarray(embedding, dtype=np.float32)
    if X.ndim != 2 or E.ndim != 2 or len(X) != len(E):
        raise ValueError(f"features {X.shape} and layout {E.shape} must be 2-D with the same number of rows")
    y = _codes(labels)
    if len(y) != len(X):
        raise ValueError(f"{len(X)} rows but {len(y)} labels")
    placed = np.isfinite(E).all(axis=1)
    if not placed.all():  # a layout of a sample: judge the points it placed
        X, E, y = X[placed], E[placed], y[placed]
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or inf; recompute them in float32")
    n = len(X)
    if n < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} placed images to judge a layout, got {n}")
    rng = np.random.default_rng(random_state)
    kn = np.arange(n) if n <= max_knn_points else np.sort(rng.choice(n, max_knn_points, replace=False))
    idx = np.arange(n)
    if n > max_trust_points:
        idx = np.sort(rng.choice(n, max_trust_points, replace=False))
    kt = int(max(1, min(k, len(idx) // 2 - 1)))  # scikit-learn requires k < n / 2
    trust = float(trustworthiness(X[idx], E[idx], n_neighbors=kt))
    kk = int(min(k, len(kn) - 1))
    return Faithfulness(trustworthiness=trust, knn_acc_2d=knn_accuracy(E[kn], y[kn], kk),
                        knn_acc_full=knn_accuracy(X[kn], y[kn], kk), k=kk, n_trust=int(len(idx)), n_images=int(n),
                        chance=float(np.bincount(y).max() / n), n_knn=int(len(kn)))


MIN_POINTS = 6  # fewer placed images: trustworthiness (k < n / 2) and a k-NN vote have too few neighbours


def not_judged(n_images: int) -> Faithfulness:
    """The answer for a layout of fewer than :data:`MIN_POINTS` placed images: nothing judged (NaN, ``k = 0``),
    so a view of a tiny dataset still shows its layout and scores (Explore says why there is no number)."""
    nan = float("nan")
    return Faithfulness(nan, nan, nan, k=0, n_trust=0, n_images=int(n_images), chance=nan, n_knn=0)


def from_arrays(hit: dict) -> Faithfulness:
    """A :class:`Faithfulness` from its cached arrays."""
    ints = ("k", "n_trust", "n_images", "n_knn")
    return Faithfulness(**{f: (int(v) if f in ints else float(v)) for f, v in hit.items()})


def cached_faithfulness(features: np.ndarray, embedding: np.ndarray, labels, k: int = DEFAULT_K,
                        random_state: int = 0, cache: FeatureCache | None = None) -> Faithfulness:
    """:func:`layout_faithfulness` with an on-disk cache keyed by the content of all three inputs."""
    from core.analysis.reduce import features_digest

    cache = cache or FeatureCache()
    key = stable_hash({"features": features_digest(features), "layout": features_digest(embedding),
                       "labels": stable_hash([str(x) for x in labels], 32), "k": int(k), "seed": int(random_state),
                       "max": TRUST_MAX_POINTS, "knn_max": KNN_MAX_POINTS, "v": 2}, 32)
    hit = cache.load_result("faithfulness", key)
    if hit is not None:
        return from_arrays(hit)
    out = layout_faithfulness(features, embedding, labels, k, random_state)
    cache.save_result("faithfulness", key, {f: np.array(v) for f, v in out.to_dict().items()})
    return out
