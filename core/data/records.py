"""What a dataset is: image records (stable id, path, domain, class), the :class:`Dataset` that holds
them, its errors, and the seeded stratified subsample every selection uses."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


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


def finish_dataset(name, root, records, skipped, stat_lines) -> Dataset:
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
