"""Benchmarks of storage: the feature cache and the dataset scan at scale.

Each ``bench_*`` takes a :class:`bench.context.Ctx` and returns ``{"rows": [...], "details": {...}, "notes": [...]}``."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from bench.context import Ctx, _speed_row
from bench.common import (DOMAINNET_IMAGES, SD21_CHANNELS, clustered_features,
                          interleaved, median, ratio_of_medians,
                          row)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- 7. cache


def bench_cache(ctx: Ctx, n_images: int = 1024, channels: int = 1280, reps: int | None = None) -> dict:
    """On-disk size and load time per 1k images per layer (fp32 vs fp16 per-layer safetensors chunks) and the
    DomainNet extrapolation."""
    import safetensors.numpy

    from core.engine.cache import FeatureCache
    from core.engine.store import read_chunk

    reps = reps or (3 if ctx.quick else 7)
    root = ctx.work / f"cache-bench-{time.time_ns()}"
    X, _, _ = clustered_features(n_images, channels, seed=3)
    ids = np.array([f"domain{i % 6}/class{i % 345:03d}/image_{i:07d}.jpg" for i in range(n_images)], dtype=str)
    chunk = FeatureCache.CHUNK
    n_chunks = (n_images + chunk - 1) // chunk
    res = {}
    for dt in ("float32", "float16"):
        cache = FeatureCache(root / dt)
        for ci in range(n_chunks):
            sl = slice(ci * chunk, (ci + 1) * chunk)
            cache.save_chunk("k" * 32, ci, {"ids": ids[sl], "skipped_ids": np.array([], dtype=str),
                                           "skipped_reasons": np.array([], dtype=str),
                                           "f:up_blocks.1": X[sl]}, storage=dt)
        paths = [cache.layer_chunk_path("k" * 32, "up_blocks.1", ci) for ci in range(n_chunks)]
        size = sum(p.stat().st_size for p in paths)
        feat_bytes = X.astype(dt).nbytes

        def load_core():
            return [read_chunk(p)[1] for p in paths]

        def load_raw():
            return [safetensors.numpy.load_file(p)["f"] for p in paths]

        assert np.allclose(np.concatenate(load_core()).astype(np.float32), X, atol=1e-2)
        t = interleaved({"core": load_core, "raw": load_raw}, reps, warmup=1)
        per_1k = 1000 / n_images
        res[dt] = {"bytes_per_1k": size * per_1k, "feature_bytes_per_1k": feat_bytes * per_1k,
                   "load_core_s_per_1k": median(t["core"]) * per_1k, "load_raw_s_per_1k": median(t["raw"]) * per_1k}
    rows = []
    for dt, r in res.items():
        rows += [
            row(f"cache size per 1k images x 1 layer (C={channels}), {dt} safetensors", round(r["bytes_per_1k"] / 1e6, 2),
                "MB", None, None, f"features {r['feature_bytes_per_1k'] / 1e6:.2f} MB + header (ids digest, CRC-32)"),
            row(f"cache load per 1k images x 1 layer, {dt} (store.read_chunk, CRC-32 checked)",
                round(r["load_core_s_per_1k"] * 1000, 1), "ms", None, None,
                f"safetensors.numpy.load_file alone {r['load_raw_s_per_1k'] * 1000:.1f} ms; from the page cache"),
        ]
    # one layer of a setting holding all nine SD-2.1 blocks: only that layer's files are read
    cache9 = FeatureCache(root / "all-blocks")
    n9 = min(n_images, chunk)
    cache9.save_chunk("a" * 32, 0, {"ids": ids[:n9], "skipped_ids": np.array([], dtype=str),
                                    "skipped_reasons": np.array([], dtype=str),
                                    **{f"f:{b}": clustered_features(n9, c, seed=i)[0]
                                       for i, (b, c) in enumerate(SD21_CHANNELS.items())}})
    all9 = [cache9.layer_chunk_path("a" * 32, b, 0) for b in SD21_CHANNELS]
    p9 = cache9.layer_chunk_path("a" * 32, "up_blocks.1", 0)
    t = interleaved({"core": lambda: [read_chunk(p) for p in all9], "lazy": lambda: read_chunk(p9)}, reps, warmup=1)
    lazy_x = ratio_of_medians(t["core"], t["lazy"])
    total9 = sum(p.stat().st_size for p in all9)
    rows.append(_speed_row("one layer (up_blocks.1) of an all-block setting: all nine layers' files / that layer's",
                           lazy_x, None, f"{median(t['core']) * 1000 / n9 * 1000:.1f} ms vs "
                           f"{median(t['lazy']) * 1000 / n9 * 1000:.1f} ms per 1k images; the nine files hold "
                           f"{total9 / 1e6:.1f} MB for {n9} images, up_blocks.1 {p9.stat().st_size / 1e6:.1f} MB"))
    one_block = {"images": n9, "bytes": total9, "all_layers_s": t["core"], "one_layer_s": t["lazy"]}
    total_c = sum(SD21_CHANNELS.values())
    scale = DOMAINNET_IMAGES / 1000 * total_c / channels
    up1 = DOMAINNET_IMAGES / 1000 * SD21_CHANNELS["up_blocks.1"] / channels
    extrap = {}
    for dt in ("float32", "float16"):
        r = res[dt]
        extrap[dt] = {"all_blocks_GB": r["bytes_per_1k"] * scale / 1e9, "up_blocks_1_GB": r["bytes_per_1k"] * up1 / 1e9,
                      "all_blocks_load_s": r["load_core_s_per_1k"] * scale,
                      "up_blocks_1_load_s": r["load_core_s_per_1k"] * up1}
        rows.append(row(f"DomainNet ({DOMAINNET_IMAGES:,} images), all 9 SD-2.1 blocks ({total_c} ch), {dt}",
                        round(extrap[dt]["all_blocks_GB"], 1), "GB", None, None,
                        f"per timestep/prompt setting; load ~{extrap[dt]['all_blocks_load_s']:.0f} s; up_blocks.1 extracted "
                        f"alone {extrap[dt]['up_blocks_1_GB']:.1f} GB, ~{extrap[dt]['up_blocks_1_load_s']:.0f} s"))
    return {"rows": rows, "details": {"per_1k": res, "one_block_of_all_block_chunk": one_block, "domainnet": extrap,
                                      "n_images": n_images,
                                      "channels": channels, "sd21_channels": SD21_CHANNELS},
            "notes": ["core's cache stores float32 (np.savez, uncompressed); the float16 rows measure the same layout "
                      "with half-precision arrays (what an fp16 cache option would cost).",
                      "Extrapolations scale the measured per-1k-images-per-1280-channels figures linearly; load "
                      "times are from the OS page cache (a cold disk adds its read time).",
                      "A chunk holds every extracted block and load_chunk reads and SHA-256-checks all of them, so one "
                      "block of an all-block extraction costs the whole chunk; explore_view(all_blocks=True) also keeps "
                      "every block in memory (all nine SD-2.1 blocks of DomainNet in fp32 would not fit in 24 GiB)."]}


# ----------------------------------------------------------- 9. dataset scan and fingerprint at scale


def bench_scan(ctx: Ctx, n_files: int | None = None, reps: int | None = None) -> dict:
    """scan_folder (records + fingerprint from one stat per file, nothing decoded) on a DomainBed tree of
    ``n_files`` tiny files vs the bare minimum (os.walk + stat of every file), extrapolated to DomainNet."""
    import shutil

    from core.data.datasets import scan_folder

    n = n_files or (20_000 if ctx.quick else 100_000)
    reps = reps or (2 if ctx.quick else 3)
    root = ctx.work / "scan-tree"
    n_dom, n_cls = 6, 345  # DomainNet's shape
    per = max(1, n // (n_dom * n_cls))
    for d in range(n_dom):
        for c in range(n_cls):
            folder = root / f"domain{d}" / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                (folder / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff")  # not decoded by a scan; empty files are skipped
    total = n_dom * n_cls * per

    def raw():
        k = 0
        for dirpath, _, files in os.walk(root):
            for f in files:
                os.stat(os.path.join(dirpath, f))
                k += 1
        return k

    try:
        t = interleaved({"scan": lambda: scan_folder(root), "raw": raw}, reps, warmup=1)
        ds = scan_folder(root)
        assert len(ds) == total
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_file = median(t["scan"]) / total
    rows = [
        row(f"scan_folder + fingerprint, {total:,} files ({n_dom} domains x {n_cls} classes)",
            round(median(t["scan"]), 2), "s", None, None, f"{per_file * 1e6:.1f} us per file; warm OS cache"),
        _speed_row("scan_folder / os.walk + stat of every file (the floor)", ratio_of_medians(t["scan"], t["raw"]),
                   None, f"floor {median(t['raw']):.2f} s"),
        row(f"DomainNet ({DOMAINNET_IMAGES:,} files), extrapolated", round(per_file * DOMAINNET_IMAGES, 1), "s", None,
            None, "linear in the file count; a cold disk adds its metadata reads"),
    ]
    return {"rows": rows, "details": {"files": total, "times": t},
            "notes": ["The app keeps a scan for 30 s (pages/_access.scanned_dataset), so slider moves on a large "
                      "folder do not pay this on every rerun; the CLI scans once per command."]}
