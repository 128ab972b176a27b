"""``python -m core cache list|verify|prune``: what the feature cache holds, whether it is intact, and
making it fit a size budget (oldest settings first)."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.engine.cache import FeatureCache, safe_load_npz
from core.engine.store import INDEX_NAME, DamagedChunk, DamagedIndex, file_stat, read_chunk, read_index

_KEY = re.compile(r"[0-9a-f]{16,64}")
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"--max-size must be a size like 50GB, 500MB or 2TB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


@dataclass
class Entry:
    key: str
    path: Path
    size: int
    files: list[Path] = field(default_factory=list)
    mtime: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return sorted(p.name[2:] for p in self.path.glob("L-*"))

    def describe(self) -> dict:
        cfg = self.meta.get("config", {})
        return {"key": self.key, "size": self.size, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.mtime)),
                "dataset": cfg.get("dataset", "?"), "model": cfg.get("model", "?"), "setting": setting_text(cfg),
                "timestep": cfg.get("timestep", "?"), "images": self.meta.get("n_images", "?"),
                "storage": self.meta.get("storage_dtype", "float32"), "layers": len(self.layers) or "old format"}


def setting_text(cfg: dict) -> str:
    """What tells settings of one dataset, model and timestep apart: prompt, seed, sample and the options left at
    their defaults only when they are not (``seed 0 · 100/domain · prompt "a photo of a {class}"``)."""
    if not cfg:
        return "?"
    parts = [f"seed {cfg.get('seed', '?')}"]
    mpd, mpc = cfg.get("max_per_domain"), cfg.get("max_per_class")
    parts.append(f"{mpd}/domain" if mpd else "all images")
    if mpc:
        parts.append(f"{mpc}/class")
    if cfg.get("ensemble", 1) != 1:
        parts.append(f"ensemble {cfg['ensemble']}")
    prompt = cfg.get("prompt") or {}
    if prompt.get("mode", "empty") != "empty":
        text = json.dumps(prompt.get("text", ""), ensure_ascii=False)
        parts.append(f"{prompt['mode']} {text if len(text) <= 60 else text[:57] + '…'}")
    for k, default in (("class_label", None), ("noise_mode", "noised"), ("resolution", None), ("token_pooling", None)):
        if cfg.get(k, default) != default:
            parts.append(f"{k.replace('_', ' ')} {cfg[k]}")
    return " · ".join(parts)


def entries(cache: FeatureCache) -> list[Entry]:
    """Every setting in the cache (no writes; works on a read-only cache)."""
    out = []
    base = cache.root / "features"
    if not base.is_dir():
        return out
    for pre in sorted(base.iterdir()):
        if not pre.is_dir():
            continue
        for d in sorted(pre.iterdir()):
            if not (d.is_dir() and _KEY.fullmatch(d.name)):
                continue
            files = [p for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
            e = Entry(d.name, d, sum(p.stat().st_size for p in files), files,  # an index is rewritten on reads:
                      max((p.stat().st_mtime for p in files if p.name != INDEX_NAME),  # not a "last written"
                          default=d.stat().st_mtime))
            try:
                e.meta = json.loads((d / "meta.json").read_text())
            except (OSError, ValueError):
                pass
            out.append(e)
    return out


def verify_entry(e: Entry, notes: list | None = None) -> list[tuple[Path, str]]:
    """(file, problem) for every chunk file of a setting that fails to read or fails its checksum, and every layer
    index that is unreadable or disagrees with a chunk file it vouches for. A merely stale index (a chunk
    rewritten after it) is harmless, it is rebuilt on the next read: it goes to ``notes``."""
    bad = []
    headers = {}
    for p in sorted(e.files):
        if p.name.startswith(".tmp-"):
            bad.append((p, "left-over temp file of an interrupted write (harmless; prune removes it)"))
        elif p.suffix == ".safetensors":
            try:
                headers[p] = read_chunk(p)[0]
            except (DamagedChunk, OSError) as err:
                bad.append((p, str(err)))
        elif p.suffix == ".npz" and safe_load_npz(p) is None:
            bad.append((p, "damaged old-format chunk"))
    for p in sorted(e.files):
        if p.name == INDEX_NAME and p.parent.name.startswith("L-"):
            bad += [(p, why) for why in _check_index(p, headers, e, notes)]
    return bad


def _check_index(p: Path, headers: dict, e: Entry, notes) -> list[str]:
    try:  # the layer name, chunk size and image count are the index's own (checked against its files here)
        head = json.loads(p.read_bytes().split(b"\n", 1)[0][:4096])
        idx = read_index(p.parent, head["layer"], int(head["chunk"]), int(head["n_images"]))
    except (DamagedIndex, OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return [f"unreadable layer index ({err}; harmless: it is ignored and rewritten on the next read)"]
    stale = []
    for h in idx[1]:
        got = headers.get(h.path)
        try:
            now = file_stat(h.path.stat())
        except OSError:
            now = None
        if now != h.stat or got is None:
            stale.append(h.path.name)
        elif (got.ids_sha, got.skipped, got.n_rows, got.n_cols, got.dtype, got.crc32, got.data_start) != \
                (h.ids_sha, h.skipped, h.n_rows, h.n_cols, h.dtype, h.crc32, h.data_start):
            return [f"layer index disagrees with {h.path.name} (harmless: delete it, it is rewritten on the next read)"]
    if stale and notes is not None:
        notes.append((p, f"stale for {len(stale)} chunk(s) rewritten since (rebuilt on the next read)"))
    return []


def prune(cache: FeatureCache, older_than_days: float | None = None, max_size: int | None = None,
          dry_run: bool = False) -> list[Entry]:
    """Remove settings last written more than ``older_than_days`` ago, then the oldest until the feature cache
    is at most ``max_size`` bytes; returns what was (or would be) removed."""
    es = sorted(entries(cache), key=lambda e: e.mtime)
    gone = []
    if older_than_days is not None:
        cutoff = time.time() - older_than_days * 86400
        gone += [e for e in es if e.mtime < cutoff]
    if max_size is not None:
        total = sum(e.size for e in es if e not in gone)
        for e in es:
            if total <= max_size:
                break
            if e not in gone:
                gone.append(e)
                total -= e.size
    if not dry_run:
        for e in gone:
            shutil.rmtree(e.path)
    return gone


def main(args) -> int:
    cache = FeatureCache(args.cache_dir)
    if args.action == "list":
        es = entries(cache)
        if not es:
            print(f"feature cache {cache.root}: empty")
            return 0
        print(f"feature cache {cache.root}: {len(es)} setting(s), {human(sum(e.size for e in es))}")
        print(f"{'key':32s}  {'size':>9s}  {'date':16s}  {'images':>7s}  {'t':>4s}  {'storage':7s}  {'layers':>6s}  "
              "dataset / model  (setting: seed, sample, prompt, other options not at their default)")
        for e in sorted(es, key=lambda e: -e.mtime):
            d = e.describe()
            print(f"{d['key']:32s}  {human(d['size']):>9s}  {d['date']:16s}  {d['images']!s:>7s}  {d['timestep']!s:>4s}  "
                  f"{d['storage']:7s}  {d['layers']!s:>6s}  {d['dataset']} / {d['model']}  ({d['setting']})")
        return 0
    if args.action == "verify":
        es = entries(cache)
        n_files = n_bad = 0
        for e in es:
            notes = []
            bad = verify_entry(e, notes)
            n_files += len(e.files)
            n_bad += len(bad)
            for p, why in bad:
                print(f"DAMAGED {p}: {why}")
            for p, why in notes:
                print(f"note: {p}: {why}")
        print(f"verified {n_files} file(s) in {len(es)} setting(s): "
              + ("all intact" if not n_bad else f"{n_bad} damaged (they are recomputed when next used, or run "
                                                "`python -m core cache prune` to drop whole settings)"))
        return 1 if n_bad else 0
    if args.older_than is None and args.max_size is None:
        raise ValueError("prune needs --older-than DAYS and/or --max-size SIZE (e.g. --max-size 50GB)")
    if args.older_than is not None and args.older_than < 0:
        raise ValueError(f"--older-than must be >= 0 days, got {args.older_than}")
    gone = prune(cache, args.older_than, parse_size(args.max_size) if args.max_size else None, args.dry_run)
    left = sum(e.size for e in entries(cache)) if not args.dry_run else None
    for e in gone:
        d = e.describe()
        print(f"{'would remove' if args.dry_run else 'removed'} {e.key} ({human(e.size)}, {d['date']}, {d['dataset']})")
    print(f"{len(gone)} setting(s), {human(sum(e.size for e in gone))}"
          + (f" freed; {human(left)} left" if left is not None else " would be freed"))
    return 0
