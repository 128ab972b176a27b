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
import errno
import hashlib
import io
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

MAX_MANIFEST_BYTES = 1 << 30  # 1 GiB: ~10 million rows; a larger "manifest" is refused unread
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer typed paths are refused before any system call


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def shown(name: str) -> str:
    """``name`` as printable text: bytes that are not UTF-8 (kept by Python as surrogates) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _not_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


NOT_UTF8 = "name is not valid UTF-8 (skipped); rename it, e.g. `convmv -f latin1 -t utf8 --notest NAME`"


def _real(path: str) -> str | None:
    """The fully resolved path, or None when it cannot be resolved (missing target, symlink loop)."""
    try:
        return os.path.realpath(path, strict=True)
    except (OSError, RuntimeError, ValueError):
        return None


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _inside(path: Path, root: Path) -> bool:
    real = _real(str(path))
    return real is not None and _within(real, str(root))


def _unresolvable(path: str) -> str:
    """Why ``path`` cannot be resolved: a symlink loop, a broken link, a missing file or another error."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (skipped); remove or fix the link"
        if e.errno == errno.ENOENT:
            return ("broken symlink: its target does not exist (skipped)" if os.path.islink(path)
                    else "file does not exist")
        return f"cannot read: {e.strerror} (skipped)"
    return "cannot resolve (skipped)"


UNREADABLE_FOLDER = "cannot read folder: {} (skipped); give read access (`chmod -R u+rX`) or remove it"


def _sorted_dirs(folder: str, root: str, skipped: list[tuple[str, str]]) -> list[os.DirEntry]:
    """Sub-folders of ``folder`` (domains or classes), sorted; symlinks must resolve inside ``root`` and must
    not point at a folder that contains them (a loop). Anything refused is reported in ``skipped``."""
    out = []
    with os.scandir(folder) as it:
        entries = list(it)
    for e in entries:
        if _is_hidden(e.name):
            continue
        rel = os.path.relpath(e.path, root).replace(os.sep, "/")
        if e.is_symlink():
            real = _real(e.path)
            if real is None:
                skipped.append((shown(rel), _unresolvable(e.path)))
                continue
            if not os.path.isdir(real):
                continue
            if not _within(real, root):
                skipped.append((shown(rel), "symlink leaves the dataset root (refused)"))
                continue
            if _within(_real(folder) or folder, real):
                skipped.append((shown(rel), "symlink loop: points at a folder that contains it (skipped)"))
                continue
        elif not e.is_dir(follow_symlinks=False):
            continue
        if _not_utf8(e.name):
            skipped.append((shown(rel) + "/", "folder " + NOT_UTF8))
            continue
        out.append(e)
    return sorted(out, key=lambda e: e.name)


def _check_path_text(path: str, what: str = "dataset") -> None:
    if not path.strip():
        raise DatasetError(f"No {what} path given (an empty path would mean the current folder). Pass a DomainBed "
                           "folder (<root>/<domain>/<class>/<image>) or a CSV manifest (path,domain,class).")
    if "\x00" in path:
        raise DatasetError(f"The {what} path contains a NUL byte, which no file name can hold; type the path again.")
    if len(path) > MAX_PATH_CHARS:
        raise DatasetError(f"The {what} path is {len(path):,} characters long; paths are limited to "
                           f"{MAX_PATH_CHARS:,} characters. Check what was pasted.")


def scan_folder(root: str | os.PathLike, name: str | None = None) -> Dataset:
    """Scan a DomainBed folder ``<root>/<domain>/<class>/<image>`` (a ``.csv`` path goes to :func:`read_manifest`).

    Every file or folder that cannot be used is skipped and listed in ``Dataset.skipped`` with the reason:
    symlinks that leave the root, symlink loops, broken links, names that are not UTF-8, folders that cannot
    be read, special files (FIFOs, devices), zero-byte files and non-image extensions.

    Raises
    ------
    DatasetError
        The path is empty, does not exist, is not a folder or CSV, or the layout is unusable (see :func:`_finish`).
    """
    raw = os.fspath(root)
    _check_path_text(raw)
    root_p = Path(raw).expanduser()
    try:
        st0 = os.stat(root_p)
    except FileNotFoundError:
        raise DatasetError(f"Dataset path {shown(str(root_p))!r} does not exist. Pass a DomainBed folder "
                           "(<root>/<domain>/<class>/<image>) or a CSV manifest (path,domain,class).") from None
    except OSError as e:
        raise DatasetError(f"Cannot open dataset path {shown(str(root_p))!r}: {e.strerror}. Pass a readable "
                           "DomainBed folder or CSV manifest.") from None
    if stat.S_ISREG(st0.st_mode):
        if root_p.suffix.lower() == ".csv":
            return read_manifest(root_p, name)
        raise DatasetError(f"{shown(str(root_p))!r} is a file but not a .csv manifest. Pass a DomainBed folder or "
                           "a CSV manifest with columns path,domain,class.")
    if not stat.S_ISDIR(st0.st_mode):
        raise DatasetError(f"{shown(str(root_p))!r} is not a folder or a regular file (a device, FIFO or socket); "
                           "pass a DomainBed folder or a CSV manifest with columns path,domain,class.")
    root_r = root_p.resolve()
    root_s = str(root_r)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    stat_lines: list[str] = []
    empty: list[str] = []
    try:
        domains = _sorted_dirs(root_s, root_s, skipped)
    except OSError as e:
        raise DatasetError(f"Cannot read the dataset folder {shown(root_s)!r}: {e.strerror}. Give read access "
                           "(`chmod -R u+rX`) or pick another folder.") from None
    for d in domains:
        n_domain = len(records)
        try:
            names = sorted(os.listdir(d.path))
            classes = _sorted_dirs(d.path, root_s, skipped)
        except OSError as e:
            skipped.append((shown(d.name) + "/", UNREADABLE_FOLDER.format(e.strerror)))
            continue
        for f in names:
            if not _is_hidden(f) and os.path.isfile(os.path.join(d.path, f)):
                skipped.append((shown(f"{d.name}/{f}"),
                                "file directly in a domain folder (expected <domain>/<class>/<image>)"))
        n_unreadable = 0
        for c in classes:
            n_class = len(records)
            errors: list[OSError] = []
            # hot loop (DomainNet: 600k files): one relpath per folder, one lstat per file (a second stat
            # only for symlinks), no Path objects
            for dirpath, dirnames, filenames in os.walk(c.path, onerror=errors.append, followlinks=False):
                rel_dir = os.path.relpath(dirpath, root_r).replace(os.sep, "/")
                keep = []
                for x in sorted(dirnames):
                    if _is_hidden(x):
                        continue
                    if _not_utf8(x):
                        skipped.append((shown(f"{rel_dir}/{x}/"), "folder " + NOT_UTF8))
                    elif os.path.islink(os.path.join(dirpath, x)):
                        skipped.append((shown(f"{rel_dir}/{x}"), "symlinked sub-folder inside a class folder is "
                                        "not followed (link the class folder or the images instead)"))
                    else:
                        keep.append(x)
                dirnames[:] = keep
                for f in sorted(filenames):
                    if _is_hidden(f):
                        continue
                    p = os.path.join(dirpath, f)
                    rel = f"{rel_dir}/{f}"
                    if _not_utf8(f):
                        skipped.append((shown(rel), "file " + NOT_UTF8))
                        continue
                    if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS:
                        skipped.append((rel, "not an image file extension"))
                        continue
                    try:
                        st = os.lstat(p)
                        if stat.S_ISLNK(st.st_mode):
                            real = _real(p)
                            if real is None:
                                skipped.append((rel, _unresolvable(p)))
                                continue
                            if not _within(real, root_s):
                                skipped.append((rel, "symlink leaves the dataset root (refused)"))
                                continue
                            st = os.stat(p)
                    except OSError as e:
                        skipped.append((rel, f"cannot stat: {e.strerror}"))
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        skipped.append((rel, "not a regular file (a FIFO, device or socket)"))
                        continue
                    if st.st_size == 0:
                        skipped.append((rel, "zero bytes"))
                        continue
                    stat_lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}")
                    records.append(ImageRecord(rel, os.path.join(root_s, rel), d.name, c.name))
            for e in errors:
                where = os.path.relpath(e.filename, root_r).replace(os.sep, "/") if e.filename else c.name
                skipped.append((shown(where) + "/", UNREADABLE_FOLDER.format(e.strerror)))
            if errors:
                n_unreadable += 1
            elif len(records) == n_class:
                empty.append(shown(f"{d.name}/{c.name}"))
        if len(records) == n_domain and not n_unreadable:
            empty.append(shown(f"{d.name}/"))
    if empty:
        raise DatasetError(
            f"Folder(s) with no usable image: {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}. "
            "Every <domain>/<class> folder needs at least one image: add images or remove the empty folder "
            "(skipped files are listed by `python -m core validate PATH`)."
        )
    return _finish(name or root_r.name, str(root_r), records, skipped, stat_lines)


def read_manifest(csv_path: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a CSV manifest with columns ``path,domain,class`` (UTF-8; header names are matched ignoring
    case and spaces; paths relative to the CSV's folder, or absolute inside it).

    Rows that cannot be used are skipped and listed in ``Dataset.skipped`` (by path, or ``line N`` when the
    row has no usable path): paths that leave the CSV's folder (after resolving symlinks), missing files,
    symlink loops, fields over the CSV module's limit, zero-byte files, and the same file listed twice
    (compared by resolved path, so ``a/b.png`` and ``./a/b.png`` are one image).
    """
    raw_path = os.fspath(csv_path)
    _check_path_text(raw_path, "manifest")
    csv_p = Path(raw_path).expanduser()
    try:
        if not stat.S_ISREG(os.stat(csv_p).st_mode):
            raise DatasetError(f"Manifest {shown(str(csv_p))!r} is not a regular file; pass a CSV file.")
        from core.safeio import UnsafeFileError, read_small_file

        try:  # regular files only, re-checked on the open descriptor (never blocks on a FIFO), size-capped
            data = read_small_file(csv_p, MAX_MANIFEST_BYTES, "manifest")
        except UnsafeFileError as e:
            raise DatasetError(f"Manifest {shown(str(csv_p))!r}: {str(e).split(': ', 1)[-1]}") from None
    except FileNotFoundError:
        raise DatasetError(f"Manifest {shown(str(csv_p))!r} does not exist.") from None
    except OSError as e:
        raise DatasetError(f"Cannot read manifest {shown(str(csv_p))!r}: {e.strerror}.") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetError(
            f"Manifest {csv_p.name} is not UTF-8: line {line} has the byte 0x{data[e.start]:02x} (likely "
            "latin-1 / Windows-1252). Save the file as UTF-8 (e.g. Excel: Save As > 'CSV UTF-8'; or "
            f"`iconv -f latin1 -t utf-8 {csv_p.name} > fixed.csv`) and try again.") from None
    root = csv_p.resolve().parent
    root_s = str(root)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    stat_lines = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None) or []
    except csv.Error as e:
        raise DatasetError(f"Manifest {csv_p.name} line 1 (the header) cannot be parsed: {e}.") from None
    cols = {h.strip().lower(): i for i, h in enumerate(header)}
    missing = {"path", "domain", "class"} - set(cols)
    if missing:
        raise DatasetError(f"Manifest {csv_p.name} lacks column(s) {sorted(missing)}; the header must be "
                           "path,domain,class (paths relative to the CSV).")
    ip, idom, icls = cols["path"], cols["domain"], cols["class"]
    seen: dict[str, int] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            skipped.append((f"line {reader.line_num}", f"cannot parse the row ({e}); the row is skipped"))
            continue
        i = reader.line_num
        if not row:
            continue
        cell = (lambda k: row[k].strip() if k < len(row) else "")
        rel, dom, cls = cell(ip).replace("\\", "/"), cell(idom), cell(icls)
        if not rel or not dom or not cls:
            skipped.append((f"line {i}", "empty path, domain or class"))
            continue
        if "\x00" in rel or len(rel) > MAX_PATH_CHARS:
            skipped.append((f"line {i}", f"path holds a NUL byte or is over {MAX_PATH_CHARS:,} characters"))
            continue
        norm = os.path.normpath(os.path.join(root_s, rel))
        real = _real(norm)
        if real is None:
            if not _within(norm, root_s):
                skipped.append((rel, "path leaves the manifest's folder (refused)"))
            else:
                skipped.append((rel, _unresolvable(norm)))
            continue
        if not _within(real, root_s):
            skipped.append((rel, "path leaves the manifest's folder (refused)"))
            continue
        rid = os.path.relpath(norm if _within(norm, root_s) else real, root_s).replace(os.sep, "/")
        if os.path.splitext(rid)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append((rel, "not an image file extension"))
            continue
        try:
            st = os.stat(real)
        except OSError as e:
            skipped.append((rel, f"cannot stat: {e.strerror}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append((rel, "not a regular file" if stat.S_ISDIR(st.st_mode) else
                            "not a regular file (a FIFO, device or socket)"))
            continue
        if st.st_size == 0:
            skipped.append((rel, "zero bytes"))
            continue
        if real in seen:
            skipped.append((rel, f"listed twice (same file as line {seen[real]})"))
            continue
        seen[real] = i
        stat_lines.append(f"{rid}\t{dom}\t{cls}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}")
        records.append(ImageRecord(rid, real, dom, cls))
    return _finish(name or csv_p.stem, root_s, records, skipped, stat_lines)


def _finish(name, root, records, skipped, stat_lines) -> Dataset:
    """Fingerprint, domain/class lists and warnings.

    The fingerprint is a hash of one line per image: its id (path relative to the root), for manifests its
    domain and class, its size, ``st_mtime_ns`` and ``st_ctime_ns``. The change time cannot be set back with
    ``utime``, so an image rewritten with other pixels of the same size and the same mtime changes it; so
    does copying or moving the dataset (ctime is per copy), which only costs one recomputation. Pixels are
    not read (a scan of 600k files must stay cheap).
    """
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
    """Convert any PIL mode to RGB; 16-bit/32-bit integer images are scaled, not clipped; 32-bit float
    images with every value in [0, 1] are scaled by 255 (NaN/inf read as 0)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if im.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            hi = 1.0  # 32-bit float image in [0, 1] (scientific TIFFs)
        else:
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
    """A built-in name (``synthetic-pacs``, ``rotated-digits``, optional ``:train``/``:heldout``), the name of a
    dataset installed by ``python -m core download`` (``PACS``), a DomainBed folder or a CSV manifest."""
    from core.data import builtin

    _check_path_text(str(name_or_path))
    if builtin.is_builtin(name_or_path):
        root = builtin.ensure_builtin(name_or_path, data_dir)
        return scan_folder(root, name=builtin.canonical_name(name_or_path))
    if ":" in name_or_path and not Path(name_or_path).exists() and name_or_path.split(":")[0] in builtin.BUILTINS:
        raise DatasetError(f"Unknown split in {name_or_path!r}; use one of {builtin.SPLITS}.")
    if "/" not in name_or_path and os.sep not in name_or_path and not Path(name_or_path).exists():
        from core.data import catalogue  # a dataset installed by `python -m core download NAME`

        root = catalogue.installed_root(name_or_path, data_dir)
        if root is not None:
            return scan_folder(root, name=root.name)
        entry = catalogue.catalogue_entry(name_or_path)
        if entry is not None:
            raise DatasetError(f"Dataset {entry.name} is not downloaded yet (looked in {catalogue.data_home(data_dir)}). "
                               f"Run `python -m core download {entry.name}` (downloads only when asked; `python -m "
                               "core download --list` shows the sources), or pass the folder of a copy you have.")
    return scan_folder(name_or_path)
