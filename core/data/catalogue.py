"""The catalogue of known datasets (DomainBed's benchmarks and where each comes from) and where downloaded
datasets are installed. Read by :func:`core.data.datasets.load_dataset` to find a download by its name;
:mod:`core.data.download` fetches and installs them."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MARKER_NAME = ".domainlens-download.json"


@dataclass(frozen=True)
class Source:
    """One file of a dataset: its URL, the SHA-256 it must have (None: none is published; recorded on first
    download) and the file name it is saved under."""

    url: str
    sha256: str | None = None
    filename: str = ""

    @property
    def name(self) -> str:
        return self.filename or PurePosixPath(urllib.parse.urlparse(self.url).path).name or "download"


@dataclass(frozen=True)
class CatalogueEntry:
    """A known dataset. ``source_type``: ``hub-parquet`` (``hub_repo``), ``archives`` (``sources``) or ``manual``
    (fetch ``sources`` by hand, then ``--archive FILE``)."""

    name: str
    description: str
    source_type: str
    domains: tuple[str, ...]
    hub_repo: str = ""
    sources: tuple[Source, ...] = ()
    checksums: str = ""  # an honest line on what is verified
    manual: str = ""  # for source_type "manual": how to fetch the archive


DOMAINBED = "DomainBed's domainbed/scripts/download.py"
CATALOGUE: dict[str, CatalogueEntry] = {e.name: e for e in (
    CatalogueEntry(
        "PACS", "photo / art painting / cartoon / sketch, 7 classes, 9,991 images", "hub-parquet",
        ("art_painting", "cartoon", "photo", "sketch"), hub_repo="flwrlabs/pacs",
        checksums="each parquet file is checked against the SHA-256 the Hub lists for it"),
    CatalogueEntry(
        "VLCS", "Caltech101 / LabelMe / SUN09 / VOC2007, 5 classes, 10,729 images", "manual",
        ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
        sources=(Source("https://drive.google.com/uc?id=1skwblH1_okBwxWxmRsp9_qi15hyPpxg8",
                        filename="VLCS.tar.gz"),),
        checksums="no checksum is published; the SHA-256 of the archive is recorded on install",
        manual=f"{DOMAINBED} fetches it from Google Drive, which answers scripts with a confirmation page: "
               "open the URL in a browser"),
    CatalogueEntry(
        "OfficeHome", "Art / Clipart / Product / Real World, 65 classes, 15,588 images", "manual",
        ("Art", "Clipart", "Product", "Real World"),
        sources=(Source("https://drive.google.com/uc?id=1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC",
                        filename="office_home.zip"),),
        checksums="no checksum is published; the SHA-256 of the archive is recorded on install",
        manual=f"{DOMAINBED} fetches it from Google Drive, which answers scripts with a confirmation page: "
               "open the URL in a browser (original site: https://www.hemanthdv.org/officeHomeDataset.html)"),
    CatalogueEntry(
        "TerraIncognita", "camera-trap locations L100 / L38 / L43 / L46, 10 classes, 24,788 images", "manual",
        ("location_100", "location_38", "location_43", "location_46"),
        sources=(Source("https://lilablobssc.blob.core.windows.net/caltechcameratraps/eccv_18_all_images_sm.tar.gz"),
                 Source("https://lilablobssc.blob.core.windows.net/caltechcameratraps/labels/"
                        "caltech_camera_traps.json.zip")),
        checksums="no checksum is published",
        manual=f"the DomainBed layout is built from the Caltech Camera Traps images and annotations by "
               f"{DOMAINBED} (download_terra_incognita); run it, then pass the folder it writes, or "
               "--archive a tar/zip of that folder"),
    CatalogueEntry(
        "DomainNet", "clipart / infograph / painting / quickdraw / real / sketch, 345 classes, 586,575 images",
        "archives", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        sources=tuple(Source(u) for u in (
            "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/clipart.zip",
            "http://csr.bu.edu/ftp/visda/2019/multi-source/infograph.zip",
            "http://csr.bu.edu/ftp/visda/2019/multi-source/groundtruth/painting.zip",
            "http://csr.bu.edu/ftp/visda/2019/multi-source/quickdraw.zip",
            "http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip",
            "http://csr.bu.edu/ftp/visda/2019/multi-source/sketch.zip")),
        checksums="no checksum is published; the SHA-256 of each zip is recorded on first download and "
                  "checked on every later one"),
)}


def catalogue_entry(name: str) -> CatalogueEntry | None:
    """The catalogue entry named ``name`` (case-insensitive), or None."""
    low = name.strip().lower().replace("-", "").replace("_", "")
    return next((e for k, e in CATALOGUE.items() if k.lower() == low), None)


# --------------------------------------------------------------------------------------------- places


def data_home(data_dir: str | os.PathLike | None = None) -> Path:
    from core.data.builtin import data_home as _home

    return _home(data_dir)


def installed_root(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The root of an installed download named ``name`` (a catalogue name, case-insensitive, or the name given
    at install) in ``data_dir`` / the data home; None if it is not installed."""
    entry = catalogue_entry(name)
    folder = entry.name if entry else name
    if not folder or "/" in folder or "\\" in folder or folder.startswith("."):
        return None
    root = data_home(data_dir) / folder
    return root if (root / MARKER_NAME).is_file() else None


def installed_datasets(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(name, root)`` of every dataset installed by a download in ``data_dir`` / the data home."""
    home = data_home(data_dir)
    try:
        entries = sorted(os.scandir(home), key=lambda e: e.name)
    except OSError:
        return []
    return [(e.name, Path(e.path)) for e in entries
            if not e.name.startswith(".") and e.is_dir() and os.path.isfile(os.path.join(e.path, MARKER_NAME))]
