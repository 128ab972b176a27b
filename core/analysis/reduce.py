"""2-D layouts for looking (never for the numbers): PCA, t-SNE (openTSNE), UMAP; seeded and cached.

t-SNE uses openTSNE: measured here ~4x faster than scikit-learn at 20k points (bench/ re-measures it).
High-dimensional inputs are first reduced to 50 principal components (standard practice for t-SNE and
UMAP; it also makes the first t-SNE of 5k x 1280 several times faster). Barnes-Hut t-SNE (openTSNE's choice
below 10k points) runs with ``theta=0.7`` instead of openTSNE's 0.5: measured 1.3x faster at 5k points for a
0.5 % higher KL divergence and the same 10-nearest-neighbour recall (bench 5 re-measures both). t-SNE's
neighbours are found exactly (brute force, scikit-learn's threaded ``ArgKmin``) up to
:data:`TSNE_EXACT_KNN_MAX` points: at 50k points in 50 dimensions that took 7.7 s against Annoy's 13.6 s here
(bench 18), and it is exact and needs no random trees.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass

import numpy as np

from core.engine.cache import FeatureCache, stable_hash

logger = logging.getLogger(__name__)

METHODS = ("pca", "tsne", "umap")
# UMAP's spectral initialisation is slow on large, disconnected k-NN graphs (many well-separated clusters:
# 50k points 61 s vs 38 s with a PCA initialisation, bench 14), so larger sets start from PCA, as t-SNE does.
UMAP_SPECTRAL_MAX = 10_000
TSNE_EXACT_KNN_MAX = 50_000  # t-SNE's k-NN: exact up to here, openTSNE's approximate choice (Annoy) above


@dataclass(frozen=True)
class ReductionConfig:
    method: str = "pca"
    n_components: int = 2
    perplexity: float = 30.0  # t-SNE
    n_neighbors: int = 15  # UMAP
    min_dist: float = 0.1  # UMAP
    pca_dims: int = 50  # pre-reduction for t-SNE / UMAP (0 = off)
    theta: float = 0.7  # t-SNE Barnes-Hut accuracy (openTSNE's default 0.5; 0 = exact gradients)
    random_state: int = 0
    place_all: bool = False  # t-SNE / UMAP above the layout sample: place the other points with the fitted
    # embedding's transform (openTSNE / UMAP ``transform``; minutes at DomainNet scale) instead of leaving them out

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"reduction method must be one of {METHODS}, got {self.method!r}")
        if self.n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3, got {self.n_components}")
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"theta (t-SNE Barnes-Hut accuracy) must be in [0, 1], got {self.theta}")

    def params(self) -> dict:
        d = asdict(self)
        if self.method == "pca":
            return {"method": "pca", "n_components": self.n_components, "random_state": self.random_state}
        if self.method == "tsne":
            d.pop("n_neighbors"), d.pop("min_dist")
            d["neighbors"] = f"exact<={TSNE_EXACT_KNN_MAX},auto"  # the k-NN rule (in the cache key)
        else:
            d.pop("perplexity"), d.pop("theta")
            d["init"] = f"spectral<={UMAP_SPECTRAL_MAX},pca"  # the initialisation rule (in the cache key)
        if not self.place_all:
            d.pop("place_all")  # keys of layouts cached before the option existed stay valid
        return d


def _pca(X: np.ndarray, n: int, random_state: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n = min(n, X.shape[0], X.shape[1])
    return PCA(n_components=n, random_state=random_state).fit_transform(X).astype(np.float32)


def _n_jobs() -> int:
    """openTSNE threads: ``$OMP_NUM_THREADS`` when set (the one knob torch and BLAS already follow), else every
    core. On a busy machine more threads than free cores is several times slower (bench/ measures it)."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return os.cpu_count() or 1


def reduce(features: np.ndarray, config: ReductionConfig = ReductionConfig()) -> np.ndarray:
    """(n_samples, n_features) -> (n_samples, n_components) float32."""
    X = np.asarray(features, dtype=np.float32)
    n = len(X)
    if n < 3:
        raise ValueError(f"a 2-D layout needs at least 3 images, got {n}: add images or raise the images per domain")
    if config.method == "pca":
        out = _pca(X, config.n_components, config.random_state)
        if out.shape[1] < config.n_components:  # fewer features than components
            out = np.pad(out, ((0, 0), (0, config.n_components - out.shape[1])))
        return out
    if config.pca_dims and X.shape[1] > config.pca_dims:
        X = _pca(X, config.pca_dims, config.random_state)
    return _fit_nonlinear(X, config)[0]


def _fit_nonlinear(X: np.ndarray, config: ReductionConfig):
    """t-SNE or UMAP of (pre-reduced) ``X``: (embedding float32, ``place(Y)`` giving positions to new rows of
    the same space with the fitted embedding's ``transform``)."""
    n = len(X)
    if config.method == "tsne":
        from openTSNE import TSNE

        perplexity = float(min(config.perplexity, max(2.0, (n - 1) / 3)))
        emb = TSNE(n_components=config.n_components, perplexity=perplexity, random_state=config.random_state,
                   theta=config.theta, n_jobs=_n_jobs(), initialization="pca", verbose=False,
                   neighbors="exact" if n <= TSNE_EXACT_KNN_MAX else "auto").fit(X)
        return np.asarray(emb, dtype=np.float32), lambda Y: np.asarray(emb.transform(Y), dtype=np.float32)
    umap = import_umap()

    init = "random" if n <= config.n_components + 2 else "spectral" if n <= UMAP_SPECTRAL_MAX else "pca"
    reducer = umap.UMAP(n_components=config.n_components, n_neighbors=min(config.n_neighbors, n - 1),
                        min_dist=config.min_dist, random_state=config.random_state, init=init)
    return reducer.fit_transform(X).astype(np.float32), lambda Y: reducer.transform(Y).astype(np.float32)


def features_digest(features: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(features, dtype=np.float32)
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:32]


def cached_reduce(features: np.ndarray, config: ReductionConfig, cache: FeatureCache | None = None) -> np.ndarray:
    """:func:`reduce` with an on-disk cache keyed by the features' content and the parameters."""
    cache = cache or FeatureCache()
    key = stable_hash({"features": features_digest(features), **config.params()}, 32)
    hit = cache.load_result("reductions", key)
    if hit is not None and hit["embedding"].shape == (len(features), config.n_components):
        return hit["embedding"]
    emb = reduce(features, config)
    cache.save_result("reductions", key, {"embedding": emb})
    return emb


_UMAP_MODULES = ("umap.umap_", "umap.utils", "umap.layouts", "umap.distances", "umap.spectral", "umap.sparse",
                 "pynndescent.pynndescent_", "pynndescent.utils", "pynndescent.kernels", "pynndescent.distances",
                 "pynndescent.rp_trees", "pynndescent.graph_utils", "pynndescent.sparse", "pynndescent.sparse_nndescent")
_disk_cached: list[str] | None = None  # "module.function" of the dispatchers :func:`import_umap` made cacheable
_umap_lock = threading.Lock()


def import_umap():
    """``import umap``, with UMAP's own numba functions cached on disk like pynndescent's.

    pynndescent declares ``cache=True`` on its tree functions, so a second process loads them from
    ``$NUMBA_CACHE_DIR``; umap 0.5 declares it on none of the functions a fit compiles (``fast_knn_indices``,
    ``smooth_knn_dist``, ``compute_membership_strengths``, the layout epoch, ...) and pynndescent not on its
    NN-descent helpers: measured here, ~30 s of every fresh process's first (exact-neighbour) UMAP, numba
    cache kept or not. Their dispatchers get numba's file cache (``Dispatcher.enable_caching()``, what
    ``cache=True`` sets up) before anything compiles. Left out: functions that take the distance function as
    an argument (``dist``: pynndescent's ``nn_descent`` and its callers), which numba cannot cache ("dynamic
    globals"), so NN-descent (above :data:`SMALL_DATA` points) still compiles those in each process; and
    functions numba finds no cache folder for. Numba keys each cached entry by its source file's timestamp and
    size, so an upgraded umap recompiles once. ``DOMAINLENS_UMAP_DISK_CACHE=0`` leaves umap as it is."""
    import importlib
    import sys

    import umap  # noqa: PLC0415 - heavy import (numba), only when asked for

    with _umap_lock:
        if _disk_cached is not None:
            return umap
        if os.environ.get("DOMAINLENS_UMAP_DISK_CACHE", "1") == "0":  # off: umap's own behaviour (bench 15 compares)
            globals()["_disk_cached"] = []
            return umap
        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher

        done = []
        for name in _UMAP_MODULES:
            try:
                mod = sys.modules.get(name) or importlib.import_module(name)
            except ImportError:  # pragma: no cover - another umap version
                continue
            for attr, obj in list(vars(mod).items()):
                if (isinstance(obj, CPUDispatcher) and isinstance(getattr(obj, "_cache", None), NullCache)
                        and obj.py_func.__module__ == name and not obj.signatures
                        and "dist" not in obj.py_func.__code__.co_varnames[:obj.py_func.__code__.co_argcount]):
                    try:
                        obj.enable_caching()
                    except Exception as e:  # noqa: BLE001 - e.g. no cache folder numba can use: compiles as before
                        logger.debug("numba disk cache not enabled for %s.%s: %s", name, attr, e)
                    else:
                        done.append(f"{name}.{attr}")
        globals()["_disk_cached"] = done
    return umap


SMALL_DATA = 4096  # below this many points UMAP finds neighbours exactly; above, with NN-descent (pynndescent)


def warm_umap(n_small: int = 64, n_approx: int = 300, dim: int = 50, on_stage=None) -> float:
    """Pay UMAP's numba compilation now (seconds it took): fits on tiny random data through both of UMAP's
    neighbour paths, the exact one used below :data:`SMALL_DATA` points first, then NN-descent (forced here;
    pynndescent's compile is the larger part), with the spectral initialisation and the layout optimiser, in
    the dtypes :func:`reduce` passes. ``on_stage("exact")`` / ``on_stage("approx")`` is called as each path is
    ready. A server calls this once at start in a background thread (``app.py``); a later first UMAP then
    costs what a warm one does. Through :func:`import_umap`, a restarted server (``$NUMBA_CACHE_DIR`` kept) loads
    the exact path's functions from numba's disk cache instead of compiling them; NN-descent's ``nn_descent``
    family cannot be cached and compiles in each process."""
    import time

    t0 = time.perf_counter()
    umap = import_umap()
    rng = np.random.default_rng(0)
    for n, approx in ((n_small, False), (n_approx, True)):
        X = rng.normal(size=(n, dim)).astype(np.float32)
        umap.UMAP(n_components=2, n_neighbors=15, random_state=0, init="spectral", n_epochs=20,
                  force_approximation_algorithm=approx).fit_transform(X)
        if on_stage is not None:
            on_stage("approx" if approx else "exact")
    return time.perf_counter() - t0


LAYOUT_SAMPLE = 50_000  # t-SNE / UMAP are fitted on at most this many points (a stratified, seeded sample)
# t-SNE's own cap: at 50,000 points t-SNE takes about a minute on two cores here (bench 18: 750 FFT gradient
# iterations after an exact k-NN search), UMAP ~45 s (bench 14); at 20,000 points t-SNE takes ~30 s. Above
# TSNE_SAMPLE points t-SNE is fitted on a stratified sample of this size and the app says why
# (:func:`layout_note`).
TSNE_SAMPLE = 20_000


def layout_sample(method: str, n_points: int) -> int:
    """How many points a ``method`` layout of ``n_points`` is fitted on at most: :data:`LAYOUT_SAMPLE`, or for
    t-SNE above :data:`TSNE_SAMPLE` points that smaller sample (t-SNE at 50k points takes about a minute)."""
    if method == "tsne" and n_points > min(TSNE_SAMPLE, LAYOUT_SAMPLE):
        return min(TSNE_SAMPLE, LAYOUT_SAMPLE)
    return LAYOUT_SAMPLE


def layout_note(method: str, n_points: int, fitted: int) -> str:
    """Why a layout covers only a sample (empty when it covers every point): the reason pages show."""
    if fitted >= n_points or method == "pca":
        return ""
    if method == "tsne" and fitted <= TSNE_SAMPLE < LAYOUT_SAMPLE:
        return (f"t-SNE is fitted on a stratified sample of {fitted:,} of {n_points:,} images: above "
                f"{TSNE_SAMPLE:,} points it is slow to wait for (about a minute for 50,000 points on two cores, "
                f"against ~45 s for UMAP). Choose UMAP for a {LAYOUT_SAMPLE:,}-image sample, or 'Place every "
                "point' to place the others with the fitted embedding.")
    return (f"{'UMAP' if method == 'umap' else 't-SNE'} is fitted on a stratified sample of {fitted:,} of "
            f"{n_points:,} images ('Place every point' places the others).")


PLACE_BLOCK = 16_384  # rows placed per transform call (bounded memory, progress)


def stratified_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` points, each label represented in proportion (at least one each), seeded."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    cats, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = np.maximum(1, np.floor(counts * n / len(labels)).astype(int))
    out = [rng.choice(np.flatnonzero(inv == i), min(t, c), replace=False) for i, (t, c) in enumerate(zip(take, counts))]
    return np.sort(np.concatenate(out))


def layout_at_scale(features: np.ndarray, labels: np.ndarray, config: ReductionConfig = ReductionConfig(),
                    max_points: int = LAYOUT_SAMPLE, progress=None) -> tuple[np.ndarray, int]:
    """(embedding (n, n_components) float32, number of points the layout was fitted on).

    Up to ``max_points`` this is :func:`reduce`. Above it the layout is fitted on a stratified seeded sample of
    ``max_points`` (stratified by ``labels``): PCA then places every point (its transform is exact); t-SNE and
    UMAP give positions to the sample only and the other rows are NaN (figures show them as "sample of N"),
    unless ``config.place_all``: then the other points are placed, a block of rows at a time, by the fitted
    embedding's ``transform`` (openTSNE: each new point optimised against the fixed sample; UMAP: its
    fuzzy-graph placement), after the same PCA pre-reduction fitted on the sample. That costs minutes for
    500k more points on two cores (bench 14 measures it), so it is an option. ``progress(done, total)`` is
    called per block of placed rows."""
    X = np.asarray(features)
    n = len(X)
    if n <= max_points:
        return reduce(X, config), n
    idx = stratified_sample(labels, max_points, config.random_state)
    if config.method == "pca":
        from sklearn.decomposition import PCA

        k = min(config.n_components, X.shape[1])
        pca = PCA(n_components=k, random_state=config.random_state).fit(np.asarray(X[idx], dtype=np.float32))
        out = np.zeros((n, config.n_components), np.float32)
        for a in range(0, n, 65536):  # bounded memory: one block of rows at a time
            out[a:a + 65536, :k] = pca.transform(np.asarray(X[a:a + 65536], dtype=np.float32))
        return out, len(idx)
    out = np.full((n, config.n_components), np.nan, np.float32)
    if not config.place_all:
        out[idx] = reduce(np.asarray(X[idx], dtype=np.float32), config)
        return out, len(idx)
    S = np.asarray(X[idx], dtype=np.float32)
    pca = None
    if config.pca_dims and X.shape[1] > config.pca_dims:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=min(config.pca_dims, len(idx)), random_state=config.random_state).fit(S)
        S = pca.transform(S).astype(np.float32)
    out[idx], place = _fit_nonlinear(S, config)
    rest = np.setdiff1d(np.arange(n), idx)
    for a in range(0, len(rest), PLACE_BLOCK):
        rows = rest[a:a + PLACE_BLOCK]
        Y = np.asarray(X[rows], dtype=np.float32)
        out[rows] = place(pca.transform(Y).astype(np.float32) if pca is not None else Y)
        if progress:
            progress(a + len(rows), len(rest))
    return out, len(idx)
