"""Reading a CSV manifest ``path,domain,class`` (paths relative to the CSV's folder) with the same checks as a
folder scan."""

from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path


from core.data.paths import (
    MAX_MANIFEST_BYTES,
    MAX_PATH_CHARS,
    _check_path_text,
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
    return finish_dataset(name or csv_p.stem, root_s, records, skipped, stat_lines)


