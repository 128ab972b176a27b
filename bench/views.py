"""Benchmarks of the research views: film-strip frame switch (10) and the CKA grid (11)."""

from __future__ import annotations

import numpy as np

from bench.common import SD21_BLOCKS, SD21_CHANNELS, clustered_features, median, repeat, row, timed

TINY_CHANNELS = [32, 64, 64, 64, 64, 64, 32]  # domainlens-tiny's 7 blocks (down 0-2, mid, up 0-2)


def _frames(n: int, dim: int, frames: int, seed: int = 0):
    """Per-frame features of the same images: the structure fades with the frame (like rising noise)."""
    X, dom, cls = clustered_features(n, dim, seed=seed)
    rng = np.random.default_rng(seed + 1)
    out = []
    for k in range(frames):
        w = 1.0 - k / max(1, frames)
        out.append((w * X + (1 - w) * rng.normal(0, 1.0, X.shape)).astype(np.float32))
    return out, dom, cls


def bench_filmstrip(ctx, n: int | None = None, frames: int = 9, dim: int = 256, reps: int | None = None) -> dict:
    """Film strip at ``n`` points x ``frames`` frames: the page's frame switch (the gathered strip is held
    in memory, so a move builds the animated figure with the new active frame and serialises it for the
    browser), and the cold strip build (PCA layouts, Procrustes chain, NMI per frame)."""
    import plotly.io as pio

    from core.analysis.filmstrip import build_strip
    from core.engine.cache import FeatureCache
    from core.figures.views import strip_figure

    n = n or (2000 if ctx.quick else 5000)
    reps = reps or (3 if ctx.quick else 5)
    feats, dom, cls = _frames(n, dim, frames)
    meta = dict(domains=[f"d{d}" for d in dom], classes=[f"c{c}" for c in cls], ids=[f"img{i:06d}" for i in range(n)],
                domain_names=[f"d{d}" for d in range(4)], class_names=[f"c{c}" for c in range(6)])
    cache = FeatureCache(ctx.work / "strip-cache")
    t_cold, strip = timed(build_strip, "timestep", list(range(frames)), feats, dom, cls, n_seeds=1, cache=cache, **meta)
    k = [0]

    def switch():  # what a rerun after the frame control costs: the figure, then st.plotly_chart's own work
        k[0] = (k[0] + 1) % frames
        fig = strip_figure(strip, "domain", active=k[0])
        fig.to_dict()  # streamlit: plotly.tools.return_figure_from_figure_or_data
        return len(pio.to_json(fig, validate=False))  # streamlit: the chart's JSON spec

    times = repeat(switch, reps, warmup=1)
    size = switch()
    from core.analysis.metrics import Scores

    held = [Scores(*(float(r[c]) for c in ("domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std")), 0.0, 0.0, n)
            for _, r in strip.scores.iterrows()]  # scores as the page gets them: from the on-disk score cache
    t_warm, _ = timed(build_strip, "timestep", list(range(frames)), feats, dom, cls, scores=held, cache=cache, **meta)
    rows = [
        row(f"film strip frame switch, {n:,} points x {frames} frames (figure + JSON)", round(median(times), 3), "s",
            "< 0.5 s", median(times) < 0.5, f"{size / 1e6:.1f} MB of figure JSON holds every frame; the browser "
            "plays and scrubs it without the server"),
        row(f"film strip rebuild, layouts and scores cached ({n:,} x {frames})", round(t_warm, 2), "s", None,
            None, "a setting seen before in another server process: layouts from disk, Procrustes chain"),
        row(f"film strip build, cold ({n:,} x {frames}, {dim}-d)", round(t_cold, 2), "s", None, None,
            "PCA layouts, Procrustes chain, domain + class NMI per frame (1 k-means seed)"),
    ]
    return {"rows": rows, "details": {"n": n, "frames": frames, "switch_s": times, "json_bytes": size}}


def bench_cka(ctx, n: int | None = None, timesteps: int = 10, sd: bool | None = None, reps: int | None = None) -> dict:
    """CKA between every pair of (block, timestep) at ``n`` images: domainlens-tiny's 7 blocks (exact) and
    an SD-2.1-sized 9-block model (each layer projected on 64 leading components, as the app does for large
    grids), with the projection's error against exact CKA on a few pairs."""
    from core.analysis.cka import auto_max_dim, cka_matrix

    n = n or (2000 if ctx.quick else 5000)
    reps = reps or (1 if ctx.quick else 3)
    rng = np.random.default_rng(0)
    rows, details = [], {}
    cases = [("domainlens-tiny 7 blocks", TINY_CHANNELS)]
    if sd if sd is not None else not ctx.quick:
        cases.append(("SD-2.1-sized 9 blocks", [SD21_CHANNELS[b] for b in SD21_BLOCKS]))
    for label, chans in cases:
        base, _, _ = clustered_features(n, 64, seed=1)
        layers = {}
        for b, d in enumerate(chans):
            mix = rng.normal(0, 1 / 8, (64, d)).astype(np.float32)
            for t in range(timesteps):
                layers[f"{b}@{t}"] = (base @ mix * (1 - t / timesteps) + rng.normal(0, 0.5, (n, d))).astype(np.float32)
        max_dim = auto_max_dim(layers)
        for deb in (False, True):
            times = repeat(lambda: cka_matrix(layers, debiased=deb, max_dim=max_dim), reps)
            name = "debiased" if deb else "linear"
            rows.append(row(f"CKA grid {label} x {timesteps} timesteps ({len(layers)}x{len(layers)} pairs, {n:,} "
                            f"images, {name})", round(median(times), 2), "s", "< 10 s", median(times) < 10,
                            "exact" if not max_dim else f"each layer on {max_dim} leading components"))
            details[f"{label} {name}"] = times
        if max_dim:  # the same grid exactly (image-space form), and how far the projection is from it
            t_exact, (E, names, _) = timed(cka_matrix, layers)
            M, _, _ = cka_matrix(layers, max_dim=max_dim)
            err = float(np.abs(M - E).max())
            rows.append(row(f"CKA grid {label} x {timesteps} timesteps, exact (linear)", round(t_exact, 1), "s", None,
                            None, "banded Gram matrices (image-space form): cost n^2 D / 2"))
            rows.append(row(f"CKA projection error vs exact ({label}, all {len(names) ** 2:,} pairs)", round(err, 4), "",
                            None, None, f"max |projected - exact| linear CKA; mean {float(np.abs(M - E).mean()):.4f}"))
            details[f"{label} exact"] = t_exact
            details[f"{label} error"] = err
    return {"rows": rows, "details": details,
            "notes": ["Exact grids take the cheaper of two forms: feature space (one stacked product Z^T Z over all "
                      "layers, cost n D^2) or, when layers are wider than half the images, banded Gram matrices (cost "
                      "n^2 D / 2, never a whole n x n matrix per layer). Exact CKA of 90 SD-2.1-sized layers at 5k "
                      "images needs ~2 TFLOP, so the app and CLI project each layer on its leading principal components "
                      "first for such grids (auto_max_dim) and offer the exact grid as an option."]}
