"""Scanning a DomainBed folder ``<root>/<domain>/<class>/<image>``: one ``lstat`` per file, nothing decoded,
nothing read outside the root (links and paths are resolved and checked), a fingerprint of what was found."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from core.data.manifest import read_manifest
from core.data.paths import (
    NOT_UTF8,
    _check_path_text,
    _is_hidden,
    _not_utf8,
    _real,
    _unresolvable,
    _within,
    shown,
)
from core.data.records import (
    IMAGE_EXTENSIONS,
    Dataset,
    DatasetError,
    ImageRecord,
    finish_dataset,
)

# --------------------------------------------------------------------------------------------- scan

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
    return finish_dataset(name or root_r.name, str(root_r), records, skipped, stat_lines)


