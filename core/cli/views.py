"""CLI subcommands of the research views: ``python -m core
filmstrip|cka|stability|prompt-audit|faithfulness|spatial|what-moved``.

Each writes into ``--out DIR``: the numbers as CSV, the figure as HTML (the spatial maps as PNG), and
``config.json``, the exact configuration with the command that reproduces it. :func:`command` builds that command; the dashboard
pages use it too, so their "reproduce" line is the same command.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

NAMES = ("filmstrip", "cka", "stability", "prompt-audit", "faithfulness", "spatial", "what-moved")


def command(subcommand: str, **opts: Any) -> str:
    """``python -m core <subcommand> --key value ...`` (lists joined by commas; True = a bare flag;
    None / False left out)."""
    parts = ["python", "-m", "core", subcommand]
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            parts.append(flag)
        elif isinstance(v, (list, tuple)):
            parts += [flag, ",".join(str(x) for x in v)]
        else:
            parts += [flag, str(v)]
    return shlex.join(parts)


def _ints(s: str) -> list[int]:
    from core.cli.common import int_list

    return int_list(s)


# Images per domain the views read unless told otherwise: the app's default (pages/_env.py), so the CLI and
# the pages share cached features, and every view finishes in minutes on a 2-core CPU with the embedded model.
VIEW_MAX_PER_DOMAIN = 100


def _sample_default(p: argparse.ArgumentParser) -> None:
    """``--max-per-domain`` of a view: default :data:`VIEW_MAX_PER_DOMAIN` (stated in ``--help``); 0 = every image."""
    p.set_defaults(max_per_domain=VIEW_MAX_PER_DOMAIN)
    for a in p._actions:
        if a.dest == "max_per_domain":
            a.help = (f"images per domain, a seeded stratified sample (default {VIEW_MAX_PER_DOMAIN}, as in the app; "
                      "0 = every image: slow on a CPU for large datasets)")


def add_parsers(sub, add_extraction_args) -> None:
    """Register the view subcommands (:data:`NAMES`) on ``sub`` (an argparse subparsers object)."""
    def add_extraction_args(p, _add=add_extraction_args):  # the extraction options, with the views' sample default
        _add(p)
        _sample_default(p)

    f = sub.add_parser("filmstrip", help="aligned layouts + NMI over timesteps (or down the blocks)")
    add_extraction_args(f)
    f.set_defaults(timesteps=None, blocks=None)
    f.add_argument("--mode", choices=("timestep", "block"), default="timestep",
                   help="timestep: one frame per timestep at --block; block: one frame per block at the first "
                        "of --timesteps (default 50)")
    f.add_argument("--block", default=None, help="the block of a timestep strip (default: the model's default)")
    f.add_argument("--reducer", choices=("pca", "tsne", "umap"), default="pca")
    f.add_argument("--colour", choices=("domain", "class"), default="domain")
    f.add_argument("--out", required=True, help="output folder")
    c = sub.add_parser("cka", help="linear / debiased CKA between every (block, timestep) (and another model)")
    add_extraction_args(c)
    c.add_argument("--other-model", default=None, help="compare with this model's layers (rows: --model)")
    c.add_argument("--debiased", action="store_true", help="Song et al.'s unbiased HSIC (debiased CKA)")
    c.add_argument("--max-dim", type=int, default=None,
                   help="project each layer on this many leading principal components first (default: exact "
                        "when small, 64 for large grids; 0 = always exact)")
    c.add_argument("--out", required=True, help="output folder")
    s = sub.add_parser("stability", help="domain NMI spread over noise seeds, ensembles, k-means seeds, bootstraps")
    add_extraction_args(s)
    s.add_argument("--block", default=None, help="default: the model's default block")
    s.add_argument("--noise-seeds", type=int, default=5)
    s.add_argument("--ensembles", type=_ints, default=[1, 2, 4, 8])
    s.add_argument("--kmeans-seeds", type=int, default=10)
    s.add_argument("--bootstraps", type=int, default=20)
    s.add_argument("--n-init", type=int, default=1, help="k-means runs per seed, the best kept (default 1: one "
                                                          "k-means, as in the paper)")
    s.add_argument("--difference", type=float, default=None,
                   help="a domain-NMI difference you are looking at: says whether chance alone could explain it")
    s.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("prompt-audit", help="empty vs class / domain templates vs wrong-class and constant controls")
    add_extraction_args(p)
    p.add_argument("--constant", default=None, help="the constant unrelated prompt of the control")
    p.add_argument("--out", required=True, help="output folder")
    _add_view13_parsers(sub, add_extraction_args)


def _add_view13_parsers(sub, add_extraction_args) -> None:  # add_extraction_args: add_parsers' (sample default)
    from core.analysis.faithfulness import DEFAULT_K as FAITH_K
    from core.analysis.moved import DEFAULT_K as MOVED_K
    from core.analysis.spatial import DEFAULT_SAMPLE

    f = sub.add_parser("faithfulness", help="how far to trust a 2-D layout: trustworthiness and k-NN accuracy of "
                                            "the domain in 2-D vs the full features (Explore's numbers)")
    add_extraction_args(f)
    f.add_argument("--block", default=None, help="default: the model's default block")
    f.add_argument("--reducer", choices=("pca", "tsne", "umap"), default="pca")
    f.add_argument("--perplexity", type=float, default=None, help="t-SNE (default 30)")
    f.add_argument("--n-neighbors", type=int, default=None, help="UMAP (default 15)")
    f.add_argument("--min-dist", type=float, default=None, help="UMAP (default 0.1)")
    f.add_argument("--k", type=int, default=FAITH_K, help=f"neighbours of both measures (default {FAITH_K})")
    f.add_argument("--out", required=True, help="output folder")
    m = sub.add_parser("spatial", help="spatial feature maps (PCA of a layer's map pixels as RGB) beside the images")
    add_extraction_args(m)
    m.add_argument("--block", default=None, help="the layer (default: the model's default block)")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--images", default=None, help="image ids separated by commas (see the layout CSVs' id column)")
    g.add_argument("--first", type=int, default=None, help="N images of the configuration's sample, taken in turn from "
                                                           "each domain and class (default 4 when --images is left out)")
    m.add_argument("--sample-size", type=int, default=DEFAULT_SAMPLE,
                   help=f"images the colour PCA is fitted on, spread over the domains (default {DEFAULT_SAMPLE})")
    m.add_argument("--size", type=int, default=192, help="pixels of each image and map in the PNGs (default 192)")
    m.add_argument("--out", required=True, help="output folder")
    w = sub.add_parser("what-moved", help="Compare: images whose k-NN neighbourhood changes most from setting A "
                                          "(the extraction options) to B (--*-b), and per-domain NMI of both")
    add_extraction_args(w)
    w.add_argument("--block", default=None, help="A's block (default: A's model's default block)")
    w.add_argument("--model-b", default=None, help="B's model (default: A's)")
    w.add_argument("--block-b", default=None, help="B's block (default: B's model's default block)")
    w.add_argument("--timestep-b", type=int, default=None, help="B's timestep (default: A's)")
    gb = w.add_mutually_exclusive_group()
    gb.add_argument("--prompt-b", default=None, help="B's custom prompt (default: A's prompt)")
    gb.add_argument("--prompt-template-b", default=None, help="B's class template (default: A's prompt)")
    w.add_argument("--k", type=int, default=MOVED_K, help=f"neighbours compared per image (default {MOVED_K})")
    w.add_argument("--n-seeds", type=int, default=5, help="k-means seeds of the per-domain NMI (default 5)")
    w.add_argument("--n-init", type=int, default=1, help="k-means runs per seed, the best kept (default 1: one "
                                                          "k-means, as in the paper)")
    w.add_argument("--out", required=True, help="output folder")


def _check_timesteps(args, model) -> None:
    """Given ``--timesteps`` checked against the model by the one validator of every command (never clipped)."""
    from core.engine.limits import check_timesteps

    if args.timesteps is not None:
        check_timesteps(model, args.timesteps)


def _config(args, timestep: int):
    from core.engine.extract import ExtractionConfig, PromptSpec

    return ExtractionConfig(dataset=args.dataset, model=args.model, timestep=timestep,
                            prompt=PromptSpec.parse(args.prompt, args.prompt_template), seed=args.seed,
                            ensemble=args.ensemble, resolution=args.resolution,
                            max_per_domain=args.max_per_domain or None, max_per_class=args.max_per_class,
                            token_pooling=getattr(args, "token_pooling", None))


def _announce(args, cfg, view: str, passes: int, per: str) -> None:
    """Say what the work costs before it starts: images x passes through the model (stderr)."""
    import sys

    from core.engine.extract import select_images

    n = len(select_images(cfg)[1])
    sample = (f"--max-per-domain {args.max_per_domain}" if args.max_per_domain else "every image (--max-per-domain 0)")
    print(f"{view}: {n:,} images ({sample}) x {passes} {per} = at most {n * passes:,} image passes through the model; "
          "cached features are reused and the progress bar shows the ETA", file=sys.stderr, flush=True)


def _progress(args, desc):
    if args.no_progress:
        return None, lambda: None
    from core.cli.common import _progress as bar

    return bar(True, desc)


def _common_opts(args) -> dict:
    return dict(dataset=args.dataset, model=args.model, prompt=args.prompt, prompt_template=args.prompt_template,
                max_per_domain=args.max_per_domain, max_per_class=args.max_per_class, seed=args.seed,
                ensemble=args.ensemble if args.ensemble != 1 else None, resolution=args.resolution,
                token_pooling=getattr(args, "token_pooling", None))


def _write(out: Path, spec: dict, tables: dict, fig=None, name: str = "figure") -> None:
    from core.csvsafe import safe_frame

    tables = {fname: safe_frame(df) for fname, df in tables.items()}  # CSV injection neutralised (core.csvsafe)
    out.mkdir(parents=True, exist_ok=True)
    for fname, df in tables.items():
        df.to_csv(out / f"{fname}.csv", index=False, float_format="%.6g")
    if fig is not None:  # plotly.js inlined: the page opens offline
        from core.figures.offline import write_figure_html

        write_figure_html(fig, out / f"{name}.html")
    (out / "config.json").write_text(json.dumps(spec, indent=2))
    print(f"wrote {', '.join([f'{t}.csv' for t in tables] + ([f'{name}.html'] if fig is not None else []))}, "
          f"config.json to {out}")


def cmd_filmstrip(args) -> int:
    from core.analysis.filmstrip import block_strip, clip_timesteps, timestep_strip
    from core.analysis.prompt_audit import load
    from core.analysis.reduce import ReductionConfig
    from core.figures.views import strip_figure

    model = load(args.model, args.device)
    _check_timesteps(args, model)
    red = ReductionConfig(method=args.reducer, random_state=args.seed)
    update, close = _progress(args, "filmstrip")
    try:
        if args.mode == "timestep":
            block = args.block or model.default_block
            cfg = _config(args, 50)
            _announce(args, cfg, "filmstrip", len(clip_timesteps(args.timesteps, model.num_train_timesteps)),
                      "timesteps (one pass each gives every block)")
            strip = timestep_strip(cfg, block, args.timesteps, red, model=model, batch_size=args.batch_size,
                                   cache_dir=args.cache_dir, progress=update)
            opts = dict(mode="timestep", block=block, timesteps=strip.values)
        else:
            t = (args.timesteps or [50])[0]
            cfg = _config(args, t)
            blocks = None if args.blocks in (None, "all") else [b.strip() for b in args.blocks.split(",")]
            _announce(args, cfg, "filmstrip", 1, "pass (every block at once)")
            strip = block_strip(cfg, blocks, red, model=model, batch_size=args.batch_size, cache_dir=args.cache_dir,
                                progress=update)
            opts = dict(mode="block", timesteps=[t], blocks=",".join(strip.values))
    finally:
        close()
    print(strip.scores.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    spec = {"view": "filmstrip", "extraction": cfg.to_dict(), **opts, "reduction": red.params(), "colour": args.colour,
            "cli": command("filmstrip", **_common_opts(args), **opts, reducer=args.reducer, colour=args.colour,
                           out=args.out)}
    _write(Path(args.out), spec, {"frames": strip.scores, "layouts": strip.layouts_frame()},
           strip_figure(strip, args.colour), "filmstrip")
    return 0


def cmd_cka(args) -> int:
    import pandas as pd

    from core.analysis.cka import auto_max_dim, cka_matrix, common_rows, model_layers
    from core.analysis.prompt_audit import load
    from core.figures.views import cka_heatmap

    if args.max_dim is not None and args.max_dim < 0:  # before the model loads
        raise ValueError(f"--max-dim must be 0 (exact) or a number of principal components >= 1, got {args.max_dim}")
    model = load(args.model, args.device)
    _check_timesteps(args, model)
    blocks = None if args.blocks in (None, "all") else [b.strip() for b in args.blocks.split(",")]
    cfg = _config(args, (args.timesteps or [50])[0])
    n_t = len(args.timesteps or [50]) if model.uses_timestep else 1
    _announce(args, cfg, "cka", n_t * (2 if args.other_model else 1),
              "passes (one per timestep" + (" and model)" if args.other_model else ")"))
    update, close = _progress(args, "cka")
    try:
        layers, ids = model_layers(cfg, blocks, args.timesteps or [50], model=model, batch_size=args.batch_size,
                                   cache_dir=args.cache_dir, progress=update)
        others = None
        if args.other_model:
            from dataclasses import replace

            other = load(args.other_model, args.device)
            ocfg = replace(cfg, model=args.other_model, token_pooling=None)  # --token-pooling is --model's
            others, oids = model_layers(ocfg, None, args.timesteps or [50], model=other, batch_size=args.batch_size,
                                        cache_dir=args.cache_dir, prefix=f"{args.other_model}: ")
            ra, rb = common_rows(ids, oids)
            layers = {k: v[ra] for k, v in layers.items()}
            others = {k: v[rb] for k, v in others.items()}
    finally:
        close()
    max_dim = args.max_dim if args.max_dim is not None else auto_max_dim({**layers, **(others or {})})
    M, rows, cols = cka_matrix(layers, others, debiased=args.debiased, max_dim=max_dim, seed=args.seed)
    measure = "debiased CKA" if args.debiased else "linear CKA"
    long = pd.DataFrame([{"row": r, "col": c, "cka": float(M[i, j])} for i, r in enumerate(rows)
                         for j, c in enumerate(cols)])
    wide = pd.DataFrame(M, index=rows, columns=cols).reset_index(names="layer")
    print(f"{measure}: {len(rows)} x {len(cols)} layers, {len(next(iter(layers.values())))} images"
          + (f", each layer projected on {max_dim} principal components" if max_dim else ""))
    opts = dict(timesteps=args.timesteps or [50], blocks=args.blocks, other_model=args.other_model, debiased=args.debiased,
                max_dim=args.max_dim)
    spec = {"view": "cka", "extraction": cfg.to_dict(), "measure": measure, "max_dim": max_dim,
            **{k: v for k, v in opts.items() if k not in ("debiased", "max_dim")},
            "cli": command("cka", **_common_opts(args), **opts, out=args.out)}
    _write(Path(args.out), spec, {"cka": long, "cka_matrix": wide},
           cka_heatmap(M, rows, cols, measure=measure, title=measure), "cka")
    return 0


def cmd_stability(args) -> int:
    from core.analysis.prompt_audit import load
    from core.analysis.stability import spread_sentence, stability
    from core.figures.views import stability_figure
    from core.engine.limits import check_size

    for name in ("noise_seeds", "kmeans_seeds", "bootstraps"):  # bounded with the reason, before the model loads
        check_size(name, getattr(args, name))
    for e in args.ensembles:
        check_size("ensemble", e)
    model = load(args.model, args.device)
    _check_timesteps(args, model)
    block = args.block or model.default_block
    cfg = _config(args, (args.timesteps or [50])[0])
    passes = args.noise_seeds + sum(args.ensembles) - 1 if model.uses_timestep else 1  # seed 0 = ensemble 1
    _announce(args, cfg, "stability", passes, f"noise draws ({args.noise_seeds} noise seeds, ensembles "
              f"{','.join(map(str, args.ensembles))})")
    update, close = _progress(args, "stability")
    try:
        st = stability(cfg, block, noise_seeds=args.noise_seeds, ensembles=args.ensembles,
                       kmeans_seeds=args.kmeans_seeds, bootstraps=args.bootstraps, n_init=args.n_init, model=model,
                       batch_size=args.batch_size, cache_dir=args.cache_dir, progress=update)
    finally:
        close()
    print(st.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"paper's single-draw protocol: domain NMI {st.reference:.3f}")
    if args.difference is not None:
        print(spread_sentence(st.summary, args.difference, st.n_seeds))
    opts = dict(timesteps=args.timesteps or [50], block=block, noise_seeds=args.noise_seeds, ensembles=args.ensembles,
                kmeans_seeds=args.kmeans_seeds, bootstraps=args.bootstraps,
                n_init=args.n_init if args.n_init != 1 else None)
    spec = {"view": "stability", "extraction": cfg.to_dict(), **opts, "reference": st.reference,
            "cli": command("stability", **_common_opts(args), **opts, out=args.out)}
    _write(Path(args.out), spec, {"draws": st.draws, "summary": st.summary}, stability_figure(st), "stability")
    return 0


def cmd_prompt_audit(args) -> int:
    from core.analysis.prompt_audit import CONDITIONS, CONSTANT_PROMPT, leakage, load, prompt_audit
    from core.figures.views import prompt_audit_figure

    model = load(args.model, args.device)
    _check_timesteps(args, model)
    cfg = _config(args, (args.timesteps or [50])[0])
    _announce(args, cfg, "prompt-audit", len(CONDITIONS), "prompts")
    update, close = _progress(args, "prompt audit")
    try:
        df = prompt_audit(cfg, args.blocks, model=model, batch_size=args.batch_size, cache_dir=args.cache_dir,
                          progress=update, constant=args.constant or CONSTANT_PROMPT)
    finally:
        close()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    opts = dict(timesteps=(args.timesteps or [50])[:1], blocks=args.blocks, constant=args.constant)
    spec = {"view": "prompt-audit", "extraction": cfg.to_dict(), **opts,
            "cli": command("prompt-audit", **_common_opts(args), **opts, out=args.out)}
    _write(Path(args.out), spec, {"prompt_audit": df, "leakage": leakage(df)},
           prompt_audit_figure(df, block_order=list(model.blocks)), "prompt_audit")
    return 0


def _reduction(args):
    from core.analysis.reduce import ReductionConfig

    kw = {k: getattr(args, k) for k in ("perplexity", "n_neighbors", "min_dist") if getattr(args, k) is not None}
    return ReductionConfig(method=args.reducer, random_state=args.seed, **kw)


def cmd_faithfulness(args) -> int:
    """Explore's "faithful layout" numbers: the layout of ``explore_view`` judged by ``cached_faithfulness``."""
    import pandas as pd

    from core import figures
    from core.analysis.explore import explore_view
    from core.analysis.faithfulness import cached_faithfulness
    from core.analysis.prompt_audit import load
    from core.engine.cache import FeatureCache

    model = load(args.model, args.device)
    _check_timesteps(args, model)
    block = args.block or model.default_block
    t = (args.timesteps or [50])[0]
    cfg = _config(args, t)
    red = _reduction(args)
    update, close = _progress(args, "faithfulness")
    try:
        res = explore_view(cfg, block, red, all_blocks=False, model=model, batch_size=args.batch_size,
                           cache_dir=args.cache_dir, progress=update)
    finally:
        close()
    fs = res.features
    faith = cached_faithfulness(fs.features[block], res.embedding, fs.domains, k=args.k, random_state=args.seed,
                                cache=FeatureCache(args.cache_dir))
    row = pd.DataFrame([{"model": cfg.model, "block": block, "timestep": t if model.uses_timestep else None,
                         "reducer": red.method, **faith.to_dict()}])
    print(row.drop(columns=["model"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    emb = res.embedding
    layout = pd.DataFrame({"id": fs.ids, "path": fs.paths, "domain": fs.domains, "class": fs.classes,
                           "x": emb[:, 0], "y": emb[:, 1]})
    opts = dict(timesteps=[t], block=block, reducer=args.reducer, perplexity=args.perplexity,
                n_neighbors=args.n_neighbors, min_dist=args.min_dist, k=args.k)
    spec = {"view": "faithfulness", "extraction": cfg.to_dict(), "block": block, "reduction": red.params(),
            "k": faith.k, "faithfulness": faith.to_dict(),
            "api": "core.analysis.explore.explore_view + core.analysis.faithfulness.cached_faithfulness",
            "cli": command("faithfulness", **_common_opts(args), **opts, out=args.out)}
    title = (f"{block}" + (f" · t = {t}" if model.uses_timestep else "") + f" · {red.method}: trustworthiness "
             f"{faith.trustworthiness:.2f}, {faith.k}-NN domain accuracy 2-D {faith.knn_acc_2d:.2f} vs full "
             f"{faith.knn_acc_full:.2f}")
    fig = figures.scatter(emb, fs.domains, hover=fs.ids, categories=fs.domain_names, title=title)
    _write(Path(args.out), spec, {"faithfulness": row, "layout": layout}, fig, "layout")
    return 0


def _file_stem(i: int, image_id: str) -> str:
    import re

    return f"{i:03d}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "image")[:80]


def cmd_spatial(args) -> int:
    """Explore's spatial maps (``core.analysis.spatial.spatial_view``) as PNGs: each image beside its map."""
    import numpy as np
    import pandas as pd

    from core.analysis import spatial
    from core.analysis.prompt_audit import load
    from core.data.datasets import load_dataset
    from core.engine.cache import FeatureCache
    from core.engine.extract import select_images

    model = load(args.model, args.device)
    _check_timesteps(args, model)
    block = args.block or model.default_block
    t = (args.timesteps or [50])[0]
    cfg = _config(args, t)
    dataset = load_dataset(cfg.dataset)
    if args.images:
        ids = list(dict.fromkeys(i.strip() for i in args.images.split(",") if i.strip()))
    else:
        n = 4 if args.first is None else args.first
        if n < 1:
            raise ValueError(f"--first needs at least 1 image, got {n}")
        ids = [r.id for r in spatial.spread_first(select_images(cfg, dataset)[1], n)]
    if not ids:
        raise ValueError("give at least one image id to --images")
    if args.size < 8:
        raise ValueError(f"--size must be at least 8 pixels, got {args.size}")
    cache = FeatureCache(args.cache_dir)
    update, close = _progress(args, "spatial maps")
    views = []
    try:  # the page shows at most spatial.MAX_SHOWN maps at a time: the same call, one group after another
        for s in range(0, len(ids), spatial.MAX_SHOWN):
            views.append(spatial.spatial_view(model, cfg, dataset, block, ids[s:s + spatial.MAX_SHOWN],
                                              sample_size=args.sample_size, cache=cache, progress=update))
    finally:
        close()
    pca = views[0].pca
    view = spatial.SpatialView([r for v in views for r in v.records], np.concatenate([v.rgb for v in views]), pca)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (r, rgb) in enumerate(zip(view.records, view.rgb)):
        name = f"maps/{_file_stem(i, r.id)}.png"
        (out / name).write_bytes(spatial.grid_png(spatial.SpatialView([r], rgb[None], pca), size=args.size, columns=1))
        rows.append({"id": r.id, "path": r.path, "domain": r.domain, "class": r.cls, "file": name,
                     "map_height": int(rgb.shape[0]), "map_width": int(rgb.shape[1])})
    (out / "spatial_maps.png").write_bytes(spatial.grid_png(view, size=args.size))
    np.savez_compressed(out / "maps.npz", rgb=view.rgb, ids=np.array([r.id for r in view.records], dtype=str))
    colours = pd.DataFrame({"channel": ["red", "green", "blue"], "explained": pca.explained, "lo": pca.lo,
                            "hi": pca.hi})
    ev = ", ".join(f"{v:.0%}" for v in pca.explained)
    print(f"{block}: maps {view.rgb.shape[2]}x{view.rgb.shape[1]} of {len(rows)} images; colours: PCA over "
          f"{len(pca.sample_ids)} images (variance {ev})")
    opts = dict(timesteps=[t], block=block, images=ids if args.images else None,
                first=None if args.images else len(ids), sample_size=args.sample_size, size=args.size)
    spec = {"view": "spatial", "extraction": cfg.to_dict(), "layer": block, "images": ids,
            "sample_size": args.sample_size, "pca_sample_ids": list(pca.sample_ids),
            "explained": [float(v) for v in pca.explained], "api": "core.analysis.spatial.spatial_view",
            "cli": command("spatial", **_common_opts(args), **opts, out=args.out)}
    _write(out, spec, {"images": pd.DataFrame(rows), "colours": colours})
    print(f"wrote spatial_maps.png, maps.npz and {len(rows)} image / map PNGs in {out / 'maps'}")
    return 0


def cmd_what_moved(args) -> int:
    """Compare's "what moved" (``core.analysis.moved.what_moved``) between setting A and setting B."""
    from dataclasses import replace

    from core import figures
    from core.analysis.explore import compare_settings, explore_view
    from core.analysis.moved import what_moved
    from core.analysis.prompt_audit import load
    from core.analysis.reduce import ReductionConfig
    from core.engine.cache import FeatureCache
    from core.engine.extract import PromptSpec

    model_a = load(args.model, args.device)
    model_b = model_a if args.model_b in (None, args.model) else load(args.model_b, args.device)
    _check_timesteps(args, model_a)
    if args.timestep_b is not None:
        from core.engine.limits import check_timesteps

        check_timesteps(model_b, [args.timestep_b])
    block_a, block_b = args.block or model_a.default_block, args.block_b or model_b.default_block
    ta = (args.timesteps or [50])[0]
    tb = ta if args.timestep_b is None else args.timestep_b
    cfg_a = _config(args, ta)
    prompt_b = (PromptSpec.parse(args.prompt_b, args.prompt_template_b) if (args.prompt_b or args.prompt_template_b)
                else cfg_a.prompt)
    cfg_b = replace(cfg_a, model=args.model_b or cfg_a.model, timestep=tb, prompt=prompt_b)
    red = ReductionConfig(random_state=args.seed)  # only the features are used; a PCA layout costs nothing
    results = {}
    for name, cfg, model, block in (("A", cfg_a, model_a, block_a), ("B", cfg_b, model_b, block_b)):
        update, close = _progress(args, f"setting {name}")
        try:
            results[name] = explore_view(cfg, block, red, all_blocks=False, model=model, batch_size=args.batch_size,
                                         cache_dir=args.cache_dir, progress=update, n_seeds=args.n_seeds,
                                         n_init=args.n_init)
        finally:
            close()
    ra, rb = results["A"], results["B"]
    moved = what_moved(ra.features, block_a, rb.features, block_b, k=args.k, n_seeds=args.n_seeds,
                       cache=FeatureCache(args.cache_dir))
    scores = figures.score_table(ra.scores, rb.scores)
    paired = compare_settings(ra.features, block_a, rb.features, block_b, n_seeds=args.n_seeds, n_init=args.n_init,
                              seed=args.seed, cache=FeatureCache(args.cache_dir))
    print(paired.verdict())
    print(f"{moved.n_common} shared images, k = {moved.k}; the 10 most moved:")
    print(moved.table.drop(columns=["path"]).head(10).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(moved.per_domain.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    opts = dict(timesteps=[ta], block=block_a, model_b=args.model_b, block_b=block_b, timestep_b=args.timestep_b,
                prompt_b=args.prompt_b, prompt_template_b=args.prompt_template_b, k=args.k,
                n_seeds=args.n_seeds if args.n_seeds != 5 else None, n_init=args.n_init if args.n_init != 1 else None)
    spec = {"view": "what-moved", "A": {"extraction": cfg_a.to_dict(), "block": block_a},
            "B": {"extraction": cfg_b.to_dict(), "block": block_b}, "k": moved.k, "n_seeds": args.n_seeds,
            "n_common": moved.n_common, "api": "core.analysis.moved.what_moved(fs_a, block_a, fs_b, block_b, k)",
            "cli": command("what-moved", **_common_opts(args), **opts, out=args.out)}
    spec["paired"] = {"nmi": paired.nmi.to_dict(), "ami": paired.ami.to_dict(), "n_common": paired.n_common,
                      "api": "core.analysis.explore.compare_settings(fs_a, block_a, fs_b, block_b)"}
    _write(Path(args.out), spec, {"what_moved": moved.table, "per_domain_nmi": moved.per_domain, "scores": scores,
                                  "paired_difference": paired.to_frame()})
    return 0


COMMANDS = {"filmstrip": cmd_filmstrip, "cka": cmd_cka, "stability": cmd_stability, "prompt-audit": cmd_prompt_audit,
            "faithfulness": cmd_faithfulness, "spatial": cmd_spatial, "what-moved": cmd_what_moved}
