"""Run DomainLens' benchmarks, print a table and write bench/results/latest.{json,md}.

Usage::

    .venv/bin/python -m bench.run [--quick] [--only 1,4] [--work DIR]
    python bench/run.py ...

``--quick`` runs smaller sizes (a few minutes); the full run adds the 20k-point reductions, SD-2.1-sized
UNet at 512 px, the 5k-image extraction and more repetitions. ``--only`` runs the listed benchmarks and
replaces just their entries in latest.json (the others are kept from the earlier run).
All figures are medians of repetitions or ratios measured in the same run (the machines are shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent.parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _met(m) -> str:
    return "" if m is None else ("yes" if m else "MISSED")


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def table_lines(bench: dict) -> list[str]:
    out = [f"### {bench['id']}. {bench['title']}  ({bench['mode']} run, {bench['wall_s']:.0f} s, finished "
           f"{bench.get('finished') or '?'})", "",
           "| metric | value | unit | target | met | note |", "|---|---|---|---|---|---|"]
    for r in bench.get("rows", []):
        out.append(f"| {_cell(r['metric'])} | {_fmt(r['value'])} | {r['unit']} | {r['target'] or ''} | "
                   f"{_met(r['met'])} | {_cell(r['note'])} |")
    if bench.get("error"):
        out.append(f"| ERROR | | | | | {bench['error'].splitlines()[-1]} |")
    out.append("")
    out += [f"- {n}" for n in bench.get("notes", [])]
    return out + [""]


def write_markdown(report: dict, path: Path) -> None:
    env = report["environment"]
    lines = ["# DomainLens benchmarks", "",
             f"Generated {report['generated']} at commit {report['git_commit']} by `python -m bench.run"
             f"{' --quick' if report['mode'] == 'quick' else ''}{' --only ' + report['only'] if report.get('only') else ''}`"
             + (" (the other sections are kept from earlier runs; each section says when it finished)."
                if report.get("only") else "."), "",
             f"Machine: {env['processor']}, {env['cpu_count']} cores (torch threads {env['torch_threads']}), "
             f"load average at start {env['loadavg_at_start']} (shared with other jobs: read ratios, not absolute "
             f"times). Python {env['python']}, torch {env['torch']}. GPU: {env['gpu'] or 'none in this session'}.",
             "", f"Default model: {report.get('default_model') or 'not loaded in this run'}.", ""]
    targets = [(b["id"], r) for b in report["benchmarks"] for r in b.get("rows", []) if r["met"] is not None]
    if targets:
        lines += ["## Targets", "", "| # | metric | value | target | met |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {_cell(r['metric'])} | {_fmt(r['value'])} {r['unit']} | {r['target']} | {_met(r['met'])} |"
                  for i, r in targets]
        lines.append("")
    lines += ["## Results", ""]
    for b in report["benchmarks"]:
        lines += table_lines(b)
    path.write_text("\n".join(lines))


def print_table(bench: dict) -> None:
    print(f"\n== {bench['id']}. {bench['title']} ({bench['wall_s']:.0f} s)")
    for r in bench.get("rows", []):
        tgt = f"  [target {r['target']}: {_met(r['met'])}]" if r["target"] else ""
        print(f"  {r['metric']:<78} {_fmt(r['value']):>10} {r['unit']:<6}{tgt}")
        if r["note"]:
            print(f"  {'':<4}{r['note']}")
    if bench.get("error"):
        print("  ERROR:", bench["error"].splitlines()[-1])
    sys.stdout.flush()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, a few minutes")
    ap.add_argument("--only", default="", help="comma-separated benchmark numbers, e.g. 1,4")
    ap.add_argument("--work", default=None, help="scratch folder (default: a fresh temp folder)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS/OpenMP threads (default 1: on a shared machine 2 threads under contention "
                         "vary ~10x call to call; benches 3 and 6 also measure 2 threads)")
    ap.add_argument("--out", default=str(RESULTS / "latest"), help="results path without extension")
    a = ap.parse_args(argv)

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="domainlens-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    # Isolate every cache from the user's (set before core is imported: core reads them at import).
    os.environ["DOMAINLENS_CACHE_DIR"] = str(work / "cache")
    os.environ["DOMAINLENS_DATA_HOME"] = str(work / "datasets")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    # Thread counts: set before numpy / torch / scikit-learn load their thread pools. The reduction subprocesses
    # get the original environment back (they run t-SNE / UMAP the way core runs them).
    os.environ["DOMAINLENS_BENCH_ORIG_THREADS"] = json.dumps({v: os.environ.get(v) for v in THREAD_VARS})
    for v in THREAD_VARS:
        os.environ[v] = str(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    from bench.common import environment
    from bench.pipeline import BENCHMARKS as PIPELINE_BENCHMARKS
    from bench.suite import BENCHMARKS, GPU_NOTE, Ctx

    BENCHMARKS = {**BENCHMARKS, **PIPELINE_BENCHMARKS}  # 16-18: extraction pipeline, reads, t-SNE at scale

    ids = [int(x) for x in a.only.split(",") if x.strip()] or list(BENCHMARKS)
    unknown = [i for i in ids if i not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    ctx = Ctx(quick=a.quick, work=work, log=lambda m: print(m, flush=True))
    env = environment()
    mode = "quick" if a.quick else "full"
    print(f"DomainLens benchmarks ({mode}); scratch folder {work}", flush=True)
    results = []
    for i in ids:
        title, fn = BENCHMARKS[i]
        print(f"-- running {i}. {title} ...", flush=True)
        t0 = time.perf_counter()
        entry = {"id": i, "title": title, "mode": mode, "finished": None, "loadavg_at_start": list(os.getloadavg())}
        try:
            entry.update(fn(ctx))
        except Exception:  # noqa: BLE001 - report and go on with the next benchmark
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr, flush=True)
        entry["wall_s"] = time.perf_counter() - t0
        entry["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        results.append(entry)
        print_table(entry)

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = {}
    if a.only and out.with_suffix(".json").is_file():
        try:
            previous = {b["id"]: b for b in json.loads(out.with_suffix(".json").read_text())["benchmarks"]}
        except (ValueError, KeyError):
            previous = {}
    previous.update({b["id"]: b for b in results})
    report = {"generated": dt.datetime.now().isoformat(timespec="seconds"), "mode": mode, "git_commit": _git_commit(),
              "environment": env, "gpu": env["gpu"], "gpu_note": None if env["gpu"] else GPU_NOTE,
              "benchmarks": [previous[k] for k in sorted(previous)]}
    report["only"] = ",".join(map(str, ids)) if a.only else None
    sources = {b.get("details", {}).get("default_model") for b in report["benchmarks"]} - {None}
    report["default_model"] = "; ".join(sorted(sources)) or None
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if not a.work:  # a scratch folder we made (datasets, caches, models): several hundred MB
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any("error" in b for b in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
