"""Command line: ``python -m core {datasets,models,validate,extract,cache,sweep,report,dg}``, the research
views' subcommands (:mod:`core.cli.views`) and ``download`` (:mod:`core.cli.download`).

The CLI calls the same core functions with the same config objects as the dashboard.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

import numpy as np

from core.data.builtin import BUILTINS, SPLITS
from core.data.datasets import DatasetError, load_dataset, verify_images
from core.backbones.registry import DEFAULT_MODEL, ModelError, list_families, list_models
from core.engine.prompts import ExtractionError, PromptSpec

EXPECTED_ERRORS = (DatasetError, ModelError, ExtractionError, ValueError, FileNotFoundError, PermissionError)
try:
    from core.engine.store import CacheError

    EXPECTED_ERRORS += (CacheError,)
except ImportError:  # pragma: no cover
    pass


def _parse_timesteps(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"timesteps must be integers separated by commas, got {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one timestep")
    from core.engine.limits import check_size

    try:  # the count is bounded here, before anything loads; each value is checked against the model's range
        check_size("timesteps", len(out))  # by core.engine.limits.check_timesteps once the model is known
    except ExtractionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return out


def check_timesteps(args, model) -> list[int]:
    """``--timesteps`` (default 50) checked against ``model`` by the one validator every command uses
    (:func:`core.engine.limits.check_timesteps`): out-of-range values are refused, never clipped."""
    from core.engine.limits import check_timesteps as check

    return check(model, _timesteps(args))


def _check_output(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any extraction runs."""
    if not path.strip() or "\x00" in path:
        raise ValueError(f"{flag} needs a file name, got {path!r}")
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder; give a file name inside it, e.g. {p / 'out'}{p.suffix}")
    a = p.parent
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        raise ValueError(f"{flag} {path!r} cannot be created: {str(a)!r} is a regular file, not a folder; "
                         "pick another path")
    if p.exists() and not p.is_file():
        raise ValueError(f"{flag} {path!r} exists and is not a regular file; pick another path")
    if not os.access(p if p.exists() else a, os.W_OK):
        raise ValueError(f"{flag} {path!r}: no write permission in {str(a)!r}; pick a folder you can write")


def _write_atomic(path: str, write) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename: never a partial output."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def _add_extraction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic-pacs:heldout",
                   help="built-in name (synthetic-pacs[:train|:heldout], rotated-digits), DomainBed folder or CSV")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered name, model folder in its Hub layout, or cached hub id (see `models`)")
    p.add_argument("--timesteps", type=_parse_timesteps, default=None,
                   help="e.g. 50 or 50,100,500 (default 50; timestep-taking models only)")
    p.add_argument("--blocks", default="all", help="all, or layers, e.g. up_blocks.1,mid_block")
    p.add_argument("--class-label", type=int, default=None,
                   help="class label for class-conditional models (default: the null class)")
    p.add_argument("--noise-mode", choices=["noised", "clean"], default="noised",
                   help="noised: x_t (default); clean: x0 with the timestep embedding, where the model offers it")
    p.add_argument("--token-pooling", default=None, metavar="cls|mean",
                   help="token pooling, for models that offer a choice (vision encoders: cls = the CLS token, "
                        "mean = the patch mean); default: the model's own (`python -m core models MODEL`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default=None, help="custom text prompt (default: the empty prompt)")
    g.add_argument("--prompt-template", default=None, help='class template, e.g. "a photo of a {class}"')
    p.add_argument("--max-per-domain", type=int, default=None)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=1, help="average over N noise draws (1-64)")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's own (8-2048)")
    p.add_argument("--batch-size", type=int, default=32, help="1-4096; never changes the numbers")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, float16, bfloat16")
    p.add_argument("--cache-dir", default=None, help="default: $DOMAINLENS_CACHE_DIR or ~/.cache/domainlens")
    p.add_argument("--storage-dtype", default="auto", choices=["auto", "float32", "float16"],
                   help="dtype of the cached features (auto: float16 on CUDA, float32 otherwise)")
    p.add_argument("--no-progress", action="store_true")


def _add_stats_args(p) -> None:
    """The scoring flags of every command that computes NMI (docs/METHODS.md)."""
    p.add_argument("--n-init", type=int, default=1,
                   help="k-means runs per k-means seed, the best kept (default 1: one k-means per seed, as in the "
                        "paper, so the +- is the real seed-to-seed spread; 3 was the old default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="DomainLens: what's in a diffusion latent?")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("datasets", help="list built-in datasets")
    m = sub.add_parser("models", help="list model families and registered models (or describe one model)")
    m.add_argument("model", nargs="?", default=None,
                   help="a registered name, model folder or cached hub id: load it and list its layers, "
                        "conditioning and token poolings")
    m.add_argument("--device", default="cpu")
    v = sub.add_parser("validate", help="check a DomainBed folder or CSV manifest")
    v.add_argument("path")
    v.add_argument("--no-decode", action="store_true", help="skip decoding every image (faster)")
    e = sub.add_parser("extract", help="extract features into the cache (and optionally export them)")
    _add_extraction_args(e)
    e.add_argument("--export", default=None, help="write FILE.npz with <block>@<timestep> arrays")
    e.add_argument("--shard", default=None, help="i/n: compute only the i-th of n parts (independent jobs, e.g. a "
                                                 "Slurm array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
    e.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes, 0-64 (default: 4 per process on CUDA, 0 on CPU)")
    e.add_argument("--profile", action="store_true",
                   help="print seconds per stage (decode, resize, host->device, VAE, model, pooling, device->host, "
                        "write) and each stage's share of the wall time")
    e.add_argument("--channels-last", action="store_true",
                   help="channels-last weights (faster convolutions on GPUs; features agree to float rounding)")
    e.add_argument("--compile", action="store_true",
                   help="torch.compile the model below its hooked layers (GPUs; the first batches compile)")
    c = sub.add_parser("cache", help="list, verify or prune the feature cache")
    c.add_argument("action", choices=["list", "verify", "prune"])
    c.add_argument("--cache-dir", default=None, help="default: $DOMAINLENS_CACHE_DIR or ~/.cache/domainlens")
    c.add_argument("--older-than", type=float, default=None, help="prune: settings not used for DAYS days")
    c.add_argument("--max-size", default=None, help="prune: oldest first until the cache fits, e.g. 50GB")
    c.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")
    s = sub.add_parser("sweep", help="NMI over blocks x timesteps")
    _add_extraction_args(s)
    s.add_argument("--out", default=None, help="write the table as CSV")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--n-seeds", type=int, default=5, help="k-means seeds per NMI (1-100)")
    _add_stats_args(s)
    s.add_argument("--noise-seeds", type=int, default=1,
                   help="diffusion noise seeds per setting (1-20, default 1: the paper's single draw); more add "
                        "domain_*_noise_{mean,lo,hi} columns: the mean over noise seeds with an interval over "
                        "noise seeds, k-means seeds and images (costs one model pass per seed)")
    _add_report_parsers(sub)
    from core.cli.views import add_parsers as add_view_parsers  # the research views (views.NAMES)

    add_view_parsers(sub, _add_extraction_args)
    from core.cli.download import add_parser as add_download_parser  # the only command that downloads

    add_download_parser(sub)
    from core.cli.dgaudit import add_parsers as add_confound_parsers  # confounds

    add_confound_parsers(sub, _add_extraction_args)
    return parser


def _progress(enabled: bool, desc: str):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr)

    def update(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def cmd_validate(args) -> int:
    ds = load_dataset(args.path)
    bad = [] if args.no_decode else verify_images(ds.records)
    bad_ids = {i for i, _ in bad}
    counts = {d: {c: 0 for c in ds.classes} for d in ds.domains}
    for r in ds.records:
        if r.id not in bad_ids:
            counts[r.domain][r.cls] += 1
    n_ok = len(ds) - len(bad_ids)
    decoded = "not decoded (--no-decode)" if args.no_decode else f"{len(bad_ids)} fail to decode"
    print(f"dataset {ds.name}: {n_ok} usable images ({len(ds)} found, {decoded}), {len(ds.domains)} domains, "
          f"{len(ds.classes)} classes")
    print(f"root {ds.root}  fingerprint {ds.fingerprint}")
    width = max(len(c) for c in ds.classes)
    print("class".ljust(width) + "  " + "  ".join(d.rjust(max(6, len(d))) for d in ds.domains))
    for c in ds.classes:
        print(c.ljust(width) + "  " + "  ".join(str(counts[d][c]).rjust(max(6, len(d))) for d in ds.domains))
    print("total".ljust(width) + "  " + "  ".join(str(sum(counts[d].values())).rjust(max(6, len(d)))
                                                   for d in ds.domains))
    for w in ds.warnings:
        print(f"warning: {w}")
    skipped = list(ds.skipped) + bad
    print(f"skipped {len(skipped)} file(s)")
    for name, why in skipped:
        print(f"  {name}: {why}")
    dead = [d for d in ds.domains if not sum(counts[d].values())]
    if dead:
        print(f"error: no image of domain(s) {dead} can be decoded; replace or remove the files listed above",
              file=sys.stderr)
        return 1
    return 0


def _config(args, timestep: int):
    from core.engine.extract import ExtractionConfig

    return ExtractionConfig(dataset=args.dataset, model=args.model, timestep=timestep,
                            prompt=PromptSpec.parse(args.prompt, args.prompt_template), seed=args.seed,
                            ensemble=args.ensemble, resolution=args.resolution,
                            max_per_domain=args.max_per_domain, max_per_class=args.max_per_class,
                            class_label=args.class_label, noise_mode=args.noise_mode,
                            token_pooling=getattr(args, "token_pooling", None),
                            storage_dtype=getattr(args, "storage_dtype", "auto"))


def _timesteps(args) -> list[int]:
    return args.timesteps or [50]


def _print_ignored(model, args) -> None:
    """Say which given options this model does not take (they are ignored, not errors)."""
    for note in model.ignored_options(timesteps=args.timesteps or (), prompt=bool(args.prompt or args.prompt_template),
                                      class_label=args.class_label, noise_mode=args.noise_mode):
        print(f"note: {note}", file=sys.stderr)


def cmd_models(args) -> int:
    if getattr(args, "model", None):
        return _describe_model(args.model, args.device)
    print("families (python -m core extract --model <folder> detects the family from the folder):")
    for f in list_families():
        print(f"  {f['family']:14s} {f['label']}")
        print(f"  {'':14s} conditioned on: {f['conditioned_on']}")
        print(f"  {'':14s} token pooling: {f['token_pooling'] or 'no choice (mean over space / tokens)'}")
        if f["hub_examples"]:
            print(f"  {'':14s} e.g. {', '.join(f['hub_examples'])}")
    print("registered models:")
    for m in list_models():
        flag = "available" if m["available"] else "missing"
        print(f"  {m['name']:20s} {m['family']:10s} [{flag}] {m['description']}")
    print("python -m core models MODEL describes one model (layers, conditioning, token poolings and default)")
    return 0


def _describe_model(name: str, device: str) -> int:
    from core.backbones.registry import load_backbone

    model = load_backbone(name, device)
    print(f"{name}: {model.family_label or model.family} ({model.family})")
    print(f"  layers ({len(model.layers)}): {', '.join(model.layers)}")
    print(f"  default layer: {model.default_layer}")
    print(f"  conditioned on: {model.conditioning.describe()}")
    if len(model.poolings) > 1:
        print(f"  token poolings: {', '.join(model.poolings)} (default {model.default_pooling}; "
              "--token-pooling picks one)")
    elif model.poolings:
        print(f"  token poolings: {model.poolings[0]} only")
    else:
        print("  token poolings: none to choose (each layer is averaged over space / tokens)")
    print(f"  resolution: {model.resolution}")
    return 0


def cmd_extract(args) -> int:
    from core.backbones.registry import load_backbone
    from core.engine.distributed import current_split, device_for
    from core.engine.extract import extract_chunks, get_features

    if args.export and not args.export.endswith(".npz"):
        raise ValueError(f"--export must name a .npz file, got {args.export!r}")
    if args.export:
        _check_output(args.export, "--export")  # before extracting, not after
    from core.engine.limits import check_size

    for name in ("resolution", "ensemble", "batch_size", "workers"):  # bounded with the reason, before the model loads
        check_size(name, getattr(args, name))
    split = current_split(args.shard, args.device)
    if args.export and split.world > 1 and not split.group:
        raise ValueError("--export needs every shard's features: run `extract --export ...` without --shard once "
                         "all shards are done (it reads them from the cache)")
    model = load_backbone(args.model, device_for(split, args.device), args.dtype)
    check_timesteps(args, model)
    if split.is_main:
        _print_ignored(model, args)
    profile = None
    if args.profile or args.channels_last or args.compile:
        from core.engine import speedups

        for note in speedups.apply(model, use_channels_last=args.channels_last, use_compile=args.compile):
            print(f"note: {note}", file=sys.stderr)
    if args.profile:
        from core.engine.profile import StageTimes

        kinds = speedups.attention_kernels(model)
        if kinds:
            print(f"note: attention processors: {', '.join(kinds)} (AttnProcessor2_0 = PyTorch SDPA)", file=sys.stderr)
    workers = args.workers
    if workers is None:
        workers = 4 if getattr(getattr(model, "device", None), "type", "") == "cuda" else 0
    timesteps = _timesteps(args) if model.uses_timestep else [_timesteps(args)[0]]
    arrays: dict[str, np.ndarray] = {}
    for t in timesteps:
        cfg = _config(args, t)
        update, close = _progress(not args.no_progress and split.is_main,
                                  f"t={t}" + (f" (all {split.world} ranks)" if split.group else ""))
        if args.profile:
            profile = StageTimes(model.device)
        try:
            with profile.timing() if profile is not None else contextlib.nullcontext():
                stats = extract_chunks(cfg, args.blocks, split=split, batch_size=args.batch_size,
                                       cache_dir=args.cache_dir, progress=update, model=model, workers=workers,
                                       profile=profile)
        finally:
            close()
        if profile is not None:
            print(f"t={t} " + profile.format(), flush=True)
        print(f"rank {stats.rank}/{stats.world} computed {stats.computed} of {stats.n_images} images "
              f"(t={t}, {stats.chunks} chunk(s) of this {'shard' if split.world > 1 and not split.group else 'rank'})",
              flush=True)
        if not split.is_main or (split.world > 1 and not split.group):
            continue
        fs = get_features(cfg, args.blocks, batch_size=args.batch_size, cache_dir=args.cache_dir, model=model)
        computed = stats.computed + fs.n_unet_images
        label = f"t={t}" if model.uses_timestep else model.name
        print(f"{label}: {len(fs)} images, {len(fs.features)} blocks, "
              f"{computed if split.world == 1 else 'see rank lines:'} computed, "
              f"{len(fs.skipped)} skipped; cache key {fs.cache_key}")
        if args.export:
            for b, f in fs.features.items():
                arrays[f"{b}@{t}" if model.uses_timestep else b] = f.astype(np.float32)
            arrays.update(paths=np.array(fs.paths), domains=np.array(fs.domains), classes=np.array(fs.classes))
        for name, why in fs.skipped:
            print(f"  skipped {name}: {why}")
    if args.export and split.is_main:
        _write_atomic(args.export, lambda f: np.savez(f, **arrays))
        print(f"wrote {args.export} ({len(arrays) - 3} feature arrays)")
    return 0


def cmd_cache(args) -> int:
    from core.engine import cachetool

    return cachetool.main(args)


def cmd_sweep(args) -> int:
    from core.engine.limits import check_size

    check_size("n_seeds", args.n_seeds)  # sizes: bounded with the reason, before anything runs
    if not 1 <= args.n_init <= 100:
        raise ValueError(f"--n-init {args.n_init}: k-means runs per seed must be 1-100 (1: the paper's protocol)")
    if not 1 <= args.noise_seeds <= 20:
        raise ValueError(f"--noise-seeds {args.noise_seeds}: give 1-20 noise seeds per setting (1: the paper's "
                         "single draw)")
    check_size("resolution", args.resolution)
    check_size("ensemble", args.ensemble)
    check_size("batch_size", args.batch_size)
    if args.max_per_domain is not None and args.max_per_domain < 2:
        raise ValueError(f"--max-per-domain {args.max_per_domain}: the scores need at least 2 images per domain "
                         "(k-means, silhouette and the cross-validated probe compare images); use "
                         "--max-per-domain 2 or more (20+ for steady scores)")
    if args.out:
        _check_output(args.out, "--out")  # before extracting, not after
    import pandas as pd

    from core.analysis.sweep import run_sweep
    from core.backbones.registry import load_backbone

    model = load_backbone(args.model, args.device, args.dtype)
    check_timesteps(args, model)
    _print_ignored(model, args)
    update, close = _progress(not args.no_progress, "sweep")
    try:
        df = run_sweep(_config(args, _timesteps(args)[0]), args.blocks, _timesteps(args), device=args.device,
                       dtype=args.dtype, batch_size=args.batch_size, cache_dir=args.cache_dir,
                       n_seeds=args.n_seeds, n_init=args.n_init, noise_seeds=args.noise_seeds, progress=update,
                       model=model)
    finally:
        close()
    if args.out:
        from core.csvsafe import to_csv

        _write_atomic(args.out, lambda f: f.write(to_csv(df, index=False, float_format="%.4f").encode()))
    if args.json:
        print(df.to_json(orient="records", indent=1))
    else:
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if args.out:
            print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------- report and dg


def _csv_list(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one name (comma-separated)")
    return out


def _seed_list(s: str) -> list[int]:
    if s.strip().lower() in ("", "none"):
        return []
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas (or none), got {s!r}") from None


def _add_report_parsers(sub) -> None:
    r = sub.add_parser("report", help="the paper's tables as one self-contained HTML (and markdown) report")
    r.add_argument("--datasets", type=_csv_list, required=True, help="e.g. synthetic-pacs,rotated-digits or folders")
    r.add_argument("--models", type=_csv_list, default=[DEFAULT_MODEL], help="e.g. domainlens-tiny,pixels,domainlens-cnn")
    r.add_argument("--blocks", default="all", help="all, or e.g. up_blocks.1,mid_block (baselines use their own)")
    r.add_argument("--timesteps", type=_parse_timesteps, default=[50], help="e.g. 10,50,200")
    r.add_argument("--max-per-domain", type=int, default=None)
    r.add_argument("--seed", type=int, default=0, help="image sample, diffusion noise, t-SNE")
    r.add_argument("--n-seeds", type=int, default=5, help="k-means seeds per NMI")
    r.add_argument("--noise-seeds", type=_seed_list, default=[1, 2],
                   help="extra extraction seeds for the stability table (or none)")
    r.add_argument("--select", choices=["default", "best"], default="default",
                   help="each model's layer and timestep: default = its default layer at t=50 (the paper's protocol); "
                        "best = the best mean domain NMI, chosen on :train (or a held-out half of the images) and "
                        "reported on disjoint images")
    r.add_argument("--tsne-points", type=int, default=300, help="points per t-SNE panel")
    r.add_argument("--n-boot", type=int, default=200, help="bootstrap draws behind every 95 %% interval")
    r.add_argument("--out", default="report.html", help="output file")
    r.add_argument("--format", choices=["html", "md", "latex", "both", "all"], default=None,
                   help="default: from --out's suffix (.md: markdown, .tex: LaTeX tables, else HTML); both: .html and "
                        ".md twins; all: .html, .md and .tex")
    r.add_argument("--plotly-js", choices=["gzip", "inline"], default="gzip",
                   help="plotly.js inlined gzip-compressed (~2 MB, default) or plain (~4.8 MB)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", default="auto")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("dg", help="domain-generalization what-if: leave one domain out, rank settings")
    d.add_argument("--dataset", required=True, help="built-in name, DomainBed folder or CSV manifest")
    d.add_argument("--model", type=_csv_list, default=[DEFAULT_MODEL], help="one or more models, comma-separated")
    d.add_argument("--blocks", default="all", help="all, or e.g. up_blocks.1,mid_block (baselines use their own)")
    d.add_argument("--timesteps", type=_parse_timesteps, default=[50])
    d.add_argument("--max-per-domain", type=int, default=None)
    d.add_argument("--seed", type=int, default=0, help="image sample and diffusion noise")
    d.add_argument("--analysis-seed", type=int, default=0, help="k-means, cross-validation split, probe")
    d.add_argument("--clusters", type=int, default=None,
                   help="pseudo-domains K (default: the number of classes, GUIDE's K = classes x 1)")
    d.add_argument("--out", default="ranking.csv", help="the ranking as CSV")
    d.add_argument("--domainbed-dir", default=None,
                   help="where the top setting's pseudo-domain files go (default: <out stem>-domainbed/)")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--device", default="auto")
    d.add_argument("--dtype", default="auto")
    d.add_argument("--cache-dir", default=None)
    d.add_argument("--no-progress", action="store_true")
    from core.cli.dgaudit import add_dg_args  # pseudo-domain quality and the sweeps

    add_dg_args(d)


def cmd_report(args) -> int:
    from core.analysis.report import ReportConfig, build_report
    from core.figures.report import write_report

    suffix = {".md": "md", ".tex": "latex"}
    fmt = args.format or suffix.get(Path(args.out).suffix.lower(), "html")
    blocks = None if args.blocks.strip() == "all" else tuple(_csv_list(args.blocks))
    config = ReportConfig(datasets=tuple(args.datasets), models=tuple(args.models), blocks=blocks,
                          timesteps=tuple(args.timesteps), max_per_domain=args.max_per_domain, seed=args.seed,
                          n_seeds=args.n_seeds, noise_seeds=tuple(args.noise_seeds), select=args.select,
                          tsne_points=args.tsne_points, batch_size=args.batch_size, n_boot=args.n_boot)
    update, close = _progress(not args.no_progress, "report")
    try:
        rep = build_report(config, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir, progress=update,
                           command=config.command(args.out, args.format))
    finally:
        close()
    for p in write_report(rep, args.out, fmt, args.plotly_js):
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    print(f"{rep.n_model_images} image(s) went through a model (0 = all from the cache)")
    return 0


def cmd_dg(args) -> int:
    import pandas as pd

    from core.analysis.dg import export_domainbed, mean_rows, rank_settings
    from core.data.datasets import load_dataset

    if args.clusters is not None and args.clusters < 2:
        raise ValueError(f"--clusters must be >= 2, got {args.clusters}")
    update, close = _progress(not args.no_progress, "dg")
    try:
        ranking, results = rank_settings(args.dataset, args.model, args.blocks, args.timesteps,
                                         max_per_domain=args.max_per_domain, seed=args.seed,
                                         analysis_seed=args.analysis_seed, n_clusters=args.clusters,
                                         learner=args.learner, rank_by=args.rank_by,
                                         device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                         cache_dir=args.cache_dir, progress=update)
    finally:
        close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from core.csvsafe import to_csv

    to_csv(ranking, out, index=False, float_format="%.4f")
    top = mean_rows(ranking).iloc[0]
    t = None if pd.isna(top["timestep"]) else int(top["timestep"])
    best = results[(top["model"], top["block"], t)]
    folder = Path(args.domainbed_dir) if args.domainbed_dir else out.with_name(out.stem + "-domainbed")
    files = export_domainbed(best, folder, load_dataset(args.dataset).root)
    cols = ["model", "block", "timestep", "n_pseudo_domains", "pd_gain", "pd_gain_ci95", "true_gain",
            "pd_homogeneity", "pd_nmi", "heldout_acc", "gap", "rank_pd_gain", "rank_heldout_acc", "rank_gap"]
    with pd.option_context("display.width", 250, "display.max_rows", 500):
        print(mean_rows(ranking)[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out} ({len(ranking)} rows, ranked by {args.rank_by}); top setting {best.model} {best.setting}: "
          f"DomainBed files ({len(files)}) in {folder}")
    from core.cli.dgaudit import dg_extras

    for line in dg_extras(args, best, out):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "datasets":
            for name, desc in BUILTINS.items():
                print(f"{name:16s} {desc}  (splits: {', '.join(SPLITS)}; default heldout)")
            from core.data.download import installed_datasets  # installed by `python -m core download NAME`

            for name, root in installed_datasets():
                print(f"{name:16s} downloaded: {root}  (python -m core download --list shows what can be fetched)")
            return 0
        from core.cli.download import cmd_download
        from core.cli.views import COMMANDS as VIEW_COMMANDS  # the research views (views.NAMES)
        from core.cli.dgaudit import COMMANDS as CONFOUND_COMMANDS

        return {"models": cmd_models, "validate": cmd_validate, "extract": cmd_extract, "sweep": cmd_sweep,
                "report": cmd_report, "dg": cmd_dg, "cache": cmd_cache, "download": cmd_download, **VIEW_COMMANDS,
                **CONFOUND_COMMANDS}[args.command](args)
    except EXPECTED_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, read-only or missing folders...: a message, never a traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        hint = (" The disk is full: free some space (or use --cache-dir on another disk) and run the same command "
                "again; finished chunks are kept and nothing partial is left." if e.errno == errno.ENOSPC else
                " Check that the folder exists and can be written, or pass --cache-dir / another output path.")
        print(f"error: {e.strerror or e}{where}.{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are cached; run the same command again to resume", file=sys.stderr)
        return 130
