"""What every subcommand shares: the errors shown as one line, argument parsing and checks (timesteps,
output paths), the extraction and statistics options, the progress bar, the config from the arguments."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


from core.data.datasets import DatasetError
from core.backbones.registry import DEFAULT_MODEL, ModelError
from core.engine.prompts import ExtractionError, PromptSpec


EXPECTED_ERRORS = (DatasetError, ModelError, ExtractionError, ValueError, FileNotFoundError, PermissionError)
try:
    from core.engine.store import CacheError

    EXPECTED_ERRORS += (CacheError,)
except ImportError:  # pragma: no cover
    pass


def int_list(s: str, what: str = "numbers", one: str = "number") -> list[int]:
    """A comma-separated list of integers (at least one) from the command line; ``what`` / ``one`` name them in
    the error."""
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be integers separated by commas, got {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"give at least one {one}")
    return out


def _parse_timesteps(s: str) -> list[int]:
    out = int_list(s, "timesteps", "timestep")
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
    add_runtime_args(p)
    p.add_argument("--storage-dtype", default="auto", choices=["auto", "float32", "float16"],
                   help="dtype of the cached features (auto: float16 on CUDA, float32 otherwise)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Where and how features are computed (never what they are): batch size, device, dtype, cache folder,
    progress bar."""
    p.add_argument("--batch-size", type=int, default=32, help="1-4096; never changes the numbers")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on GPU), float32, float16, bfloat16")
    p.add_argument("--cache-dir", default=None, help="default: $DOMAINLENS_CACHE_DIR or ~/.cache/domainlens")
    p.add_argument("--no-progress", action="store_true")


def _add_stats_args(p) -> None:
    """The scoring flags of every command that computes NMI (docs/METHODS.md)."""
    p.add_argument("--n-init", type=int, default=1,
                   help="k-means runs per k-means seed, the best kept (default 1: one k-means per seed, as in the "
                        "paper, so the +- is the real seed-to-seed spread; 3 was the old default)")


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
