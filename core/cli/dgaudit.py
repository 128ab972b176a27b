"""CLI pieces of the DG what-if and the confound checks: the ``dg`` flags for pseudo-domain quality and the
sweeps (:func:`add_dg_args`), and the ``python -m core confounds`` subcommand (:func:`add_parsers`)."""

from __future__ import annotations

import sys
from pathlib import Path


# core.analysis.dg's LEARNERS and RANK_BY, written out so that building the parser imports no scikit-learn
# (tests/test_dg.py checks they agree)
LEARNERS = ("normalised", "balanced")
RANK_BY = ("pd_gain", "heldout_acc")


def add_dg_args(d) -> None:
    """The ``dg`` flags of the pseudo-domain quality ranking and its sweeps."""
    d.add_argument("--learner", choices=LEARNERS, default=LEARNERS[0],
                   help="the domain-using learner of pd_gain: normalised (per-domain standardisation, default) or "
                        "balanced (group-balanced weights)")
    d.add_argument("--rank-by", choices=RANK_BY, default="pd_gain",
                   help="pd_gain (held-out gain from the pseudo-domains, what GUIDE uses them for; default) or "
                        "heldout_acc")
    d.add_argument("--k-sweep", action="store_true",
                   help="also sweep K over GUIDE's classes x {1,3,5} and the number of training domains for the top "
                        "setting (<out stem>-k-sweep.csv)")
    d.add_argument("--train-domain-sweep", action="store_true",
                   help="also vary the number of training domains for the top setting "
                        "(<out stem>-train-domains.csv)")


def dg_extras(args, best, out: Path) -> list[str]:
    """The sweeps asked for on the top setting ``best`` and the 'trained on the held-out domain' warning;
    returns the lines to print."""
    from core.analysis.dg import k_sweep, seen_warning, train_domain_sweep
    from core.engine.extract import ExtractionConfig, get_features

    lines = []
    warn = seen_warning(best)
    if warn:
        lines.append(f"warning: {warn}")
    if not (args.k_sweep or args.train_domain_sweep):
        return lines
    cfg = ExtractionConfig(dataset=args.dataset, model=best.model, timestep=50 if best.timestep is None else
                           best.timestep, seed=args.seed, max_per_domain=args.max_per_domain)
    fs = get_features(cfg, [best.block], device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                      cache_dir=args.cache_dir)
    X = fs.features[best.block]
    if args.k_sweep:
        df = k_sweep(X, fs.domains, fs.classes, seed=args.analysis_seed, learner=args.learner,
                     domain_names=fs.domain_names)
        p = out.with_name(out.stem + "-k-sweep.csv")
        df.to_csv(p, index=False, float_format="%.4f")
        lines.append(f"wrote {p} (K = {', '.join(str(k) for k in df['n_pseudo_domains'])})")
    if args.train_domain_sweep:
        df = train_domain_sweep(X, fs.domains, fs.classes, n_clusters=args.clusters, seed=args.analysis_seed,
                                learner=args.learner, domain_names=fs.domain_names)
        p = out.with_name(out.stem + "-train-domains.csv")
        df.to_csv(p, index=False, float_format="%.4f")
        lines.append(f"wrote {p} ({len(df)} training-domain counts)")
    return lines


def add_parsers(sub, add_extraction_args) -> None:
    """Register ``confounds`` on ``sub`` (an argparse subparsers object)."""
    c = sub.add_parser("confounds", help="is a domain score reading the class? class-only domain accuracy, domain "
                                         "probe with chance levels and confusion, leave-class-out probe, "
                                         "domain NMI within each class")
    add_extraction_args(c)
    c.add_argument("--block", default=None, help="default: the model's default block")
    c.add_argument("--n-seeds", type=int, default=3, help="k-means seeds of the within-class NMI (default 3)")
    c.add_argument("--out", required=True, help="output folder")


def cmd_confounds(args) -> int:
    from core.analysis.confounds import confounds_of
    from core.analysis.prompt_audit import load
    from core.cli.views import _common_opts, _config, _progress, _write, command
    from core.engine.extract import get_features
    from core.engine.limits import check_size

    check_size("n_seeds", args.n_seeds)
    model = load(args.model, args.device)
    block = args.block or model.default_block
    if block not in model.blocks:
        raise ValueError(f"unknown block {block!r}; this model has {list(model.blocks)}")
    t = (args.timesteps or [50])[0]
    cfg = _config(args, t)
    update, close = _progress(args, "confounds")
    try:
        fs = get_features(cfg, [block], batch_size=args.batch_size, cache_dir=args.cache_dir, progress=update,
                          model=model)
    finally:
        close()
    r = confounds_of(fs, block, seed=args.seed, n_seeds=args.n_seeds)
    opts = dict(timesteps=[t] if model.uses_timestep else None, block=block, n_seeds=args.n_seeds)
    spec = {"view": "confounds", "extraction": cfg.to_dict(), **opts, "notes": r.notes,
            "cli": command("confounds", **_common_opts(args), **opts, out=args.out)}
    out = Path(args.out)
    _write(out, spec, {"confounds": r.summary(), "per_class": r.per_class,
                       "confusion": r.confusion.reset_index()})
    print(r.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for n in r.notes:
        print(f"note: {n}", file=sys.stderr)
    return 0


COMMANDS = {"confounds": cmd_confounds}
