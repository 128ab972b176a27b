"""The feature commands: ``validate`` (a dataset), ``models`` (what is there, one model's layers),
``extract`` (into the cache, sharded or distributed), ``cache`` (list / verify / prune) and ``sweep``."""

from __future__ import annotations

import contextlib
import sys

import numpy as np

from core.data.datasets import load_dataset, verify_images
from core.backbones.registry import list_families, list_models

from core.cli.common import (_check_output, _config, _print_ignored, _progress, _timesteps, _write_atomic,
                             check_timesteps)


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
