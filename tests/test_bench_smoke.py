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
    assert sorted(BENCHMARKS) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(callable(fn) for _, fn in BENCHMARKS.values())
