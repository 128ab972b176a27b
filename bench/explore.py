"""Benchmarks of the Explore loop: warm slider latency, t-SNE / UMAP, metrics and scatter at 100k points.

Each ``bench_*`` takes a :class:`bench.context.Ctx` and returns ``{"rows": [...], "details": {...}, "notes": [...]}``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.context import Ctx, _threads_note
from bench.common import (REPO, SD21_BLOCKS, SD21_CHANNELS, clustered_features,
                          median, repeat, row, synthetic_domainbed, timed)

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------- 4. slider latency


def hover_texts(domains, classes, ids) -> list[str]:
    """The Explore page's hover text (pages/_output.hover_texts), rebuilt here without streamlit."""
    return [f"<b>{d}</b> · {c}<br>{i}" for d, c, i in zip(domains, classes, ids)]


def scatter_figure(embedding, domains, classes, ids, categories=None):
    """The Explore scatter as the page builds it: ``core.figures.scatter`` (WebGL above 1,000 points) coloured
    by domain with the page's hover text; Plotly Express when core has no figures module.
    Returns (figure, builder name)."""
    try:
        from core import figures  # noqa: PLC0415
    except ImportError:
        figures = None
    if figures is not None and hasattr(figures, "scatter"):
        return figures.scatter(embedding, list(domains), hover=hover_texts(domains, classes, ids),
                               categories=categories, label_name="domain"), "core.figures.scatter"
    import pandas as pd
    import plotly.express as px

    df = pd.DataFrame({"x": embedding[:, 0], "y": embedding[:, 1], "domain": domains, "class": classes, "id": ids})
    return px.scatter(df, x="x", y="y", color="domain", hover_data=["class", "id"]), "plotly.express"


def _inject(cache_dir: Path, config, shell, dataset, seed: int) -> str:
    """Write SD-2.1-shaped features for ``config`` straight into the feature cache (as an extraction would)."""
    from core.engine.cache import FeatureCache
    from core.engine.extract import cache_key, select_images

    ds, records = select_images(config, dataset)
    key = cache_key(config, shell, ds, records)
    cache = FeatureCache(cache_dir)
    dom = ds.domain_labels(records)
    cls = ds.class_labels(records)
    feats = {b: clustered_features(len(records), SD21_CHANNELS[b], seed=seed + i, domains=dom, classes=cls)[0]
             for i, b in enumerate(SD21_BLOCKS)}
    ids = np.array([r.id for r in records], dtype=str)
    for ci in range((len(records) + cache.CHUNK - 1) // cache.CHUNK):
        sl = slice(ci * cache.CHUNK, (ci + 1) * cache.CHUNK)
        arrays = {"ids": ids[sl], "skipped_ids": np.array([], dtype=str), "skipped_reasons": np.array([], dtype=str)}
        arrays.update({f"f:{b}": v[sl] for b, v in feats.items()})
        cache.save_chunk(key, ci, arrays)
    return key


def _sd_shell():
    from diffusers import DDIMScheduler

    from core.backbones.sd_unet import SDUNet

    return SDUNet.from_components("sd21-shaped-injected", "bench-injected-sd21-shaped", None,
                                  DDIMScheduler(num_train_timesteps=1000), resolution=512, layers=list(SD21_BLOCKS))


def bench_slider(ctx: Ctx, sizes=None, reps: int | None = None, real_sizes=None, method: str | None = None) -> dict:
    """Warm slider latency: explore_view on warm caches + scatter build + the JSON Streamlit sends."""
    import plotly.io as pio

    from core.engine.cache import FeatureCache
    from core.data.datasets import load_dataset
    from core.engine.extract import ExtractionConfig, get_features
    from core.analysis.explore import explore_view
    from core.analysis.reduce import ReductionConfig, cached_reduce
    from core.analysis.sweep import cached_scores

    sizes = sizes or (1000, 5000)
    real_sizes = real_sizes if real_sizes is not None else ((1000,) if ctx.quick else (1000, 5000))
    reps = reps or (3 if ctx.quick else 5)
    method = method or ("pca" if ctx.quick else "tsne")
    reduction = ReductionConfig(method)
    per_domain = max(sizes + tuple(real_sizes)) // 4
    root = synthetic_domainbed(ctx.work / "data" / "synthetic-5k", per_cell=max(1, per_domain // 5))
    dataset = load_dataset(str(root))
    model, source = ctx.default_model()
    rows, details = [], {"default_model": source, "layout": method, "dataset": str(root)}
    cases = [("SD-2.1-shaped features (injected)", s, "sd") for s in sizes] + \
            [("default model, extracted", s, "real") for s in real_sizes]
    for label, size, kind in cases:
        cache_dir = ctx.work / "cache-slider" / f"{kind}-{size}-{time.time_ns()}"  # always starts cold
        base = ExtractionConfig(dataset=str(root), max_per_domain=size // 4)
        m = _sd_shell() if kind == "sd" else model
        blocks = ("up_blocks.1", "up_blocks.0")
        if kind == "sd":
            for i, t in enumerate((50, 100)):
                _inject(cache_dir, replace(base, timestep=t), m, dataset, seed=10 * i)
        # warm up every setting the measured moves visit (extraction when real, layout, scores)
        warm = {}
        for t, b in ((50, blocks[0]), (50, blocks[1]), (100, blocks[0])):
            s, res = timed(explore_view, replace(base, timestep=t), b, reduction, model=m, cache_dir=str(cache_dir),
                           batch_size=64, dataset=dataset)
            warm[f"t{t}/{b}"] = s
        n_points = len(res.embedding)

        def move(t, b, ds):
            t0 = time.perf_counter()
            r = explore_view(replace(base, timestep=t), b, reduction, model=m, cache_dir=str(cache_dir), dataset=ds)
            t1 = time.perf_counter()
            fs = r.features
            fig, builder = scatter_figure(r.embedding, fs.domains, fs.classes, fs.ids, fs.domain_names)
            t2 = time.perf_counter()
            payload = pio.to_json(fig, validate=False)  # what st.plotly_chart sends
            t3 = time.perf_counter()
            return {"explore_view": t1 - t0, "figure": t2 - t1, "to_json": t3 - t2, "total": t3 - t0,
                    "bytes": len(payload), "builder": builder, "n_unet": fs.n_unet_images}

        moves = {"block change": ((50, blocks[0]), (50, blocks[1])),
                 "timestep change": ((50, blocks[0]), (100, blocks[0]))}
        for what, (a_, b_) in moves.items():
            meas = {"rescan": [], "scan kept": []}
            for i in range(reps):
                src, dst = (a_, b_) if i % 2 == 0 else (b_, a_)
                for variant, ds in (("rescan", None), ("scan kept", dataset)):
                    move(*src, dataset)  # the setting the user moves from (untimed)
                    meas[variant].append(move(*dst, ds))
            assert all(x["n_unet"] == 0 for v in meas.values() for x in v), "a warm call ran the model"
            for variant, ms in meas.items():
                tot = median([x["total"] for x in ms])
                parts = {k: round(median([x[k] for x in ms]), 4) for k in ("explore_view", "figure", "to_json")}
                big = n_points >= 5000
                how = ("explore_view(..., dataset=<scan kept by the page>)" if variant == "scan kept"
                       else "explore_view as pages/explore.py calls it (rescans the folder)")
                rows.append(row(f"[{label}, {n_points:,} pts] warm {what}: {how}", round(tot, 3), "s",
                                "< 0.5 s" if big else None, (tot < 0.5) if big else None,
                                "explore_view {explore_view:.3f} + figure {figure:.3f} + JSON {to_json:.3f} s".format(
                                    **parts) + f"; {ms[0]['bytes'] / 1e6:.2f} MB; {ms[0]['builder']}"))
                details[f"{kind}-{size}/{what}/{variant}"] = {"median_parts_s": parts, "median_total_s": tot,
                                                             "payload_bytes": ms[0]["bytes"], "all": ms}
        details[f"{kind}-{size}/warm-up_s"] = warm
        # where a warm call's time goes (dataset kept): feature chunks, layout cache, score cache
        cfg = replace(base, timestep=50)
        cache = FeatureCache(str(cache_dir))
        parts = {"get_features": [], "cached_reduce": [], "cached_scores": []}
        for _ in range(reps):
            t, fs = timed(get_features, cfg, "all", model=m, cache_dir=str(cache_dir), dataset=dataset)
            parts["get_features"].append(t)
            parts["cached_reduce"].append(timed(cached_reduce, fs.features[blocks[0]], reduction, cache)[0])
            parts["cached_scores"].append(timed(cached_scores, fs, blocks[0], cache=cache)[0])
        feat_mb = sum(v.nbytes for v in fs.features.values()) / 1e6
        rows.append(row(f"[{label}, {n_points:,} pts] warm explore_view split: get_features (all "
                        f"{len(fs.features)} blocks, {feat_mb:.0f} MB)", round(median(parts["get_features"]), 3), "s",
                        None, None, f"cached_reduce {median(parts['cached_reduce']):.3f} s, cached_scores "
                        f"{median(parts['cached_scores']):.3f} s"))
        details[f"{kind}-{size}/split_s"] = parts
        if kind == "real":
            cold = warm[f"t50/{blocks[0]}"]
            rows.append(row(f"[{label}, {n_points:,} pts] cold first view (extract all blocks + {method} + scores)",
                            round(cold, 1), "s", None, None,
                            f"{n_points / cold:.0f} img/s overall incl. decode, layout, scores; second timestep "
                            f"{warm[f't100/{blocks[0]}']:.1f} s (clean latents memoised)"))
    return {"rows": rows, "details": details, "notes": [
        "A warm move re-reads the setting's cached feature chunks (every block, SHA-256 checked), hashes the "
        "features for the layout key and loads the cached layout and scores; the model never runs (asserted). "
        "'rescans the folder' is explore_view without dataset= (what pages/explore.py does today): it re-stats "
        "every image file of the dataset on each move.",
        f"Layouts are {method.upper()} (warm cost does not depend on the method; the cold cost does)."]}


# ----------------------------------------------------------------------------------- 5. reductions


def _worker(spec: dict, env: dict | None = None) -> dict:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    for k, v in json.loads(os.environ.get("DOMAINLENS_BENCH_ORIG_THREADS", "{}")).items():  # see bench.run
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "bench._worker", json.dumps(spec)], cwd=REPO, env=e,
                       capture_output=True, text=True, timeout=1800)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH-JSON ")]
    if p.returncode or not line:
        raise RuntimeError(f"worker {spec} failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(line[-1][len("BENCH-JSON "):])


def bench_reductions(ctx: Ctx, sizes=None, dim: int = 1280, reps: int | None = None, umap_sizes=None,
                     sklearn_sizes=None, raw_sizes=None) -> dict:
    """t-SNE (openTSNE vs sklearn on PCA-50; openTSNE on raw) and UMAP (fresh process vs warm)."""
    sizes = sizes or ((1000, 5000) if ctx.quick else (1000, 5000, 20000))
    sklearn_sizes = sklearn_sizes if sklearn_sizes is not None else (() if ctx.quick else sizes)
    raw_sizes = raw_sizes if raw_sizes is not None else (() if ctx.quick else sizes)
    umap_sizes = umap_sizes if umap_sizes is not None else ((1000,) if ctx.quick else sizes)
    reps = reps or (1 if ctx.quick else 2)
    one_thread = {"OMP_NUM_THREADS": "1"}
    rows, details = [], {"dim": dim}
    for n in sizes:
        r = reps if n <= 5000 else 1
        res = {}
        for key, variant, env, use in (("core", "opentsne_pca50", None, True),
                                       ("core_1thread", "opentsne_pca50", one_thread, n <= 5000),
                                       ("sklearn", "sklearn_pca50", None, n in sklearn_sizes),
                                       ("raw", "opentsne_raw", None, n in raw_sizes)):
            if use:
                ctx.log(f"    t-SNE {key} n={n}")
                res[key] = _worker({"task": "tsne", "variant": variant, "n": n, "dim": dim, "reps": r}, env)
                details[f"tsne/{key}/{n}"] = res[key]
        target = n == 5000 and dim == 1280
        for key, label in (("core", "core's default"), ("core_1thread", "OMP_NUM_THREADS=1")):
            if key not in res:
                continue
            o = res[key]
            rows.append(row(f"t-SNE {n:,} x {dim}: openTSNE + PCA-50 (core), {label}, n_jobs={o['n_jobs']}: "
                            "first call in a fresh process", round(o["first_s"], 2), "s",
                            "<= 10 s" if target else None, (o["first_s"] <= 10) if target else None,
                            f"import {o['import_s']:.1f} s not included"
                            + (f"; warm {median(o['warm_s']):.2f} s" if o["warm_s"] else "")))
        all_o = [res["core"]["first_s"]] + res["core"]["warm_s"]
        for key, label in (("sklearn", "scikit-learn + PCA-50"), ("raw", f"openTSNE on raw {dim}-d")):
            if key in res:
                all_v = [res[key]["first_s"]] + res[key]["warm_s"]
                rows.append(row(f"t-SNE {n:,} x {dim}: {label}, n_jobs={res[key]['n_jobs']}", round(median(all_v), 2),
                                "s", None, None, f"{median(all_v) / median(all_o):.2f}x the time of openTSNE + PCA-50"))
    if not ctx.quick and 5000 in sizes:
        ctx.log("    t-SNE speed/quality options n=5000")
        opts = _worker({"task": "tsne_options", "n": 5000, "dim": dim})["options"]
        details["tsne_options_5000"] = opts
        ref = next(v for k, v in opts.items() if k.startswith("core"))
        for name, o in opts.items():
            rows.append(row(f"t-SNE 5,000 x {dim} option: {name}", round(o["s"], 2), "s", None, None,
                            f"{ref['s'] / o['s']:.2f}x faster than core; KL {o['kl']:.3f} (core {ref['kl']:.3f}), "
                            f"10-NN recall {o['knn10_recall']:.3f} (core {ref['knn10_recall']:.3f})"))
    for n in umap_sizes:
        env = {"NUMBA_CACHE_DIR": str(ctx.work / f"numba-cache-{n}-{time.time_ns()}")}
        ctx.log(f"    UMAP n={n} (empty numba cache, then populated)")
        cold = _worker({"task": "umap", "n": n, "dim": dim, "reps": 2}, env)
        warm = median(cold["warm_s"])
        rows += [
            row(f"UMAP {n:,} x {dim}: first fit, fresh process, empty NUMBA_CACHE_DIR", round(cold["first_s"], 1), "s",
                None, None, f"+ import {cold['import_s']:.1f} s"),
            row(f"UMAP {n:,} x {dim}: warm fit (same process)", round(warm, 2), "s", None, None,
                f"first/warm = {cold['first_s'] / warm:.1f}x"),
        ]
        details[f"umap/{n}"] = {"empty_numba_cache": cold}
        if not ctx.quick:
            again = _worker({"task": "umap", "n": n, "dim": dim, "reps": 1}, env)
            details[f"umap/{n}"]["populated_numba_cache"] = again
            rows.insert(len(rows) - 1, row(f"UMAP {n:,} x {dim}: first fit, fresh process, populated NUMBA_CACHE_DIR",
                                           round(again["first_s"], 1), "s", None, None,
                                           f"+ import {again['import_s']:.1f} s"))
    return {"rows": rows, "details": details, "notes": [
        "Synthetic clustered data (4 domains x 6 classes in a 64-d subspace of 1280-d, plus noise).",
        "openTSNE runs core.analysis.reduce.reduce (PCA-50, then 250 early-exaggeration + 500 iterations); scikit-learn runs "
        "TSNE(init='pca', perplexity=30, 1000 iterations, Barnes-Hut) on the same PCA-50 with the same n_jobs.",
        "Every t-SNE/UMAP call runs in a fresh interpreter (bench._worker) with the caller's thread settings "
        "(not bench.run's --threads), so first-call costs are real. 'OMP_NUM_THREADS=1' rows set that variable, "
        "which core.analysis.reduce passes to openTSNE as n_jobs."]}


# -------------------------------------------------------------------------------------- 6. metrics


UI_PER_DOMAIN = 100  # the dashboard's default "Images per domain" (pages/_env.default_max_per_domain)
SCATTER_CAP = 20_000  # a larger cap for comparison (stratified by domain)


def capped_points(labels: np.ndarray, cap: int | None = None, per_label: int | None = None, seed: int = 0
                  ) -> np.ndarray:
    """Sorted indices of a seeded subsample: at most ``per_label`` points of each label, or at most ``cap``
    points in all with each label keeping its share."""
    rng = np.random.default_rng(seed)
    out = []
    for v in np.unique(labels):
        idx = np.flatnonzero(labels == v)
        k = per_label if per_label is not None else max(1, round(cap * len(idx) / len(labels)))
        out.append(rng.choice(idx, min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(out))


def bench_metrics(ctx: Ctx, n: int = 100_000, dim: int = 1280, n_domains: int = 6, full_seeds: int | None = None,
                  scatter_n: int | None = None) -> dict:
    """Domain NMI at scale (KMeans vs MiniBatchKMeans) and the 100k-point scatter (WebGL, JSON size)."""
    import plotly.io as pio
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from core.analysis import metrics

    X, dom, cls = clustered_features(n, dim, n_domains=n_domains, n_classes=10, seed=1, domain_sep=1.0,
                                     noise=1.0)
    full_seeds = full_seeds or (1 if ctx.quick else 5)  # 5 = the seeds nmi() reports
    rows, details = [], {"n": n, "dim": dim, "n_domains": n_domains}
    fit_sample = getattr(metrics, "FIT_SAMPLE", None)
    how = (f"KMeans fitted on a {fit_sample:,} sample" if fit_sample and n > fit_sample
           else "MiniBatchKMeans" if n > getattr(metrics, "MINIBATCH_ABOVE", n) else "KMeans")
    t_core, (nmi_core, sd_core) = timed(metrics.nmi, X, dom)  # the path core uses (5 seeds, automatic choice)
    rows.append(row(f"domain NMI {n:,} x {dim}, core path (nmi(): 5 k-means seeds, {how})", round(t_core, 2), "s",
                    "<= 10 s", t_core <= 10, f"NMI {nmi_core:.3f} +- {sd_core:.3f}; {_threads_note()}"))
    details["nmi_core"] = {"s": t_core, "nmi": nmi_core, "std": sd_core, "method": how}
    if not ctx.quick:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(2):
            t2, _ = timed(metrics.nmi, X, dom)
        rows.append(row("  same with 2 BLAS/OpenMP threads", round(t2, 2), "s", None, None,
                        f"{t2 / t_core:.2f}x the time with {_threads_note()}; the machine is shared"))
        details["nmi_core_2_threads_s"] = t2
    # agreement per k-means seed: full KMeans on every point (reference) vs MiniBatchKMeans vs core's choice
    per = []
    for seed in range(full_seeds):
        p = {"seed": seed}
        for name, mb in (("kmeans", False), ("minibatch", True), ("core", None)):
            t, (lab, _) = timed(metrics.kmeans_labels, X, n_domains, seed, mb)
            p[f"{name}_s"], p[f"{name}_nmi"] = t, normalized_mutual_info_score(dom, lab)
            p[f"{name}_labels"] = lab
        p["ari_minibatch_vs_kmeans"] = adjusted_rand_score(p.pop("kmeans_labels"), p.pop("minibatch_labels"))
        p.pop("core_labels")
        per.append(p)
    ref = float(np.mean([p["kmeans_nmi"] for p in per]))
    for name, label in (("minibatch", "MiniBatchKMeans (n_init=3, batch 4096; core's choice before bench 6)"),
                        ("core", f"core's choice ({how})")):
        mean = float(np.mean([p[f"{name}_nmi"] for p in per]))
        worst = max(abs(p["kmeans_nmi"] - p[f"{name}_nmi"]) for p in per)
        seeds = ", ".join(f"{p[name + '_nmi']:.3f}" for p in per)
        tgt = name == "core"
        rows.append(row(f"mean domain NMI over {full_seeds} k-means seed(s): full KMeans minus {label}",
                        round(ref - mean, 4), "", "<= 0.02" if tgt else None, (abs(ref - mean) <= 0.02) if tgt else None,
                        f"NMI {ref:.3f} vs {mean:.3f} (per seed {seeds}; worst seed {worst:.3f}); time per seed {median([p['kmeans_s'] for p in per]):.2f} s vs "
                        f"{median([p[f'{name}_s'] for p in per]):.2f} s"))
    details["per_seed"] = per
    # scatter, built as the Explore page builds it (core.figures.scatter, WebGL, page hover text)
    sn = scatter_n or n
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(sn, 2)) + dom[:sn, None]).astype(np.float32)
    domains = np.array([f"domain{d}" for d in dom[:sn]])
    classes = np.array([f"class{c}" for c in cls[:sn]])
    ids = np.array([f"domain{d}/class{c}/{i:06d}.jpg" for i, (d, c) in enumerate(zip(dom[:sn], cls[:sn]))])
    cats = sorted(set(domains.tolist()))
    subsets = [("all points", np.arange(sn)),
               (f"{SCATTER_CAP:,}-point cap (stratified)", capped_points(dom[:sn], cap=SCATTER_CAP)),
               (f"UI default sample ({UI_PER_DOMAIN} images per domain)", capped_points(dom[:sn], per_label=UI_PER_DOMAIN))]
    for label, idx in subsets:
        def build(idx=idx):
            fig, builder = scatter_figure(emb[idx], domains[idx], classes[idx], ids[idx], cats)
            return fig, builder, pio.to_json(fig, validate=False)

        ts = repeat(build, 1 if ctx.quick else 3)
        fig, builder, payload = build()
        kinds = sorted({tr.type for tr in fig.data})
        rows.append(row(f"scatter, {label}: {len(idx):,} of {sn:,} points ({len(idx) / sn:.1%} shown)",
                        round(median(ts), 2), "s", None, None,
                        f"figure + JSON; {len(payload) / 1e6:.2f} MB payload; {'/'.join(kinds)}; {builder}"))
        details[f"scatter/{label}"] = {"points": len(idx), "fraction": len(idx) / sn, "s": ts,
                                       "payload_bytes": len(payload), "trace_types": kinds}
    return {"rows": rows, "details": details, "notes": [
        f"Synthetic clustered data: {n_domains} domains x 10 classes, {dim}-d.",
        f"The dashboard samples images before extracting (sidebar 'Images per domain', default {UI_PER_DOMAIN}), so "
        "its scatter, layout and scores all use that sample; it draws every sampled point (no separate scatter cap)."]}
