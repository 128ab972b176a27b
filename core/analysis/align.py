"""Aligning one 2-D layout onto another (orthogonal Procrustes with the layouts' spreads matched).

Used by the film strip (each frame aligned to the one before) and by Compare (B aligned to A on shared ids).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _fit_procrustes(A: np.ndarray, B: np.ndarray):
    """Rotation/reflection R, scale and shifts taking B's rows onto A's rows, and the disparity.

    The scale matches the two layouts' spreads (as :func:`scipy.spatial.procrustes` standardizes both),
    not the least-squares scale, which shrinks an unrelated layout to a dot.
    """
    from scipy.linalg import orthogonal_procrustes

    mu_a, mu_b = A.mean(0), B.mean(0)
    A0, B0 = A - mu_a, B - mu_b
    na, nb = float(np.sqrt((A0 ** 2).sum())), float(np.sqrt((B0 ** 2).sum()))
    if na == 0 or nb == 0:
        return None
    R, s = orthogonal_procrustes(B0, A0)  # min ||B0 R - A0||_F; s = sum of singular values of B0^T A0
    disparity = float(max(0.0, 1.0 - (s / (na * nb)) ** 2))  # scipy.spatial.procrustes' disparity
    return R, na / nb, mu_a, mu_b, disparity


def procrustes_align(reference: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotate (or reflect), scale and shift ``moving`` onto ``reference`` (same rows, same points).

    Parameters
    ----------
    reference, moving : (n_samples, d) arrays

    Returns
    -------
    aligned : (n_samples, d) ``moving`` in the reference's frame, with the reference's spread
    disparity : in [0, 1]; 0 = the same layout up to rotation, scale and shift, 1 = unrelated
        (the disparity of :func:`scipy.spatial.procrustes`).
    """
    A = np.asarray(reference, dtype=np.float64)
    B = np.asarray(moving, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ValueError(f"reference and moving must have the same (n_samples, d) shape, got {A.shape} and {B.shape}")
    if len(A) < 2:
        raise ValueError("need at least 2 points to align")
    fit = _fit_procrustes(A, B)
    if fit is None:  # a degenerate layout (all points equal): nothing to rotate
        return np.tile(A.mean(0), (len(B), 1)), 1.0
    R, scale, mu_a, mu_b, disparity = fit
    return (B - mu_b) @ R * scale + mu_a, disparity


def align_by_ids(ref_ids: Sequence[str], reference: np.ndarray, ids: Sequence[str], moving: np.ndarray
                 ) -> tuple[np.ndarray, float]:
    """:func:`procrustes_align` fitted on the image ids both layouts share, applied to every row of
    ``moving`` (rows in ``ids`` order). Returns the aligned layout and the disparity on the common ids."""
    pos = {i: k for k, i in enumerate(ref_ids)}
    common = [(pos[i], k) for k, i in enumerate(ids) if i in pos]
    if len(common) < 3:
        raise ValueError(f"the two settings share {len(common)} images; at least 3 are needed to align them")
    ra, mb = (np.array(x) for x in zip(*common))
    A = np.asarray(reference, dtype=np.float64)[ra]
    B = np.asarray(moving, dtype=np.float64)
    fit = _fit_procrustes(A, B[mb])
    if fit is None:
        return np.tile(A.mean(0), (len(B), 1)), 1.0
    R, scale, mu_a, mu_b, disparity = fit
    return (B - mu_b) @ R * scale + mu_a, disparity
