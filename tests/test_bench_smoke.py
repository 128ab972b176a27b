"""bench/ imports and its cheapest benchmark produces a well-formed result (no timing assertions)."""

from __future__ import annotations

import json

from bench import run
from bench.suite import BENCHMARKS, Ctx, bench_cache


def test_cache_benchmark_produces_rows_and_report(tmp_path):
    ctx = Ctx(quick=True, work=tmp_path, log=lambda m: None)
    out = bench_cache(ctx, n_images=300, channels=64, reps=1)

    assert out["rows"], "no result rows"
    for r in out["rows"]:
        assert {"metric", "value", "unit", "target", "met", "note"} <= set(r)
    sizes = out["details"]["per_1k"]
    assert set(sizes) == {"float32", "float16"}
    assert sizes["float16"]["feature_bytes_per_1k"] * 2 == sizes["float32"]["feature_bytes_per_1k"]
    assert sizes["float16"]["bytes_per_1k"] < sizes["float32"]["bytes_per_1k"]
    assert out["details"]["domainnet"]["float32"]["all_blocks_GB"] > 0

    entry = {"id": 7, "title": BENCHMARKS[7][0], "mode": "quick", "wall_s": 0.0, **out}
    md = "\n".join(run.table_lines(entry))
    assert "| metric | value |" in md and out["rows"][0]["metric"] in md
    json.dumps(entry)  # the report is JSON-serialisable


def test_every_benchmark_is_registered():
    assert sorted(BENCHMARKS) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert all(callable(fn) for _, fn in BENCHMARKS.values())


def test_accelerator_throughput_runs_on_cpu_with_a_tiny_unet():
    """The GPU rows of bench 3 (used when a CUDA card is present) run here on the CPU with a tiny config."""
    import torch

    from bench.suite import accelerator_throughput

    cfg = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
               attention_head_dim=4)
    rows, out = accelerator_throughput(torch.device("cpu"), torch.float32, quick=True, resolution=64,
                                       batch_sizes=(1, 2), unet_config=cfg, matmul_n=256)
    assert len(rows) == 4 and all(r["unit"] == "img/s" and r["value"] > 0 for r in rows)
    assert out["peak_flops"] > 0
    assert out["flops_per_img"]["all blocks"] > out["flops_per_img"]["up_blocks.1"] > 0  # early exit skips work
    assert all(0 < v["of_peak"] < 5 for v in out["rates"].values())


def test_scan_benchmark_counts_every_file(tmp_path):
    from bench.suite import bench_scan

    out = bench_scan(Ctx(quick=True, work=tmp_path, log=lambda m: None), n_files=2070, reps=1)
    assert out["details"]["files"] == 2070  # 6 x 345 x 1
    assert [r["unit"] for r in out["rows"]] == ["s", "x", "s"] and all(r["value"] > 0 for r in out["rows"])
    assert not (tmp_path / "scan-tree").exists()
