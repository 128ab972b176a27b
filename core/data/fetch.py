"""The rules every download follows: the offline switch and the Hub endpoint, size caps, resumable HTTP(S)
fetches with SHA-256 checks (trust on first use, recorded in a lock file), and archive extraction that refuses
path traversal, links and devices. :mod:`core.data.download` builds datasets and models on them."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import stat
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.data.catalogue import (CATALOGUE, DOMAINBED, MARKER_NAME, CatalogueEntry, Source,  # noqa: F401
                                 catalogue_entry, data_home, installed_datasets, installed_root)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int | None], None]  # (bytes done, bytes total or None)

LOCK_NAME = "domainlens-downloads.lock.json"
DOWNLOADS_DIR = ".downloads"

GB = 1 << 30
MAX_FILE_BYTES = 32 * GB  # one downloaded file (DomainNet's largest zip is ~6 GB)
MAX_MODEL_BYTES = 100 * GB  # all files of one model (FLUX.1 transformer + encoders: ~35 GB)
MAX_EXTRACT_BYTES = 64 * GB  # all members of the archives of one dataset (DomainNet: ~20 GB)
MAX_MEMBERS = 2_000_000  # members of one archive (DomainNet: 600k images over six zips)
MAX_IMAGE_BYTES = 64 << 20  # one image inside a parquet file

MODEL_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".onnx", ".gguf")
SKIPPED_COMPONENTS = ("safety_checker",)  # pipeline parts DomainLens never loads
VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema", "onnx", "flax")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
IMAGE_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif"}


class DownloadError(ValueError):
    """A download that cannot go on; the message says what happened and what to run."""


# ------------------------------------------------------------------------------------------- offline


def _truthy(v: str | None) -> bool:
    return (v or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline_reason() -> str | None:
    """Why downloads are off right now (the environment's offline switches), or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DOMAINLENS_OFFLINE"):
        if _truthy(os.environ.get(var)):
            return (f"offline mode is on ({var}={os.environ[var]}); unset it (e.g. `env -u {var} python -m core "
                    "download ...`) to download")
    return None


def _check_online() -> None:
    why = offline_reason()
    if why:
        raise DownloadError(f"Not downloading: {why}. DomainLens works offline with local folders and cached models.")


def hub_endpoint(endpoint: str | None = None) -> str:
    """``endpoint``, else ``$HF_ENDPOINT`` (read now, not at import), else https://huggingface.co."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def reachable(url: str, timeout: float = 1.5) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds (name lookup
    included: the probe runs in a daemon thread, so a slow resolver cannot hold the caller longer)."""
    u = urllib.parse.urlparse(url)
    if not u.hostname:
        return False
    port = u.port or (443 if u.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((u.hostname, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, name="domainlens-reachable", daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def unavailable_reason(what: str, endpoint: str | None = None, timeout: float = 1.5) -> str | None:
    """Why downloading ``what`` (a catalogue name or a hub id) cannot work now, or None (for the app's button)."""
    why = offline_reason()
    if why:
        return why
    entry = catalogue_entry(what)
    if entry is not None and entry.source_type == "manual":
        return f"{entry.name} cannot be fetched automatically: {entry.manual}"
    url = entry.sources[0].url if entry is not None and entry.source_type == "archives" else hub_endpoint(endpoint)
    if not reachable(url, timeout):
        host = urllib.parse.urlparse(url).netloc
        return f"{host} cannot be reached from this machine (no network?)"
    return None


# ---------------------------------------------------------------------------------------- HTTP fetch


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / (1 << 20):.1f} MB"


_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def _check_space(folder: Path, need: float, what: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need > free:
        raise DownloadError(f"{what} needs about {_gb(need)} of disk space in {folder}, but only {_gb(free)} is "
                            "free; free some space or pass --dir on another disk")


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, max_bytes: int = MAX_FILE_BYTES,
          progress: Progress | None = None, timeout: float = 60.0, retries: int = 3,
          headers: dict[str, str] | None = None) -> str:
    """Download ``url`` to ``dest`` through ``dest.part`` and return the file's SHA-256.

    Resumable: a ``.part`` left by an interrupted run is continued with an HTTP ``Range`` request (a server that
    ignores it sends the whole file, which then replaces the part). A connection that drops mid-body is retried
    ``retries`` times from where it stopped; after that the ``.part`` is kept and the error says to run the same
    command again. A file over ``max_bytes`` (by ``Content-Length``, or while streaming) is refused. With
    ``sha256`` given, a file that does not match is deleted and refused (:class:`DownloadError`).
    """
    dest = Path(dest)
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url!r}: only http:// and https:// URLs are downloaded")
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():  # fetched completely by an earlier run (e.g. one of several archives)
        digest = _sha256_file(dest)
        if not sha256 or digest == sha256.lower():
            return digest
        dest.unlink()
    attempt = 0
    while True:
        try:
            done = _fetch_once(url, part, max_bytes, progress, timeout, headers or {})
            break
        except _Interrupted as e:
            if attempt >= retries:
                raise DownloadError(f"The download of {url} was interrupted after {_gb(e.done)} of "
                                    f"{_gb(e.total) if e.total else 'an unknown size'} ({e.why}). The part is "
                                    f"kept in {part}; run the same command again to resume.") from None
            attempt += 1
            logger.warning("download of %s interrupted (%s); resuming (try %d of %d)", url, e.why, attempt, retries)
            time.sleep(min(2.0 * attempt, 5.0))
    digest = _sha256_file(part)
    if sha256 and digest.lower() != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"Checksum mismatch for {url}: expected SHA-256 {sha256.lower()}, got {digest} "
                            f"({_gb(done)}). The file was deleted and nothing was installed. If the source changed "
                            "on purpose, check it and pass its new --sha256 (or remove its line from "
                            f"{LOCK_NAME}); otherwise try again later or from another mirror.")
    os.replace(part, dest)
    return digest


class _Interrupted(Exception):
    def __init__(self, done: int, total: int | None, why: str):
        super().__init__(why)
        self.done, self.total, self.why = done, total, why


def _fetch_once(url: str, part: Path, max_bytes: int, progress: Progress | None, timeout: float,
                headers: dict[str, str]) -> int:
    have = part.stat().st_size if part.exists() else 0
    req_headers = {"User-Agent": "domainlens-download", "Accept-Encoding": "identity", **headers}
    if have:
        req_headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=req_headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part may already hold the whole file
            total = (e.headers.get("Content-Range") or "").rpartition("/")[2] if e.headers else ""
            if total.isdigit() and int(total) == have:
                return have
            part.unlink(missing_ok=True)
            raise _Interrupted(0, None, "the server refused to resume; starting over") from None
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}; check the URL (or try again later)") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Cannot reach {url}: {reason}. Check the network (DomainLens itself works offline; "
                            "only `download` needs it).") from None
    with resp:
        if have and resp.status == 206:
            m = _RANGE.match(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(f"{url}: the server resumed at the wrong place "
                                    f"({resp.headers.get('Content-Range')!r}, expected byte {have}); delete "
                                    f"{part} and run again")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:
            have = 0  # a fresh download, or the server ignored the Range header: start over
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        if total is not None and total > max_bytes:
            raise DownloadError(f"{url} is {_gb(total)}, over the limit of {_gb(max_bytes)}; pass a larger "
                                "--max-size if this is expected")
        if total is not None:
            _check_space(part.parent, total - have, url)
        done = have
        if progress:
            progress(done, total)
        with open(part, mode) as f:
            while True:
                try:
                    block = resp.read(1 << 20)
                except (OSError, http.client.HTTPException) as e:
                    f.flush()
                    raise _Interrupted(done, total, f"{type(e).__name__}: {e}") from None
                if not block:
                    break
                done += len(block)
                if done > max_bytes:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{url} sent more than {_gb(max_bytes)}; refused (pass a larger "
                                        "--max-size if this is expected)")
                f.write(block)
                if progress:
                    progress(done, total)
    if total is not None and done < total:
        raise _Interrupted(done, total, "the connection closed early")
    return done


# -------------------------------------------------------------------------------------------- lock file


def _lock_path(home: Path) -> Path:
    return home / LOCK_NAME


def read_lock(home: Path) -> dict:
    """The lock file's entries: ``{url: {"sha256": ..., "bytes": ..., "dataset": ..., "recorded": ...}}``."""
    try:
        d = json.loads(_lock_path(home).read_text())
    except (OSError, ValueError):
        return {}
    return d.get("files", {}) if isinstance(d, dict) else {}


def _record_lock(home: Path, url: str, digest: str, size: int, dataset: str) -> None:
    files = read_lock(home)
    files[url] = {"sha256": digest, "bytes": size, "dataset": dataset,
                  "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    home.mkdir(parents=True, exist_ok=True)
    tmp = _lock_path(home).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, _lock_path(home))


# -------------------------------------------------------------------------------------- safe extraction


def _bad_name(name: str) -> str | None:
    """Why an archive member name is refused (absolute, drive letter, ``..``), or None."""
    n = name.replace("\\", "/")
    if not n or n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return "an absolute path"
    if any(part == ".." for part in n.split("/")):
        return "a '..' component (path traversal)"
    if "\x00" in n:
        return "a NUL byte"
    return None


def _refuse(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(f"Refusing {archive.name}: member {member!r} has {why}. Nothing was extracted or "
                         "installed; the archive is not safe to unpack (get it from a trusted source).")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, max_members: int = MAX_MEMBERS,
                 max_bytes: int = MAX_EXTRACT_BYTES) -> tuple[int, int]:
    """Extract a zip or tar archive into ``dest`` after checking every member first: names that are absolute or
    contain ``..``, symlinks, hard links and special files refuse the whole archive, as do more than
    ``max_members`` members or more than ``max_bytes`` of content (checked again while writing). Returns
    ``(files written, bytes written)``."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, dest, max_members, max_bytes)
    try:
        with tarfile.open(archive, "r:*") as tf:
            return _extract_tar(tf, archive, dest, max_members, max_bytes)
    except tarfile.TarError as e:
        raise DownloadError(f"{archive.name} is neither a zip nor a readable tar archive ({e}); check the file") from None


def _extract_zip(archive: Path, dest: Path, max_members: int, max_bytes: int) -> tuple[int, int]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise DownloadError(f"{archive.name} has {len(infos):,} members, over the limit of {max_members:,}")
        total = 0
        for info in infos:
            why = _bad_name(info.filename)
            if why:
                raise _refuse(archive, info.filename, why)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _refuse(archive, info.filename, "a symbolic link")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded (plain file)
                raise _refuse(archive, info.filename, "a special file type")
            total += info.file_size
        if total > max_bytes:
            raise DownloadError(f"{archive.name} unpacks to {_gb(total)}, over the limit of {_gb(max_bytes)}")
        n, written = 0, 0
        for info in infos:
            target = dest / info.filename.replace("\\", "/")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > max_bytes:  # a member that lies about its size
                        raise DownloadError(f"{archive.name} unpacks to more than {_gb(max_bytes)}; refused")
                    out.write(block)
            n += 1
    return n, written


def _extract_tar(tf: tarfile.TarFile, archive: Path, dest: Path, max_members: int,
                 max_bytes: int) -> tuple[int, int]:
    members = []
    total = 0
    for m in tf:  # streams through the archive once to check it
        if len(members) >= max_members:
            raise DownloadError(f"{archive.name} has more than {max_members:,} members; refused")
        why = _bad_name(m.name)
        if why:
            raise _refuse(archive, m.name, why)
        if m.issym() or m.islnk():
            raise _refuse(archive, m.name, "a link")
        if not (m.isfile() or m.isdir()):
            raise _refuse(archive, m.name, "a special file type (device, FIFO)")
        total += m.size
        if total > max_bytes:
            raise DownloadError(f"{archive.name} unpacks to more than {_gb(max_bytes)}; refused")
        members.append(m)
    n = 0
    for m in members:
        target = dest / m.name
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tf.extractfile(m)
        if src is None:
            continue
        with src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        n += 1
    return n, total
