"""The benchmark registry: number -> (title, function). The benchmarks live in one module per area:

* :mod:`bench.extraction` - 1 all-block capture, 2 early exit, 3 throughput (and the accelerator rows of bench.gpu)
* :mod:`bench.explore` - 4 warm slider latency, 5 reductions, 6 metrics at 100k points
* :mod:`bench.storage` - 7 feature cache, 9 dataset scan
* :mod:`bench.views` - 10 film strip, 11 CKA
* :mod:`bench.families` - 12 every family
* :mod:`bench.app_start` - 8 first Explore, 13 first UMAP view, 15 UMAP in a fresh process
* :mod:`bench.scale` - 14 DomainNet-sized study

Each ``bench_*`` takes a :class:`Ctx` (plus size overrides for tests) and returns
``{"rows": [row(...)], "details": {...}, "notes": [...]}``; :mod:`bench.run` runs and reports them."""

from __future__ import annotations

from typing import Callable

from bench.app_start import bench_first_explore, bench_first_umap, bench_umap_process
from bench.context import GPU_NOTE, Ctx  # noqa: F401 - bench.run reads them here
from bench.explore import bench_metrics, bench_reductions, bench_slider
from bench.extraction import (accelerator_throughput, bench_all_blocks, bench_early_exit,  # noqa: F401
                              bench_throughput, matmul_flops)
from bench.families import bench_families
from bench.storage import bench_cache, bench_scan
from bench.views import bench_cka, bench_filmstrip


def _bench_scale(ctx: Ctx, **kw) -> dict:
    from bench.scale import bench_scale

    return bench_scale(ctx, **kw)


BENCHMARKS: dict[int, tuple[str, Callable[[Ctx], dict]]] = {
    1: ("All-block capture vs block-by-block", bench_all_blocks),
    2: ("Early exit vs full forward", bench_early_exit),
    3: ("Extraction throughput (CPU)", bench_throughput),
    4: ("Warm slider latency (Explore)", bench_slider),
    5: ("Reductions: t-SNE and UMAP", bench_reductions),
    6: ("Metrics and scatter at 100k points", bench_metrics),
    7: ("Feature cache: size and load time", bench_cache),
    8: ("First Explore on a fresh machine", bench_first_explore),
    9: ("Dataset scan and fingerprint at scale", bench_scan),
    10: ("Film strip: frame switch at 5k points", bench_filmstrip),
    11: ("Layer similarity: CKA grid", bench_cka),
    12: ("Every family: all layers vs default layer (tiny models, CPU)", bench_families),
    13: ("First UMAP view in the app (start-up warm-up)", bench_first_umap),
    14: ("DomainNet-sized study: per-layer cache, NMI, layout, slider, 1 vs 2 processes", _bench_scale),
    15: ("UMAP in a fresh process: numba compile vs disk cache kept (no browser)", bench_umap_process),
}
