"""Layer similarity: linear CKA and debiased linear CKA (numpy only).

* :func:`linear_cka` - centred kernel alignment with linear kernels (Kornblith et al. 2019):
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred features.
* :func:`debiased_cka` - the same ratio with each HSIC replaced by the unbiased estimator of Song et al.
  (2012), as in Kornblith et al.'s notebook; it does not drift towards 1 when features are few
  compared with the images.

Both are computed in *feature space*: never an ``n x n`` Gram matrix, only ``d x d`` products and
length-``n`` vectors (the unbiased estimator's terms rewritten with ``K = X X^T``:
``tr(K~ L~) = ||X^T Y||^2 - sum_i |x_i|^2 |y_i|^2``, ``1^T K~ 1 = |X^T 1|^2 - sum_i |x_i|^2`` and
``1^T K~ L~ 1 = (X X^T 1 - r_x) . (Y Y^T 1 - r_y)``, with ``K~`` the Gram with a zero diagonal).

:func:`cka_matrix` fills a whole layer x layer table from one stacked product; ``max_dim`` first projects
each layer onto its leading principal components for grids too large to do exactly: an approximation
(CKA weights directions by their squared variance, so it is close when a few directions dominate; bench 11
measured up to 0.09 off on synthetic layers whose variance is spread thinly over 1280 noisy features).
Constant features carry no similarity: CKA is then 0.0, never NaN.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

__all__ = ["linear_cka", "debiased_cka", "cka_matrix", "auto_max_dim", "CKAError"]


MAX_STACKED = 16_384  # features over all layers for the stacked feature-space product (a D x D matrix)
MAX_FLOPS = 5e12  # multiply-adds of an exact grid (about a minute on 2 cores); above, max_dim is required


def auto_max_dim(layers: Mapping[str, np.ndarray], limit: int = 8192, dim: int = 64) -> int | None:
    """None (exact) when the layers' features add up to at most ``limit``, else ``dim``."""
    return None if sum(np.shape(a)[1] for a in layers.values()) <= limit else dim


class CKAError(ValueError):
    """Bad CKA input; the message says what to pass instead."""


def _as_matrix(name: str, A, dtype=np.float64) -> np.ndarray:
    try:
        A = np.asarray(A, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise CKAError(f"{name} must be a numeric array (n_images, n_features): {e}") from None
    if A.ndim == 1:
        raise CKAError(f"{name} is 1-D (shape {A.shape}); pass (n_images, n_features), e.g. x.reshape(-1, 1)")
    if A.ndim != 2:
        raise CKAError(f"{name} must be 2-D (n_images, n_features), got shape {A.shape}")
    if A.shape[1] == 0:
        raise CKAError(f"{name} has no feature columns (shape {A.shape})")
    if not np.isfinite(A).all():
        raise CKAError(f"{name} contains NaN or inf; recompute the features in float32 or drop those rows")
    return A


def _check_pair(X, Y, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _as_matrix("X", X), _as_matrix("Y", Y)
    if len(X) != len(Y):
        raise CKAError(f"X has {len(X)} rows but Y has {len(Y)}: CKA compares two views of the SAME images, "
                       "row i of X and row i of Y must be the same image")
    if len(X) < min_n:
        raise CKAError(f"need at least {min_n} images, got {len(X)}")
    return X - X.mean(0), Y - Y.mean(0)


def _cross_sq(X: np.ndarray, Y: np.ndarray) -> float:
    """``||X^T Y||_F^2`` = ``<X X^T, Y Y^T>`` through the cheaper side (features or images)."""
    n, dx, dy = len(X), X.shape[1], Y.shape[1]
    if dx * dy <= n * n:
        return float(np.sum((X.T @ Y) ** 2))
    return float(np.sum((X @ X.T) * (Y @ Y.T)))  # few images, many features: the n x n form is smaller


def _ratio(num: float, a: float, b: float) -> float:
    if a <= 0 or b <= 0:
        return 0.0  # a constant (or, for the unbiased estimate, too few distinct) feature set: no similarity
    return float(np.clip(num / np.sqrt(a * b), -1.0, 1.0))


def linear_cka(X, Y) -> float:
    """Linear CKA between two feature matrices of the same images.

    Parameters
    ----------
    X : (n_images, d1) array
    Y : (n_images, d2) array; row i is the same image as row i of X

    Returns
    -------
    float in [0, 1]: 1 when Y is an orthogonal transform (times a scale, plus a shift) of X; 0 when either
    is constant.
    """
    X, Y = _check_pair(X, Y, 2)
    return _ratio(_cross_sq(X, Y), _cross_sq(X, X), _cross_sq(Y, Y))


def _hsic_u(cross: float, rx: np.ndarray, ry: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC from feature-space terms (``cross`` = ||X^T Y||^2, ``r`` squared row
    norms, ``s`` = K 1 - r = X X^T 1 - r, per image)."""
    n = len(rx)
    trace = cross - float(rx @ ry)
    sum_k, sum_l = float(sx.sum()), float(sy.sum())
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * float(sx @ sy) / (n - 2)) / (n * (n - 3))


def _terms(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.einsum("ij,ij->i", X, X)
    return r, X @ X.sum(0) - r


def debiased_cka(X, Y) -> float:
    """Debiased linear CKA: :func:`linear_cka` with Song et al.'s unbiased HSIC estimator.

    Same inputs as :func:`linear_cka`, at least 4 images. Can be slightly negative for unrelated
    features (an unbiased estimate of 0); 0.0 when either side is constant.
    """
    X, Y = _check_pair(X, Y, 4)
    rx, sx = _terms(X)
    ry, sy = _terms(Y)
    return _ratio(_hsic_u(_cross_sq(X, Y), rx, ry, sx, sy), _hsic_u(_cross_sq(X, X), rx, rx, sx, sx),
                  _hsic_u(_cross_sq(Y, Y), ry, ry, sy, sy))


def _map_layers(fn, items: list, parallel: bool) -> list:
    """``[fn(x) for x in items]``; with ``parallel``, one Python thread per core with single-threaded BLAS
    (many mid-sized products: 2.5x faster here than OpenBLAS threading each product; the BLAS limit is
    process-wide while it lasts)."""
    workers = min(8, os.cpu_count() or 1)
    if not parallel or workers < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``Y``'s columns (n x k, k small): Cholesky QR twice in float64 (a k x k Gram
    and a triangular solve, ~20x faster here than LAPACK's Householder QR on tall float32 matrices), falling
    back to Householder QR when the Gram is singular. Inverting the Gram's eigenvalues in float32 instead
    kept rounding noise as directions and gave CKA errors up to 0.9 (bench 11)."""
    from scipy.linalg import solve_triangular

    Q = Y.astype(np.float64)
    try:
        for _ in range(2):
            R = np.linalg.cholesky(Q.T @ Q).T  # upper triangular, Q = Y R^-1
            Q = solve_triangular(R, Q.T, trans="T", lower=False, check_finite=False).T
        if np.abs(Q.T @ Q - np.eye(Q.shape[1])).max() < 1e-6:
            return Q.astype(Y.dtype)
    except np.linalg.LinAlgError:
        pass
    return np.linalg.qr(Y)[0]


def _reduce(X: np.ndarray, max_dim: int | None, seed: int) -> np.ndarray:
    """``X`` (centred) when it has at most ``max_dim`` columns, else an (n, max_dim) matrix whose Gram
    equals ``X``'s projected onto its approximate leading ``max_dim``-dimensional principal subspace
    (a seeded range finder with one power iteration; the basis must be orthonormal to working precision,
    see :func:`_orthonormal`)."""
    if not max_dim or X.shape[1] <= max_dim:
        return X
    omega = np.random.default_rng(seed).standard_normal((X.shape[1], max_dim)).astype(X.dtype)
    Q = _orthonormal(X @ omega)
    Q = _orthonormal(X @ (X.T @ Q))  # one power iteration sharpens the leading directions
    B = Q.T @ X  # (k, d): X projected on the range, Gram = Q B B^T Q^T
    w, V = np.linalg.eigh((B @ B.T).astype(np.float64))
    if w.max(initial=0.0) <= 0:
        return np.zeros((len(X), 1), X.dtype)  # a constant layer
    return Q @ (V * np.sqrt(np.clip(w, 0, None))).astype(X.dtype)


def cka_matrix(layers: Mapping[str, np.ndarray], others: Mapping[str, np.ndarray] | None = None, *,
               debiased: bool = False, max_dim: int | None = None, seed: int = 0,
               dtype=None, max_flops: float = MAX_FLOPS) -> tuple[np.ndarray, list[str], list[str]]:
    """CKA between every layer of ``layers`` and every layer of ``others`` (default: ``layers`` itself).

    Parameters
    ----------
    layers, others : name -> (n_images, d) arrays, all rows the same images in the same order
    debiased : Song et al.'s unbiased HSIC (:func:`debiased_cka`) instead of :func:`linear_cka`
    max_dim : project each layer with more features onto its ``max_dim`` leading principal components
        first (randomized SVD, seeded); None = exact
    dtype : float64 or float32 (about twice as fast); default float64 up to 4096 features over all layers
        (after ``max_dim``), float32 above (products summed in float64)
    max_flops : refuse (with the fix in the message) an exact grid that needs more multiply-adds than this

    Exact grids take the cheaper of two forms: feature space (one stacked ``Z^T Z``, cost n D^2 for D
    features over all layers) or image space (banded Gram matrices, cost n^2 D / 2) when layers are wider
    than half the images.

    Returns
    -------
    (matrix (len(layers), len(others)), row names, column names). Every entry equals the pairwise
    function on the same (projected) inputs.
    """
    if not layers:
        raise CKAError("no layers given")
    if max_dim is not None and (isinstance(max_dim, bool) or int(max_dim) != max_dim or max_dim < 0):
        raise CKAError(f"max_dim must be 0 / None (exact) or a number of principal components >= 1, got {max_dim!r}")
    rows = list(layers)
    cols = list(others) if others is not None else rows
    src = {**{("a", k): v for k, v in layers.items()}, **{("b", k): v for k, v in (others or {}).items()}}
    dims = sum(min(np.shape(A)[1] if np.ndim(A) == 2 else 1, max_dim or np.inf) for A in src.values())
    dtype = dtype or (np.float64 if dims <= 4096 else np.float32)
    n = None
    for key, A in src.items():
        rows_a = np.shape(A)[0] if np.ndim(A) else None
        if n is None:
            n = rows_a
        elif rows_a != n:
            raise CKAError(f"layer {key[1]!r} has {rows_a} rows, another has {n}: every layer must hold the "
                           "same images in the same order")

    def prepare(item):
        key, A = item
        A = _as_matrix(f"layer {key[1]!r}", A, dtype)  # one copy at most, in the working dtype
        return key, _reduce(A - A.mean(0, dtype=np.float64).astype(dtype), max_dim, seed)

    mats = dict(_map_layers(prepare, list(src.items()), parallel=bool(max_dim) and len(src) >= 4))
    if n < (4 if debiased else 2):
        raise CKAError(f"need at least {4 if debiased else 2} images, got {n}")
    keys_r = [("a", k) for k in rows]
    keys_c = [("b", k) for k in cols] if others is not None else keys_r
    keys = list(dict.fromkeys(keys_r + keys_c))
    D = sum(mats[k].shape[1] for k in keys)
    feature_cost, image_cost = float(n) * D * D, float(n) * n * (D + len(keys) ** 2) / 2
    if min(feature_cost, image_cost) > max_flops:
        raise CKAError(f"{len(keys)} layers with {D:,} features in all over {n:,} images are too many to compare "
                       f"exactly (~{2 * min(feature_cost, image_cost) / 1e12:.0f} TFLOP); pass max_dim=64 "
                       "(CLI: --max-dim 64) to compare each layer's leading principal components, or fewer images")
    if D <= MAX_STACKED and feature_cost <= image_cost:
        cross = _cross_feature_space(mats, keys)
    else:  # more features than images: the Gram (image-space) form is the cheaper exact one
        cross = _cross_image_space(mats, keys)
    pos = {k: i for i, k in enumerate(keys)}
    if debiased:
        R = np.stack([np.einsum("ij,ij->i", mats[k], mats[k]).astype(np.float64) for k in keys], 1)  # (n, L)
        S = np.stack([(mats[k] @ mats[k].sum(0)).astype(np.float64) for k in keys], 1) - R
        rr, ss = R.T @ R, S.T @ S
        sums = S.sum(0)
        h = (cross - rr + np.outer(sums, sums) / ((n - 1) * (n - 2)) - 2.0 * ss / (n - 2)) / (n * (n - 3))
    else:
        h = cross
    d = np.diag(h).copy()
    out = np.zeros((len(keys_r), len(keys_c)))
    for i, kr in enumerate(keys_r):
        for j, kc in enumerate(keys_c):
            a, b = pos[kr], pos[kc]
            out[i, j] = _ratio(h[a, b], d[a], d[b])
    return out, rows, cols


def _cross_feature_space(mats: dict, keys: list) -> np.ndarray:
    """``||X_a^T X_b||_F^2`` for every pair from one stacked product ``Z^T Z`` (cost n D^2)."""
    Z = np.concatenate([mats[k] for k in keys], axis=1)  # (n, D)
    edges = np.cumsum([0] + [mats[k].shape[1] for k in keys])
    G2 = (Z.T @ Z).astype(np.float64) ** 2  # (D, D): every layer pair's X_a^T X_b at once, squared
    return np.add.reduceat(np.add.reduceat(G2, edges[:-1], axis=0), edges[:-1], axis=1)


def _cross_image_space(mats: dict, keys: list, rows: int = 256) -> np.ndarray:
    """The same numbers as ``<K_a, K_b>`` over Gram matrices ``K = X X^T``, built a band of ``rows`` images at
    a time (never a whole n x n matrix per layer) and only on and above the diagonal (K is symmetric): cost
    n^2 D / 2 plus L^2 n^2 / 2, cheaper than the feature-space form when layers have more features than
    half the images (e.g. 90 SD-2.1 layers, 83k features, at 5k images)."""
    first = mats[keys[0]]
    n, L = len(first), len(keys)
    H = np.zeros((L, L))
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        b, w = i1 - i0, n - i0
        V = np.empty((L, b * w), first.dtype)
        for j, k in enumerate(keys):
            X = mats[k]
            band = V[j].reshape(b, w)
            np.matmul(X[i0:i1], X[i0:].T, out=band)  # rows i0:i1 of K, columns i0:n
            band[:, b:] *= np.sqrt(2.0)  # entries above the diagonal block stand for their mirror images too
        for c in range(0, V.shape[1], 1 << 16):  # one long V @ V.T runs ~10x slower in OpenBLAS than slices
            part = V[:, c:c + (1 << 16)]
            H += (part @ part.T).astype(np.float64)
    return H


# ------------------------------------------------------------------------------ on cached features


def layer_name(block: str, timestep: int | None) -> str:
    return block if timestep is None else f"{block} @ t={int(timestep)}"


def model_layers(config, blocks=None, timesteps=None, *, model=None, device: str = "auto",
                 batch_size: int = 32, cache_dir: str | None = None, progress=None, dataset=None,
                 prefix: str = "") -> tuple[dict[str, np.ndarray], list[str]]:
    """Cached pooled features of every (block, timestep) of one model as ``{name: (n, d)}`` and the image
    ids (rows). One forward pass per timestep gives every block; ``timesteps`` is ignored for models
    without one."""
    from dataclasses import replace

    from core.analysis.prompt_audit import load
    from core.engine.extract import get_features

    model = model or load(config.model, device)
    blocks = list(model.blocks) if blocks in (None, "all") else list(blocks)
    if model.uses_timestep:
        from core.engine.limits import check_timesteps

        ts = check_timesteps(model, timesteps or [config.timestep])
    else:
        ts = [None]
    out: dict[str, np.ndarray] = {}
    ids = None
    for i, t in enumerate(ts):
        step = (lambda d, n, i=i: progress(i * n + d, len(ts) * n)) if progress else None
        cfg = config if t is None else replace(config, timestep=t)
        fs = get_features(cfg, "all", device=device, batch_size=batch_size, cache_dir=cache_dir, progress=step,
                          model=model, dataset=dataset)
        if ids is None:
            ids = list(fs.ids)
        elif list(fs.ids) != ids:
            raise CKAError("the timesteps read different images (an image became unreadable?); run again")
        for b in blocks:
            if b not in fs.features:
                raise CKAError(f"unknown block {b!r}; this model has {list(model.blocks)}")
            out[prefix + layer_name(b, t)] = fs.features[b]
    return out, ids


def common_rows(ids_a: Sequence[str], ids_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the images both lists hold, in ``ids_a`` order."""
    pos = {i: k for k, i in enumerate(ids_b)}
    pairs = [(k, pos[i]) for k, i in enumerate(ids_a) if i in pos]
    if len(pairs) < 4:
        raise CKAError(f"the two feature sets share {len(pairs)} images; CKA needs the same images (at least 4)")
    a, b = zip(*pairs)
    return np.array(a), np.array(b)
