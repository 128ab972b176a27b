"""Runs one reduction benchmark in a fresh interpreter (so "first call" costs are real) and prints JSON.

Usage: ``python -m bench._worker '{"task": "tsne", "variant": "opentsne_pca50", "n": 5000, "reps": 2}'``
The data are generated before any timing; imports of the reduction library are timed separately.
"""

from __future__ import annotations

import json
import sys
import time


def main(arg: str) -> dict:
    spec = json.loads(arg)
    t_start = time.perf_counter()
    from bench.common import clustered_features

    X, _, _ = clustered_features(spec["n"], spec.get("dim", 1280), seed=spec.get("seed", 0))
    out: dict = {"spec": spec}
    task, variant = spec["task"], spec.get("variant", "")
    t0 = time.perf_counter()
    from core.analysis.reduce import ReductionConfig, _n_jobs, _pca, reduce

    if task == "tsne" and variant.startswith("opentsne"):
        import openTSNE  # noqa: F401

        cfg = ReductionConfig("tsne", pca_dims=0 if variant == "opentsne_raw" else 50)
        fit = lambda: reduce(X, cfg)  # noqa: E731 - core's own path
    elif task == "tsne" and variant == "sklearn_pca50":
        from sklearn.manifold import TSNE

        def fit():
            Xp = _pca(X, 50, 0)  # the same PCA-50 pre-reduction core applies
            return TSNE(n_components=2, perplexity=30.0, init="pca", random_state=0,
                        n_jobs=_n_jobs()).fit_transform(Xp)  # the same thread count core gives openTSNE
    elif task == "tsne_options":  # speed/quality trade-offs of openTSNE settings core does not use
        from openTSNE import TSNE
        from sklearn.neighbors import NearestNeighbors

        Xp = _pca(X, 50, 0)
        hi = NearestNeighbors(n_neighbors=11).fit(Xp).kneighbors(Xp, return_distance=False)[:, 1:]
        out["options"] = {}
        core_theta = ReductionConfig("tsne").theta
        for name, kw in (("core (BH theta=%.1f)" % core_theta, {"theta": core_theta}),
                         ("openTSNE defaults (BH theta=0.5)", {"theta": 0.5}),
                         ("BH theta=0.8", {"negative_gradient_method": "bh", "theta": 0.8}),
                         ("FFT, 2 units per interval", {"negative_gradient_method": "fft", "ints_in_interval": 2})):
            t0 = time.perf_counter()
            emb = TSNE(perplexity=30, random_state=0, n_jobs=_n_jobs(), initialization="pca", verbose=False, **kw).fit(Xp)
            dt = time.perf_counter() - t0
            lo = NearestNeighbors(n_neighbors=11).fit(emb).kneighbors(emb, return_distance=False)[:, 1:]
            recall = float((lo[:, :, None] == hi[:, None, :]).any(-1).mean())
            out["options"][name] = {"s": dt, "kl": float(emb.kl_divergence), "knn10_recall": recall}
        out["import_s"], out["n_jobs"], out["first_s"], out["warm_s"], out["shape"] = 0.0, _n_jobs(), 0.0, [], []
        return out
    elif task == "umap":
        import umap  # noqa: F401 - numba compiles here the first time

        cfg = ReductionConfig("umap")
        fit = lambda: reduce(X, cfg)  # noqa: E731
    else:
        raise SystemExit(f"unknown task {spec}")
    out["import_s"] = time.perf_counter() - t0
    out["n_jobs"] = _n_jobs()
    times = []
    for _ in range(max(1, spec.get("reps", 1))):
        t0 = time.perf_counter()
        emb = fit()
        times.append(time.perf_counter() - t0)
    out["first_s"] = times[0]
    out["warm_s"] = times[1:]
    out["shape"] = list(emb.shape)
    out["process_s"] = time.perf_counter() - t_start
    return out


if __name__ == "__main__":
    print("BENCH-JSON " + json.dumps(main(sys.argv[1])), flush=True)
