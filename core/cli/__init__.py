"""Command line: ``python -m core SUBCOMMAND``. This module builds the parser and dispatches; the commands live
in one module per area: :mod:`core.cli.features` (validate, models, extract, cache, sweep),
:mod:`core.cli.report` (report, dg), :mod:`core.cli.views` (the research views), :mod:`core.cli.dgaudit`
(confounds, dg's pseudo-domain options) and :mod:`core.cli.download`; :mod:`core.cli.common` holds what they share.

The CLI calls the same core functions with the same config objects as the dashboard.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys

from core.cli.common import EXPECTED_ERRORS, _add_extraction_args, _add_stats_args, _parse_timesteps  # noqa: F401
from core.cli.features import cmd_cache, cmd_extract, cmd_models, cmd_sweep, cmd_validate
from core.cli.report import _add_report_parsers, cmd_dg, cmd_report
from core.data.builtin import BUILTINS, SPLITS


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
