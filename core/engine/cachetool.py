"""``python -m core cache list|verify|prune``: what the feature cache holds, whether it is intact, and
making it fit a size budget (oldest settings first)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.engine.cache import FeatureCache, safe_load_npz
from core.engine.store import (
    INDEX_NAME,
    MAX_INDEX,
    CacheError,
    DamagedChunk,
    DamagedIndex,
    file_stat,
    read_chunk,
    read_index,
)
from core.safeio import UnsafeFileError, read_json_object, read_small_file

_KEY = re.compile(r"[0-9a-f]{16,64}")
MAX_META = 1 << 20  # bytes; a real meta.json is ~1 KB
LINK_NOTE = ("a symbolic link, not a folder of the cache: never followed (list, verify and prune ignore it; remove "
             "the link if it is not yours)")
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
    odd: list = field(default_factory=list)  # [(path, what it is)]: entries that are not regular files
    meta_error: str = ""  # why meta.json was not used (not a regular file, not a JSON object...)

    @property
    def layers(self) -> list[str]:
        return sorted(p.name[2:] for p in self.path.glob("L-*"))

    def describe(self) -> dict:
        cfg = self.meta.get("config", {})
        return {"key": self.key, "size": self.size, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(self.mtime)),
                "dataset": str(cfg.get("dataset", "?")), "model": str(cfg.get("model", "?")),
                "setting": setting_text(cfg),
                "timestep": str(cfg.get("timestep", "?")), "images": str(self.meta.get("n_images", "?")),
                "storage": str(self.meta.get("storage_dtype", "float32")), "layers": len(self.layers) or "old format"}


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


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
            "a folder" if stat.S_ISDIR(mode) else "not a regular file")


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(regular files, [(other entry, what it is)]) under ``folder``: links are never followed, so a link,
    FIFO or device inside a setting is reported, never read, sized or descended into."""
    files: list[Path] = []
    odd: list[tuple[Path, str]] = []

    def unreadable(e: OSError) -> None:
        odd.append((Path(e.filename or folder), f"unreadable ({e.strerror})"))

    for top, dirs, names in os.walk(folder, followlinks=False, onerror=unreadable):
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]  # listed in dirs, never descended
        real = [d for d in dirs if d not in links]
        keep = [d for d in real if top == str(folder) and d.startswith("L-")]
        # a setting holds files and L-<layer>/ folders of files: any other folder is out of place
        odd += [(Path(top) / d, "a folder where the cache expects a file (or nothing)") for d in real if d not in keep]
        dirs[:] = keep
        for name in names + links:
            p = Path(top) / name
            try:
                mode = p.lstat().st_mode
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(mode):
                files.append(p)
            else:
                odd.append((p, _kind(mode)))
    return files, odd


def _subdirs(folder: Path, skipped: list) -> list[Path]:
    """Real (not linked) sub-folders of ``folder``, sorted; links go to ``skipped`` (never followed)."""
    out = []
    try:
        items = sorted(folder.iterdir())
    except OSError:
        return out
    for p in items:
        try:
            mode = p.lstat().st_mode
        except OSError:
            continue
        if stat.S_ISLNK(mode):
            skipped.append((p, LINK_NOTE))
        elif stat.S_ISDIR(mode):
            out.append(p)
    return out


def read_meta(path: Path) -> dict:
    """A setting's ``meta.json`` as a dict whose ``config`` is a dict; raises ``ValueError`` (with the reason)
    when it is not a regular file of at most :data:`MAX_META` bytes holding a JSON object of that shape, and
    ``FileNotFoundError`` when absent."""
    meta = read_json_object(path, MAX_META, "setting description (meta.json)")
    if not isinstance(meta.get("config", {}), dict):
        raise UnsafeFileError(f"{path}: its \"config\" is not a JSON object")
    return meta


def entries(cache: FeatureCache, skipped: list | None = None) -> list[Entry]:
    """Every setting in the cache (no writes; works on a read-only cache). Links are never followed: a linked
    prefix or setting folder is left out (and listed in ``skipped``, with the reason)."""
    out = []
    skipped = [] if skipped is None else skipped
    base = cache.root / "features"
    if base.is_symlink():
        skipped.append((base, LINK_NOTE))
        return out
    if not base.is_dir():
        return out
    for pre in _subdirs(base, skipped):
        for d in _subdirs(pre, skipped):
            if not _KEY.fullmatch(d.name):
                continue
            files, odd = _walk(d)
            sizes = {}
            for p in files:
                with contextlib.suppress(OSError):
                    sizes[p] = p.lstat()
            e = Entry(d.name, d, sum(st.st_size for st in sizes.values()), list(sizes),  # an index is rewritten
                      max((st.st_mtime for p, st in sizes.items() if p.name != INDEX_NAME),  # on reads: not a
                          default=d.lstat().st_mtime), odd=odd)  # "last written"
            try:
                e.meta = read_meta(d / "meta.json")
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as err:
                e.meta_error = str(err)
            out.append(e)
    return out


def verify_entry(e: Entry, notes: list | None = None) -> list[tuple[Path, str]]:
    """(file, problem) for every chunk file of a setting that fails to read or fails its checksum, and every layer
    index that is unreadable or disagrees with a chunk file it vouches for. A merely stale index (a chunk
    rewritten after it) is harmless, it is rebuilt on the next read: it goes to ``notes``."""
    bad = [(p, (f"{what}, not a regular file: the cache never reads it; remove it (`rm -r '{p}'`), the setting's "
                "files are recomputed when next used")) for p, what in e.odd]
    if e.meta_error:
        bad.append((e.path / "meta.json", (f"{e.meta_error} (harmless for the features: it is rewritten when the "
                                           "setting is next computed; delete it)")))
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
        head = json.loads(read_small_file(p, MAX_INDEX, "layer index").split(b"\n", 1)[0][:4096])
        if type(head) is not dict:
            raise DamagedIndex("its head line is not a JSON object")
        idx = read_index(p.parent, head["layer"], int(head["chunk"]), int(head["n_images"]))
        if idx is None:
            raise DamagedIndex("disappeared")
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
          dry_run: bool = False, skipped: list | None = None) -> list[Entry]:
    """Remove settings last written more than ``older_than_days`` ago, then the oldest until the feature cache
    is at most ``max_size`` bytes; returns what was (or would be) removed. Links are never followed (a linked
    prefix or setting folder is left alone and listed in ``skipped``), and nothing outside
    ``<cache>/features`` is ever removed."""
    if older_than_days is not None and not (math.isfinite(older_than_days) and older_than_days >= 0):
        raise ValueError(f"--older-than must be a number of days >= 0 (e.g. 30), got {older_than_days}")
    if max_size is not None and max_size < 0:
        raise ValueError(f"--max-size must be >= 0, got {max_size}")
    es = sorted(entries(cache, skipped), key=lambda e: e.mtime)
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
        base = (cache.root / "features").resolve()
        for e in gone:
            _remove_setting(e.path, base)
    return gone


def _remove_setting(path: Path, base: Path) -> None:
    """``rm -r`` of one setting folder, refused unless it is a real folder (not a link) exactly two levels under
    ``base`` (``<prefix>/<key>``) whose parents are real folders too (checked just before removing)."""
    rel = path.relative_to(path.parent.parent)
    p = base / rel
    for q in (p.parent, p):
        if q.is_symlink() or not q.is_dir():
            raise CacheError(errno.ENOTDIR, f"refusing to remove {path}: {q} is no longer a real folder of the "
                                            "cache (a link or something else took its place); it was not removed")
    if p.resolve().parent.parent != base:
        raise CacheError(errno.EXDEV, f"refusing to remove {path}: it resolves outside {base}")
    shutil.rmtree(p)  # rmtree never follows links inside the folder (it unlinks them)


def main(args) -> int:
    cache = FeatureCache(args.cache_dir)
    if args.action == "list":
        skipped = []
        es = entries(cache, skipped)
        for p, why in skipped:
            print(f"note: {p}: {why}")
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
        skipped = []
        es = entries(cache, skipped)
        n_files = n_bad = 0
        for p, why in skipped:
            print(f"note: {p}: {why}")
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
    skipped = []
    gone = prune(cache, args.older_than, parse_size(args.max_size) if args.max_size is not None else None,
                 args.dry_run, skipped)
    for p, why in skipped:
        print(f"note: left alone {p}: {why}")
    left = sum(e.size for e in entries(cache)) if not args.dry_run else None
    for e in gone:
        d = e.describe()
        print(f"{'would remove' if args.dry_run else 'removed'} {e.key} ({human(e.size)}, {d['date']}, {d['dataset']})")
    print(f"{len(gone)} setting(s), {human(sum(e.size for e in gone))}"
          + (f" freed; {human(left)} left" if left is not None else " would be freed"))
    return 0
