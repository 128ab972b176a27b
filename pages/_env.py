"""Where the app may read: the environment's defaults, the data and model roots, typed paths and models
checked against them, discovered datasets, the device label. Errors the pages show (:data:`EXPECTED_ERRORS`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import streamlit as st

from core.data.datasets import DatasetError
from core.engine.prompts import ExtractionError
from core.backbones.registry import DEFAULT_MODEL, REGISTERED, ModelError, resolve_device



EXPECTED_ERRORS = (DatasetError, ModelError, ExtractionError, ValueError, FileNotFoundError, PermissionError)


class PathNotAllowed(ValueError):
    """A typed dataset path outside the configured data roots."""


def default_model_name() -> str:
    """``$DOMAINLENS_DEFAULT_MODEL`` (a registered name, folder or hub id), else the embedded model."""
    return os.environ.get("DOMAINLENS_DEFAULT_MODEL", "").strip() or DEFAULT_MODEL


def default_max_per_domain() -> int:
    """``$DOMAINLENS_MAX_PER_DOMAIN``, else 100: the first Explore render stays under a minute on CPU."""
    raw = os.environ.get("DOMAINLENS_MAX_PER_DOMAIN", "").strip()
    try:
        return max(1, int(raw)) if raw else 100
    except ValueError:
        return 100


def data_roots() -> list[Path]:
    """Folders a typed dataset path may live in: ``$DOMAINLENS_DATA_ROOTS`` (``os.pathsep``-separated),
    else ``data_roots`` in ``.streamlit/secrets.toml`` (a list or one string). Resolved (no symlinks)."""
    raw: list[str] = []
    env = os.environ.get("DOMAINLENS_DATA_ROOTS", "")
    if env.strip():
        raw = env.split(os.pathsep)
    else:
        try:
            value = st.secrets.get("data_roots") if st.secrets.load_if_toml_exists() else None
        except Exception:  # noqa: BLE001 - no or unreadable secrets: no roots from there
            value = None
        if isinstance(value, str):
            raw = value.split(os.pathsep)
        elif value:
            raw = [str(v) for v in value]
    return [Path(r).expanduser().resolve() for r in raw if r.strip()]


def _check_typed(typed: str, what: str = "dataset") -> None:
    if "\x00" in typed or any(ord(ch) < 32 for ch in typed):
        raise PathNotAllowed(f"The {what} path holds a control character (e.g. a NUL byte), which no file name "
                             "here can hold; type the path again.")
    if len(typed) > 4096:
        raise PathNotAllowed(f"The {what} path is {len(typed):,} characters long (the limit is 4,096); check what "
                             "was pasted.")


def _real(p: Path) -> Path | None:
    try:
        return Path(os.path.realpath(p))
    except (OSError, RuntimeError, ValueError):
        return None


def resolve_inside_roots(typed: str, roots: Sequence[Path]) -> Path:
    """The real path of ``typed`` if it lies inside one of ``roots`` (symlinks and ``..`` resolved first);
    relative paths are taken relative to each root in turn. Raises :class:`PathNotAllowed` otherwise
    (also for control characters, NUL bytes and paths over 4,096 characters)."""
    typed = typed.strip()
    _check_typed(typed)
    if not roots:
        raise PathNotAllowed(
            "Typed dataset paths are off because no data roots are configured. Set "
            f"DOMAINLENS_DATA_ROOTS=/path/to/data (several separated by '{os.pathsep}') or "
            "data_roots = [\"/path/to/data\"] in .streamlit/secrets.toml, then restart the app.")
    p = Path(typed).expanduser()
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for c in candidates:
        real = _real(c)
        if real is not None and any(real == r or r in real.parents for r in roots):
            return real
    raise PathNotAllowed(
        f"{typed!r} is outside the data roots ({', '.join(str(r) for r in roots)}); symlinks and '..' are "
        "resolved before the check. Put the dataset under a data root, or add its folder to "
        "DOMAINLENS_DATA_ROOTS and restart.")


def _looks_like_domainbed(folder: Path) -> bool:
    """``<folder>/<domain>/<class>/<image>``: two or more domain folders, and the first class folder of
    the first domain holds an image file (a folder of datasets has folders there instead)."""
    from core.data.datasets import IMAGE_EXTENSIONS

    def subdirs(p):
        return sorted(e.path for e in os.scandir(p) if e.is_dir() and not e.name.startswith((".", "_")))

    try:
        domains = subdirs(folder)
        if len(domains) < 2:
            return False
        classes = subdirs(domains[0])
        if not classes:
            return False
        with os.scandir(classes[0]) as it:
            return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in it)
    except OSError:
        return False


@st.cache_data(ttl=60, show_spinner=False)
def find_datasets(roots: tuple[str, ...]) -> list[str]:
    """DomainBed folders (a root or its direct sub-folders) and CSV manifests found under the data roots."""
    found: list[str] = []
    for r in map(Path, roots):
        if not r.is_dir():
            continue
        if _looks_like_domainbed(r):
            found.append(str(r))
        try:
            children = sorted(os.scandir(r), key=lambda e: e.name)[:500]
        except OSError:
            continue
        for e in children:
            if e.name.startswith("."):
                continue
            real = _real(Path(e.path))  # resolve first, then check containment (a symlink may point out)
            if real is None or not any(real == x or x in real.parents for x in map(Path, roots)):
                continue
            if real.is_dir() and _looks_like_domainbed(real):
                found.append(str(real))
            elif real.is_file() and real.name.lower().endswith(".csv"):
                found.append(str(real))
    return list(dict.fromkeys(found))


def model_roots() -> list[Path]:
    """Folders a model typed in the app may live in: ``$DOMAINLENS_MODEL_ROOTS`` (``os.pathsep``-separated),
    else the data roots. Resolved (no symlinks)."""
    env = os.environ.get("DOMAINLENS_MODEL_ROOTS", "")
    if env.strip():
        return [Path(r).expanduser().resolve() for r in env.split(os.pathsep) if r.strip()]
    return data_roots()


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve_typed_model(typed: str, roots: Sequence[Path]) -> str:
    """A model typed in the app: a registered name; a folder inside the model roots (resolved, returned as
    its real path); or a hub id ``owner/name`` (read from the local Hugging Face cache only). Anything else
    raises :class:`PathNotAllowed` with one message whether or not the path exists outside the roots."""
    typed = typed.strip()
    _check_typed(typed, "model")
    if typed in REGISTERED:
        return typed
    p = Path(typed).expanduser()
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for c in candidates:
        real = _real(c)
        if real is not None and any(real == r or r in real.parents for r in roots) and real.is_dir():
            return str(real)
    if HUB_ID.fullmatch(typed) and not os.path.lexists(typed):  # else the loader would read it as a folder
        return typed
    raise PathNotAllowed(
        f"{typed!r} is not a model folder inside the model roots ({', '.join(map(str, roots)) or 'none set'}) "
        "and not a hub id of the form owner/name. Put the model folder under a model root (set "
        "DOMAINLENS_MODEL_ROOTS, else the data roots are used) and restart the app.")


def device_label() -> str:
    dev = resolve_device("auto")
    if dev.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
