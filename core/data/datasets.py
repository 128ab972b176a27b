"""Datasets with domain labels: DomainBed folders, CSV manifests and the built-in sets.

A dataset is a list of :class:`ImageRecord` (stable id, absolute path, domain, class). Two ways in:

* DomainBed layout ``<root>/<domain>/<class>/<image>``; domains and classes are the sorted folder names.
* A CSV manifest with columns ``path,domain,class``; paths are relative to the CSV's folder.

Scanning is cheap (one ``stat`` per file, no decoding) so that it scales to DomainNet's 600k files;
:func:`verify_images` decodes every image for ``python -m core validate``, and extraction skips and
reports the images that fail to decode (:func:`load_rgb` raises :class:`UnreadableImage`).
"""

from __future__ import annotations

import os
from pathlib import Path

# The pieces, one module each (re-exported here: ``from core.data.datasets import ...`` keeps working):
from core.data.images import load_rgb, to_rgb, verify_images  # noqa: F401
from core.data.manifest import read_manifest  # noqa: F401
from core.data.records import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Dataset, DatasetError, ImageRecord,  # noqa: F401
                               UnreadableImage, stratified_subsample)
from core.data.paths import MAX_MANIFEST_BYTES, MAX_PATH_CHARS, _check_path_text, shown  # noqa: F401
from core.data.scan import scan_folder  # noqa: F401


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
