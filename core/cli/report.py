"""The paper's tables (``report``) and the leave-one-domain-out what-if (``dg``)."""

from __future__ import annotations

from pathlib import Path


from core.backbones.registry import DEFAULT_MODEL

from core.cli.common import _csv_list, _parse_timesteps, _progress, _seed_list, add_runtime_args


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
    add_runtime_args(r)

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
    add_runtime_args(d)
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

    from core.analysis.dg import mean_rows, rank_settings
    from core.analysis.dg_export import export_domainbed
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
