"""Benchmark 14: a DomainNet-sized study on one machine (586,575 images' SD-2.1-shaped features injected
into the per-layer cache), and 1 vs 2 extraction processes on CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import DOMAINNET_IMAGES, REPO, SD21_BLOCKS, SD21_CHANNELS, median, row

N_DOMAINS, N_CLASSES = 6, 345


def standin_dataset(n: int, n_classes: int = 345):
    """An in-memory DomainNet-shaped dataset (6 domains x 345 classes, n records; no files)."""
    N_CLASSES = n_classes
    from core.data.datasets import Dataset, ImageRecord

    doms = [f"domain{d}" for d in range(N_DOMAINS)]
    clss = [f"class{c:03d}" for c in range(N_CLASSES)]
    rng = np.random.default_rng(0)
    d = rng.integers(0, N_DOMAINS, n)
    c = rng.integers(0, N_CLASSES, n)
    recs = [ImageRecord(f"{doms[a]}/{clss[b]}/{i:07d}.jpg", f"/nonexistent/{i}.jpg", doms[a], clss[b])
            for i, (a, b) in enumerate(zip(d, c))]
    recs.sort(key=lambda r: r.id)
    return Dataset("domainnet-standin", "/nonexistent", recs, doms, clss, f"standin-{n}")


def shell(blocks=SD21_BLOCKS):
    from diffusers import DDIMScheduler

    from core.backbones.sd_unet import SDUNet

    return SDUNet.from_components("sd21-shaped-injected", "bench-injected-sd21-shaped", None,
                                  DDIMScheduler(num_train_timesteps=1000), resolution=512, layers=list(blocks))


def inject(cache_dir: Path, config, model, ds, blocks, seed: int = 0, log=print) -> str:
    """Write clustered SD-2.1-shaped features chunk by chunk (bounded memory) as an extraction would."""
    from core.engine.cache import FeatureCache
    from core.engine.extract import feature_key, select_images, storage_dtype

    _, records = select_images(config, ds)
    key = feature_key(config, model, ds, records)
    cache = FeatureCache(cache_dir)
    st = storage_dtype(config, model)
    dom = ds.domain_labels(records)
    cls = ds.class_labels(records)
    rank = 64
    rng = np.random.default_rng(seed)
    dc = rng.normal(0, 2.0, (N_DOMAINS, rank)).astype(np.float32)
    cc = rng.normal(0, 1.5, (len(ds.classes), rank)).astype(np.float32)
    bases = {b: rng.normal(0, 1 / np.sqrt(rank), (rank, SD21_CHANNELS[b])).astype(np.float32) for b in blocks}
    ids = np.array([r.id for r in records])
    t0 = time.perf_counter()
    n_chunks = (len(records) + cache.CHUNK - 1) // cache.CHUNK
    for ci in range(n_chunks):
        sl = slice(ci * cache.CHUNK, (ci + 1) * cache.CHUNK)
        crng = np.random.default_rng([seed, ci])
        z = dc[dom[sl]] + cc[cls[sl]] + crng.normal(0, 1.0, (len(ids[sl]), rank)).astype(np.float32)
        arrays = {"ids": ids[sl], "skipped_ids": np.array([], dtype=str), "skipped_reasons": np.array([], dtype=str)}
        for b in blocks:
            x = z @ bases[b]
            x += crng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.5)  # float32: 2x faster at 586k
            arrays[f"f:{b}"] = x
        cache.save_chunk(key, ci, arrays, st)
        if ci % 500 == 0:
            log(f"   injected chunk {ci}/{n_chunks} ({time.perf_counter() - t0:.0f} s)")
    return key


def _files(cache_dir, key, block):
    from core.engine.cache import FeatureCache

    return sorted(FeatureCache(cache_dir).layer_chunk_path(key, block, 0).parent.glob("c-*.safetensors"))


def _drop_cache(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _raw_read(paths) -> int:
    n = 0
    buf = bytearray(16 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
    return n


def _moves(spec, q):
    """In a fresh process (the app's): warm slider moves at full size; peak RSS."""
    import plotly.io as pio

    from core import figures
    from core.analysis.explore import explore_view
    from core.analysis.reduce import ReductionConfig
    from core.engine.extract import ExtractionConfig

    import core.engine.chunks as chunks

    counts = {"index files": 0, "chunk headers": 0, "chunk data reads": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapper

    chunks.read_index = counted("index files", chunks.read_index)  # what a move opens (this process only)
    chunks.read_header = counted("chunk headers", chunks.read_header)
    chunks.read_into = counted("chunk data reads", chunks.read_into)
    ds = standin_dataset(spec["n"], spec["classes"])
    rss0 = _peak_mb()
    m = shell()
    base = ExtractionConfig(dataset="domainnet-standin", model="injected", storage_dtype="float16")
    red = ReductionConfig(spec["method"])
    out = []
    for i in range(spec["reps"]):
        for b in (spec["blocks"] if i % 2 == 0 else spec["blocks"][::-1]):
            before = dict(counts)
            t0 = time.perf_counter()
            r = explore_view(base, b, red, model=m, cache_dir=spec["cache"], dataset=ds, n_seeds=1)
            t1 = time.perf_counter()
            fig = figures.scatter(r.embedding, r.features.domains, categories=r.features.domain_names)
            payload = pio.to_json(fig, validate=False)
            t2 = time.perf_counter()
            out.append({"block": b, "explore_view": t1 - t0, "figure_json": t2 - t1, "total": t2 - t0,
                         "bytes": len(payload), "n_unet": r.features.n_unet_images,
                         "loaded": r.features.features.loaded(), "layout_points": r.layout_points,
                         "reads": {k: counts[k] - before[k] for k in counts}})
    q.put({"moves": out, "rss_after_dataset_mb": rss0, "peak_rss_mb": _peak_mb()})


def bench_scale(ctx, n: int | None = None, chunk_extract: int = 16, extract_per_domain: int | None = None,
                reps: int | None = None, method: str | None = None, n_classes: int = N_CLASSES) -> dict:
    from threadpoolctl import threadpool_limits

    from core.analysis.explore import explore_view
    from core.analysis.metrics import nmi
    from core.analysis.reduce import ReductionConfig
    from core.engine.chunks import READ_THREADS
    from core.engine.extract import ExtractionConfig, get_features

    # DOMAINLENS_BENCH_SCALE_N: a smaller stand-in when the machine is too busy for the full size (rows say so)
    n = n or int(os.environ.get("DOMAINLENS_BENCH_SCALE_N", 0)) or (60_000 if ctx.quick else DOMAINNET_IMAGES)
    reps = reps or (2 if ctx.quick else 3)
    methods = ["umap", "tsne"] if method in (None, "both") else [method]
    cache_dir = ctx.work / "cache-scale"
    rows, details, notes = [], {"n": n}, []
    ctx.work.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(ctx.work)
    details["free_disk_gb"] = free.f_bavail * free.f_frsize / 1e9
    blocks = ["up_blocks.1", "up_blocks.0"]
    ds = standin_dataset(n, n_classes)
    m = shell()
    cfg16 = ExtractionConfig(dataset="domainnet-standin", model="injected", storage_dtype="float16")
    cfg32 = replace(cfg16, storage_dtype="float32")
    t0 = time.perf_counter()
    k16 = inject(cache_dir, cfg16, m, ds, blocks, log=ctx.log)
    k32 = inject(cache_dir, cfg32, m, ds, blocks[:1], log=ctx.log)
    details["inject_s"] = time.perf_counter() - t0
    ctx.log(f"   injected in {details['inject_s']:.0f} s")

    # --- size fp16 vs fp32 ------------------------------------------------------------------
    f16, f32 = _files(cache_dir, k16, blocks[0]), _files(cache_dir, k32, blocks[0])
    s16, s32 = sum(p.stat().st_size for p in f16), sum(p.stat().st_size for p in f32)
    all9 = sum(SD21_CHANNELS.values())
    rows.append(row(f"cache size of one layer (up_blocks.1, 1280 ch) at {n:,} images: float16 / float32",
                    round(s16 / s32, 3), "x", None, None,
                    f"{s16 / 1e9:.2f} GB vs {s32 / 1e9:.2f} GB; all 9 SD-2.1 blocks ({all9} ch) at {DOMAINNET_IMAGES:,} "
                    f"images: {s16 / n / 1280 * all9 * DOMAINNET_IMAGES / 1e9:.1f} GB fp16, "
                    f"{s32 / n / 1280 * all9 * DOMAINNET_IMAGES / 1e9:.1f} GB fp32 per setting"))

    # --- one-layer read vs raw sequential read --------------------------------------------------
    fs = get_features(cfg16, [blocks[0]], model=m, cache_dir=str(cache_dir), dataset=ds)
    plan = fs.features._plan
    res = {"cold_read": [], "cold_raw": [], "warm_read": [], "warm_raw": []}
    for _ in range(reps):
        _drop_cache(f16)
        res["cold_raw"].append(_timed(lambda: _raw_read(f16)))
        _drop_cache(f16)
        res["cold_read"].append(_timed(lambda: plan.read_layer(blocks[0])))
        res["warm_raw"].append(_timed(lambda: _raw_read(f16)))
        res["warm_read"].append(_timed(lambda: plan.read_layer(blocks[0])))
    for kind in ("cold", "warm"):
        gbs_read = s16 / median(res[f"{kind}_read"]) / 1e9
        gbs_raw = s16 / median(res[f"{kind}_raw"]) / 1e9
        rows.append(row(f"read one layer ({s16 / 1e9:.2f} GB fp16, {len(f16)} chunk files, checksummed, to float32) "
                        f"/ raw sequential read of the same files, {kind} page cache", round(gbs_read / gbs_raw, 2),
                        "x", None, None, f"{gbs_read:.2f} GB/s vs {gbs_raw:.2f} GB/s (medians of {reps}); {READ_THREADS} "
                                         "reader threads (positioned reads into a 128 MB staging slab, widened to "
                                         "float32 by torch per slab, output memory from core.engine.buffers), headers "
                                         "from the layer index, each file checksummed (XXH3-64) on its first read in "
                                         "the process; cold = posix_fadvise(DONTNEED) before each read"))
    details["read_s"] = res

    # --- NMI on all points, fp16 vs fp32 --------------------------------------------------------
    X16 = fs.features[blocks[0]]
    X32 = get_features(cfg32, [blocks[0]], model=m, cache_dir=str(cache_dir), dataset=ds).features[blocks[0]]
    yd, yc = fs.domain_labels, fs.class_labels
    with threadpool_limits(2):
        t, (d16, _) = _timed_v(lambda: nmi(X16, yd, n_seeds=1))
        d32, _ = nmi(X32, yd, n_seeds=1)
        # all scores of the block, as the app's first view computes them (class NMI = nmi(X16, yc, 1)); cached, so
        # the slider moves' warm-up below does not compute them again (at 586k: ~2-3 min on 2 cores)
        from core.analysis.sweep import cached_scores
        from core.engine.cache import FeatureCache

        ts, s16 = _timed_v(lambda: cached_scores(fs, blocks[0], n_seeds=1, cache=FeatureCache(cache_dir)))
        c16 = s16.class_nmi
        c32, _ = nmi(X32, yc, n_seeds=1)
    rows.append(row(f"domain NMI on all {n:,} points (k-means fitted on a 20,000-point seeded sample, every point "
                    "labelled), 1 seed, 2 threads", round(t, 1), "s", "<= 60 s", t <= 60,
                    f"NMI {d16:.4f}; all scores of the block (domain + class NMI with K={n_classes}, probe, "
                    f"silhouette) {ts:.1f} s, class NMI {c16:.4f}"))
    diff = max(abs(d16 - d32), abs(c16 - c32))
    rows.append(row("NMI from float16 storage - from float32 (max of domain, class)", round(diff, 5), "", "<= 0.005",
                    diff <= 0.005, f"domain {d16:.4f} vs {d32:.4f}; class {c16:.4f} vs {c32:.4f}"))
    del X32

    # --- layout on a 50k stratified sample --------------------------------------------------------
    from core.analysis.explore import cached_layout
    from core.engine.cache import FeatureCache

    from core.analysis.reduce import warm_umap

    how = {"umap": "PCA to 50 dims + UMAP, after the app's start-up warm-up of numba (reduce.warm_umap)",
           "tsne": "PCA to 50 dims + openTSNE (exact k-NN, FFT gradients above 10k points)"}
    for meth in methods:
        with threadpool_limits(2):
            os.environ["OMP_NUM_THREADS"], old_omp = "2", os.environ.get("OMP_NUM_THREADS")
            try:
                if meth == "umap":
                    details["umap_warmup_s"] = warm_umap()  # what app.py pays in a background thread at start
                t_lay, (emb, fitted) = _timed_v(lambda: cached_layout(fs, blocks[0], ReductionConfig(meth),
                                                                      FeatureCache(cache_dir)))  # the app's sample
            finally:
                os.environ["OMP_NUM_THREADS"] = old_omp or "1"
        rows.append(row(f"{meth} layout fitted on a stratified {fitted:,}-point sample of {n:,}", round(t_lay, 1),
                        "s", "<= 60 s", t_lay <= 60,
                        f"{np.isfinite(emb[:, 0]).sum():,} points placed (the rest shown as 'sample of {fitted:,}', "
                        f"or placed by the fitted embedding's transform with 'Place every point'); 2 threads "
                        f"({how[meth]})"))
    del X16, fs, plan, emb

    # --- warm slider moves in a fresh (app) process ---------------------------------------------
    for b in blocks:  # warm-up: layouts and scores of both blocks (what the first views compute; blocks[0]'s
        # scores are cached already)
        explore_view(cfg16, b, ReductionConfig("pca"), model=m, cache_dir=str(cache_dir), dataset=ds, n_seeds=1)
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_moves, args=({"n": n, "cache": str(cache_dir), "blocks": blocks,
                                                               "reps": reps, "method": "pca",
                                                               "classes": n_classes}, q))
    p.start()
    out = q.get(timeout=1800)
    p.join()
    mv = out["moves"][1:]  # the first call in the process imports plotly's JSON encoder etc.
    assert all(x["n_unet"] == 0 for x in mv)
    tot = median([x["total"] for x in mv])
    reads = {k: max(x["reads"][k] for x in mv) for k in mv[0]["reads"]}
    details["move_reads"] = reads
    rows.append(row(f"warm slider move (block change) at {n:,} points: explore_view + figure + JSON", round(tot, 3),
                    "s", "< 1 s", tot < 1.0,
                    f"explore_view {median([x['explore_view'] for x in mv]):.3f} s + figure/JSON "
                    f"{median([x['figure_json'] for x in mv]):.3f} s; {mv[0]['bytes'] / 1e6:.2f} MB "
                    f"{'density view' if n > 100_000 else 'scatter'}; "
                    f"a move reads the layer's index file only ({reads['index files']} index file, "
                    f"{reads['chunk headers']} chunk headers, {reads['chunk data reads']} chunk data reads; + stat of "
                    f"each chunk file, the cached layout and scores); features loaded: "
                    f"{sorted({b for x in mv for b in x['loaded']}) or 'none'}"))
    rows.append(row(f"peak memory of the app process over {len(out['moves'])} moves at {n:,} points",
                    round(out["peak_rss_mb"] / 1024, 2), "GB", "<= 4 GB", out["peak_rss_mb"] <= 4096,
                    f"{out['rss_after_dataset_mb']:.0f} MB after building the {n:,}-record dataset"))
    details["moves"] = out

    # --- 1 vs 2 processes extraction on CPU -------------------------------------------------------
    per_domain = extract_per_domain or (16 if ctx.quick else 48)
    runs = {}
    for nproc in (1, 2):
        cdir = ctx.work / f"cache-extract-{nproc}"
        env = dict(os.environ, DOMAINLENS_CHUNK_IMAGES=str(chunk_extract), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO), DOMAINLENS_CACHE_DIR=str(cdir))
        args = ["extract", "--dataset", "synthetic-pacs", "--max-per-domain", str(per_domain), "--blocks", "all",
                "--device", "cpu", "--batch-size", "16", "--no-progress"]
        cmd = ([sys.executable, "-m", "core"] if nproc == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(29500 + os.getpid() % 1000), "-m", "core"]) + args
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
        runs[nproc] = {"s": time.perf_counter() - t0, "rc": r.returncode,
                       "lines": [ln for ln in r.stdout.splitlines() if ln.startswith("rank ")]}
        if r.returncode:
            raise RuntimeError(f"extract with {nproc} process(es) failed: {r.stderr[-2000:]}")
    n_img = 4 * per_domain
    rows.append(row(f"extraction throughput on CPU, 2 processes (torchrun, gloo) / 1 process ({n_img} images, "
                    "default model, all blocks, 1 thread each)", round(runs[1]["s"] / runs[2]["s"], 2), "x", None,
                    None, f"{n_img / runs[1]['s']:.1f} vs {n_img / runs[2]['s']:.1f} img/s incl. start-up; "
                          f"{' | '.join(runs[2]['lines'])}"))
    details["extract"] = runs
    if n < DOMAINNET_IMAGES:
        notes.append(f"Scaled down to {n:,} images (the shared 2-core machine ran at load ~12 during this run); "
                     f"DomainNet has {DOMAINNET_IMAGES:,}. Per-image costs (a warm move's stat of each chunk file and "
                     "its layout/score arrays, k-means labelling, bytes read) are linear in n; the layout (50k sample) and k-means fit (20k sample) "
                     "do not grow with n.")
    notes += [
        f"Stand-in: {n:,} records (6 domains x 345 classes, no image files), clustered SD-2.1-shaped features "
        "injected chunk by chunk into the per-layer cache for up_blocks.1 and up_blocks.0 (float16) and up_blocks.1 "
        "(float32); the other 7 blocks are not written because per-layer storage never reads them (their size is "
        "extrapolated in the first row).",
        "Scores in the warm-up use 1 k-means seed (class NMI with K=345 on 586k points costs tens of seconds per "
        "seed); the warm move reads the layer's index file (L-<layer>/index.json: every chunk's header fields and "
        "file identity, checked by one os.stat per chunk file), the cached layout + scores and no feature bytes "
        "(the 'features loaded' note); it opens no chunk file.",
        "The slider moves use PCA layouts (fitted on a 50k sample, every point placed, so the density view shows "
        "all points); a warm move's cost does not depend on the layout method (the layout is read from the cache).",
        "Peak memory is VmHWM of a fresh spawned process doing only what the page does on a move.",
    ]
    return {"rows": rows, "details": details, "notes": notes}


def _peak_mb() -> float:
    """This process's peak resident memory: VmHWM (reset by exec; ru_maxrss of a spawned child keeps the
    high-water mark of the parent it was forked from, which is the benchmark process holding 586k features)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed_v(fn):
    t0 = time.perf_counter()
    v = fn()
    return time.perf_counter() - t0, v
