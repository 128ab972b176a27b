"""CLI subcommands of the research views: ``python -m core filmstrip|cka|stability|prompt-audit``.

Each writes into ``--out DIR``: the numbers as CSV, the figure as HTML, and ``config.json``, the exact
configuration with the command that reproduces it. :func:`command` builds that command; the dashboard
pages use it too, so their "reproduce" line is the same command.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

NAMES = ("filmstrip", "cka", "stability", "prompt-audit")


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
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one number")
    return out


def add_parsers(sub, add_extraction_args) -> None:
    """Register the four subcommands on ``sub`` (an argparse subparsers object)."""
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
                        "when small, 64 for large grids)")
    c.add_argument("--out", required=True, help="output folder")
    s = sub.add_parser("stability", help="domain NMI spread over noise seeds, ensembles, k-means seeds, bootstraps")
    add_extraction_args(s)
    s.add_argument("--block", default=None, help="default: the model's default block")
    s.add_argument("--noise-seeds", type=int, default=5)
    s.add_argument("--ensembles", type=_ints, default=[1, 2, 4, 8])
    s.add_argument("--kmeans-seeds", type=int, default=10)
    s.add_argument("--bootstraps", type=int, default=20)
    s.add_argument("--difference", type=float, default=None,
                   help="a domain-NMI difference you are looking at: says whether chance alone could explain it")
    s.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("prompt-audit", help="empty vs class / domain templates vs wrong-class and constant controls")
    add_extraction_args(p)
    p.add_argument("--constant", default=None, help="the constant unrelated prompt of the control")
    p.add_argument("--out", required=True, help="output folder")


def _config(args, timestep: int):
    from core.engine.extract import ExtractionConfig, PromptSpec

    return ExtractionConfig(dataset=args.dataset, model=args.model, timestep=timestep,
                            prompt=PromptSpec.parse(args.prompt, args.prompt_template), seed=args.seed,
                            ensemble=args.ensemble, resolution=args.resolution,
                            max_per_domain=args.max_per_domain, max_per_class=args.max_per_class)


def _progress(args, desc):
    if args.no_progress:
        return None, lambda: None
    from core.cli import _progress as bar

    return bar(True, desc)


def _common_opts(args) -> dict:
    return dict(dataset=args.dataset, model=args.model, prompt=args.prompt, prompt_template=args.prompt_template,
                max_per_domain=args.max_per_domain, max_per_class=args.max_per_class, seed=args.seed,
                ensemble=args.ensemble if args.ensemble != 1 else None, resolution=args.resolution)


def _write(out: Path, spec: dict, tables: dict, fig=None, name: str = "figure") -> None:
    out.mkdir(parents=True, exist_ok=True)
    for fname, df in tables.items():
        df.to_csv(out / f"{fname}.csv", index=False, float_format="%.6g")
    if fig is not None:
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
    (out / "config.json").write_text(json.dumps(spec, indent=2))
    print(f"wrote {', '.join([f'{t}.csv' for t in tables] + ([f'{name}.html'] if fig is not None else []))}, "
          f"config.json to {out}")


def cmd_filmstrip(args) -> int:
    from core.analysis.filmstrip import block_strip, timestep_strip
    from core.analysis.prompt_audit import load
    from core.analysis.reduce import ReductionConfig
    from core.figures.views import strip_figure

    model = load(args.model, args.device)
    red = ReductionConfig(method=args.reducer, random_state=args.seed)
    update, close = _progress(args, "filmstrip")
    try:
        if args.mode == "timestep":
            block = args.block or model.default_block
            cfg = _config(args, 50)
            strip = timestep_strip(cfg, block, args.timesteps, red, model=model, batch_size=args.batch_size,
                                   cache_dir=args.cache_dir, progress=update)
            opts = dict(mode="timestep", block=block, timesteps=strip.values)
        else:
            t = (args.timesteps or [50])[0]
            cfg = _config(args, t)
            blocks = None if args.blocks in (None, "all") else [b.strip() for b in args.blocks.split(",")]
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

    model = load(args.model, args.device)
    blocks = None if args.blocks in (None, "all") else [b.strip() for b in args.blocks.split(",")]
    cfg = _config(args, (args.timesteps or [50])[0])
    update, close = _progress(args, "cka")
    try:
        layers, ids = model_layers(cfg, blocks, args.timesteps or [50], model=model, batch_size=args.batch_size,
                                   cache_dir=args.cache_dir, progress=update)
        others = None
        if args.other_model:
            from dataclasses import replace

            other = load(args.other_model, args.device)
            ocfg = replace(cfg, model=args.other_model)
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

    model = load(args.model, args.device)
    block = args.block or model.default_block
    cfg = _config(args, (args.timesteps or [50])[0])
    update, close = _progress(args, "stability")
    try:
        st = stability(cfg, block, noise_seeds=args.noise_seeds, ensembles=args.ensembles,
                       kmeans_seeds=args.kmeans_seeds, bootstraps=args.bootstraps, model=model,
                       batch_size=args.batch_size, cache_dir=args.cache_dir, progress=update)
    finally:
        close()
    print(st.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"paper's single-draw protocol: domain NMI {st.reference:.3f}")
    if args.difference is not None:
        print(spread_sentence(st.summary, args.difference))
    opts = dict(timesteps=args.timesteps or [50], block=block, noise_seeds=args.noise_seeds, ensembles=args.ensembles,
                kmeans_seeds=args.kmeans_seeds, bootstraps=args.bootstraps)
    spec = {"view": "stability", "extraction": cfg.to_dict(), **opts, "reference": st.reference,
            "cli": command("stability", **_common_opts(args), **opts, out=args.out)}
    _write(Path(args.out), spec, {"draws": st.draws, "summary": st.summary}, stability_figure(st), "stability")
    return 0


def cmd_prompt_audit(args) -> int:
    from core.analysis.prompt_audit import CONSTANT_PROMPT, leakage, load, prompt_audit
    from core.figures.views import prompt_audit_figure

    model = load(args.model, args.device)
    cfg = _config(args, (args.timesteps or [50])[0])
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


COMMANDS = {"filmstrip": cmd_filmstrip, "cka": cmd_cka, "stability": cmd_stability, "prompt-audit": cmd_prompt_audit}
