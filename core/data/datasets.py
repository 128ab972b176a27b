"""Datasets with domain labels: DomainBed folders, CSV manifests and the built-in sets.

A dataset is a list of :class:`ImageRecord` (stable id, absolute path, domain, class). Two ways in:

* DomainBed layout ``<root>/<domain>/<class>/<image>``; domains and classes are the sorted folder names.
* A CSV manifest with columns ``path,domain,class``; paths are relative to the CSV's folder.

Scanning is cheap (one ``stat`` per file, no decoding) so that it scales to DomainNet's 600k files;
:func:`verify_images` decodes every image for ``python -m core validate``, and extraction skips and
reports the images that fail to decode (:func:`load_rgb` raises :class:`UnreadableImage`).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
DEFAULT_MAX_PIXELS = 64_000_000  # larger images are skipped as "over the pixel limit"


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what to do."""


class UnreadableImage(Exception):
    """An image file that cannot be decoded (corrupt, truncated, empty, not an image, too large)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``id`` is its path relative to the dataset root (POSIX), stable across machines."""

    id: str
    path: str
    domain: str
    cls: str


@dataclass
class Dataset:
    """A scanned dataset: records plus everything validation found."""

    name: str
    root: str
    records: list[ImageRecord]
    domains: list[str]
    classes: list[str]
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per domain and class: ``{domain: {class: n}}``."""
        out: dict[str, dict[str, int]] = {d: {c: 0 for c in self.classes} for d in self.domains}
        for r in self.records:
            out[r.domain][r.cls] += 1
        return out

    def domain_labels(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        index = {d: i for i, d in enumerate(self.domains)}
        return np.array([index[r.domain] for r in (self.records if records is None else records)], dtype=np.int64)

    def class_labels(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.cls] for r in (self.records if records is None else records)], dtype=np.int64)

    def subsample(
        self, max_per_domain: int | None = None, max_per_class: int | None = None, seed: int = 0
    ) -> list[ImageRecord]:
        return stratified_subsample(self.records, max_per_domain, max_per_class, seed)


# --------------------------------------------------------------------------------------------- scan


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _sorted_dirs(folder: Path, root: Path, skipped: list[tuple[str, str]]) -> list[os.DirEntry]:
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if _is_hidden(e.name) or not e.is_dir():
                continue
            if e.is_symlink() and not _inside(Path(e.path), root):
                skipped.append((os.path.relpath(e.path, root), "symlink leaves the dataset root (refused)"))
                continue
            out.append(e)
    return sorted(out, key=lambda e: e.name)


def scan_folder(root: str | os.PathLike, name: str | None = None) -> Dataset:
    """Scan a DomainBed folder ``<root>/<domain>/<class>/<image>``.

    Raises
    ------
    DatasetError
        The path does not exist, is not a folder, or the layout is unusable (see :func:`_finish`).
    """
    root_p = Path(root).expanduser()
    if not root_p.exists():
        raise DatasetError(f"Dataset path {str(root_p)!r} does not exist. Pass a DomainBed folder "
                           "(<root>/<domain>/<class>/<image>) or a CSV manifest (path,domain,class).")
    if root_p.is_file():
        if root_p.suffix.lower() == ".csv":
            return read_manifest(root_p, name)
        raise DatasetError(f"{str(root_p)!r} is a file but not a .csv manifest. Pass a DomainBed folder or "
                           "a CSV manifest with columns path,domain,class.")
    root_r = root_p.resolve()
    root_s = str(root_r)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    stat_lines: list[str] = []
    empty: list[str] = []
    for d in _sorted_dirs(root_r, root_r, skipped):
        n_domain = len(records)
        for f in sorted(os.listdir(d.path)):
            if not _is_hidden(f) and os.path.isfile(os.path.join(d.path, f)):
                skipped.append((f"{d.name}/{f}", "file directly in a domain folder (expected <domain>/<class>/<image>)"))
        for c in _sorted_dirs(Path(d.path), root_r, skipped):
            n_class = len(records)
            # hot loop (DomainNet: 600k files): one relpath per folder, one lstat per file (a second stat
            # only for symlinks), no Path objects
            for dirpath, dirnames, filenames in os.walk(c.path, followlinks=False):
                dirnames[:] = sorted(x for x in dirnames if not _is_hidden(x))
                rel_dir = os.path.relpath(dirpath, root_r).replace(os.sep, "/")
                for f in sorted(filenames):
                    if _is_hidden(f):
                        continue
                    p = os.path.join(dirpath, f)
                    rel = f"{rel_dir}/{f}"
                    if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
                        skipped.append((rel, "not an image file extension"))
                        continue
                    try:
                        st = os.lstat(p)
                        if stat.S_ISLNK(st.st_mode):
                            if not _inside(Path(p), root_r):
                                skipped.append((rel, "symlink leaves the dataset root (refused)"))
                                continue
                            st = os.stat(p)
                    except OSError as e:
                        skipped.append((rel, f"cannot stat: {e.strerror}"))
                        continue
                    if st.st_size == 0:
                        skipped.append((rel, "zero bytes"))
                        continue
                    stat_lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
                    records.append(ImageRecord(rel, os.path.join(root_s, rel), d.name, c.name))
            if len(records) == n_class:
                empty.append(f"{d.name}/{c.name}")
        if len(records) == n_domain:
            empty.append(f"{d.name}/")
    if empty:
        raise DatasetError(
            f"Folder(s) with no usable image: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. "
            "Every <domain>/<class> folder needs at least one image: add images or remove the empty folder "
            "(skipped files are listed by `python -m core validate PATH`)."
        )
    return _finish(name or root_r.name, str(root_r), records, skipped, stat_lines)


def read_manifest(csv_path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a CSV manifest with columns ``path,domain,class`` (paths relative to the CSV's folder)."""
    csv_p = Path(csv_path).expanduser()
    if not csv_p.is_file():
        raise DatasetError(f"Manifest {str(csv_p)!r} does not exist.")
    root = csv_p.resolve().parent
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    stat_lines = []
    with open(csv_p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "domain", "class"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"Manifest {csv_p.name} lacks column(s) {sorted(missing)}; the header must be "
                               "path,domain,class (paths relative to the CSV).")
        seen = set()
        for i, row in enumerate(reader, start=2):
            rel = (row["path"] or "").strip().replace("\\", "/")
            dom, cls = (row["domain"] or "").strip(), (row["class"] or "").strip()
            if not rel or not dom or not cls:
                skipped.append((f"line {i}", "empty path, domain or class"))
                continue
            p = (root / rel)
            if Path(rel).is_absolute() or not _inside(p, root):
                skipped.append((rel, "path leaves the manifest's folder (refused)"))
                continue
            if not p.is_file():
                skipped.append((rel, "file does not exist"))
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((rel, "not an image file extension"))
                continue
            st = p.stat()
            if st.st_size == 0:
                skipped.append((rel, "zero bytes"))
                continue
            if rel in seen:
                skipped.append((rel, "listed twice"))
                continue
            seen.add(rel)
            stat_lines.append(f"{rel}\t{dom}\t{cls}\t{st.st_size}\t{st.st_mtime_ns}")
            records.append(ImageRecord(rel, str(p.resolve()), dom, cls))
    return _finish(name or csv_p.stem, str(root), records, skipped, stat_lines)


def _finish(name, root, records, skipped, stat_lines) -> Dataset:
    fingerprint = hashlib.sha256("\n".join(sorted(stat_lines)).encode()).hexdigest()[:16]
    domains = sorted({r.domain for r in records})
    classes = sorted({r.cls for r in records})
    if len(domains) < 2:
        raise DatasetError(
            f"Dataset {name!r} has {len(domains)} domain(s) with images ({', '.join(domains) or 'none'}); "
            "at least 2 are needed. Lay it out as <root>/<domain>/<class>/<image> with one folder per domain."
        )
    warnings = []
    classes_by_domain: dict[str, set[str]] = defaultdict(set)
    for r in records:
        classes_by_domain[r.domain].add(r.cls)
    all_classes = set(classes)
    for d in domains:
        missing = sorted(all_classes - classes_by_domain[d])
        if missing:
            warnings.append(f"domain {d!r} has no images of class(es) {missing}; class sets differ between domains")
    return Dataset(name, root, records, domains, classes, fingerprint, skipped, warnings)


# -------------------------------------------------------------------------------------- images


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image as 8-bit RGB (first frame of animations; alpha composited on white).

    Grayscale, palette, CMYK and 16-bit images are converted. Raises :class:`UnreadableImage`.
    """
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")  # bomb / truncation warnings: our own limit and errors decide
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableImage(f"{w}x{h} is over the pixel limit of {max_pixels}")
            im.seek(0)
            im.load()
            return to_rgb(im)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"over the pixel limit ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImage(f"cannot decode: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; 16-bit/32-bit integer images are scaled, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, CMYK, YCbCr, RGB...


def verify_images(records: Iterable[ImageRecord], max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> list[tuple[str, str]]:
    """Decode every image; return ``(id, reason)`` for those that fail."""
    bad = []
    for r in records:
        try:
            load_rgb(r.path, max_pixels)
        except UnreadableImage as e:
            bad.append((r.id, str(e)))
    return bad


# ----------------------------------------------------------------------------------- subsample


def _rank(seed: int, image_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{image_id}".encode(), digest_size=8).digest()


def stratified_subsample(
    records: Sequence[ImageRecord],
    max_per_domain: int | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
) -> list[ImageRecord]:
    """At most ``max_per_domain`` images per domain (classes balanced round-robin) and at most
    ``max_per_class`` per (domain, class). Deterministic in ``seed``; each image's rank is a hash of
    (seed, id), so adding a file elsewhere never reshuffles a selection. Output is sorted by id.
    """
    for v, n in ((max_per_domain, "max_per_domain"), (max_per_class, "max_per_class")):
        if v is not None and v < 1:
            raise ValueError(f"`{n}` must be >= 1 or None, got {v}")
    cells: dict[str, dict[str, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[r.domain][r.cls].append(r)
    out: list[ImageRecord] = []
    for d in sorted(cells):
        queues = []
        for c in sorted(cells[d]):
            q = sorted(cells[d][c], key=lambda r: _rank(seed, r.id))
            queues.append(q[:max_per_class] if max_per_class else q)
        if max_per_domain is None:
            out.extend(r for q in queues for r in q)
            continue
        taken, i = [], 0
        while len(taken) < max_per_domain and any(i < len(q) for q in queues):
            for q in queues:
                if i < len(q) and len(taken) < max_per_domain:
                    taken.append(q[i])
            i += 1
        out.extend(taken)
    return sorted(out, key=lambda r: r.id)


# ------------------------------------------------------------------------------------- resolve


def load_dataset(name_or_path: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A built-in name (``synthetic-pacs``, ``rotated-digits``, optional ``:train``/``:heldout``), a
    DomainBed folder or a CSV manifest."""
    from core.data import builtin

    if builtin.is_builtin(name_or_path):
        root = builtin.ensure_builtin(name_or_path, data_dir)
        return scan_folder(root, name=builtin.canonical_name(name_or_path))
    if ":" in name_or_path and not Path(name_or_path).exists() and name_or_path.split(":")[0] in builtin.BUILTINS:
        raise DatasetError(f"Unknown split in {name_or_path!r}; use one of {builtin.SPLITS}.")
    return scan_folder(name_or_path)
