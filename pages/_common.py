"""What the DomainLens pages share: the sidebar, model/dataset access, setting controls, progress,
score metrics, image grids and exports.

Pages stay thin (widgets -> one config -> a core call -> st output); every number comes from ``core``.
Caching: loaded models in ``st.cache_resource`` keyed by plain strings; small derived arrays and
thumbnails in ``st.cache_data`` with every input an explicit argument; the on-disk cache in ``core`` is
the source of truth for features, layouts and scores. ``st.session_state`` holds UI choices only.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import runpy
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core import figures
from core.data.builtin import BUILTINS
from core.data.datasets import DatasetError, load_dataset
from core.engine.extract import ExtractionConfig
from core.engine.prompts import ExtractionError, PromptSpec
from core.analysis.metrics import Scores, kmeans_labels
from core.backbones.base import Backbone
from core.backbones.registry import (DEFAULT_MODEL, FAMILIES, REGISTERED, ModelError, family_by_name, load_backbone,
                                     resolve_device)
from core.analysis.reduce import ReductionConfig

# Errors core raises for bad input; anything else is a bug and is allowed to surface.
EXPECTED_ERRORS = (DatasetError, ModelError, ExtractionError, ValueError, FileNotFoundError, PermissionError)

TYPED_PATH = "Folder or CSV manifest…"
OTHER_MODEL = "Other: hub id or local folder…"
TEMPLATE = "a photo of a {class}"
DEFAULT_TIMESTEP = 50
PROMPT_LABELS = {"empty": "Empty “”", "template": "Class template", "custom": "Custom text"}
REDUCER_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
COLOUR_LABELS = {"domain": "Domain", "class": "Class", "cluster": "k-means cluster"}
SETTINGS_KEY = "_dl_settings"


class PathNotAllowed(ValueError):
    """A typed dataset path outside the configured data roots."""


# ------------------------------------------------------------------------------------ environment


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


# ----------------------------------------------------------------------------------- cached access


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def get_model(name: str, device: str = "auto") -> Backbone:
    """The loaded backbone (one per name and device per server process)."""
    return load_backbone(name, device)


@st.cache_data(ttl=300, show_spinner="Reading the dataset…", max_entries=32)
def dataset_summary(name: str) -> dict:
    """Domains, classes, image counts and warnings of a dataset (built-ins are generated on first use)."""
    ds = load_dataset(name)
    return {"name": ds.name, "n_images": len(ds), "domains": list(ds.domains), "classes": list(ds.classes),
            "warnings": list(ds.warnings), "n_skipped": len(ds.skipped)}


@st.cache_resource(ttl=30, show_spinner="Scanning the dataset…", max_entries=8)
def _scan(name: str):
    return load_dataset(name)


def scanned_dataset(name: str):
    """The scanned dataset, kept for 30 s: slider moves reuse the scan instead of re-statting every image
    (seconds on a DomainNet-sized folder); a file added or changed shows up within 30 s."""
    try:
        return _scan(name)
    except EXPECTED_ERRORS as e:
        st.error(f"{e}\n\nChange the setting in the controls or the sidebar and try again.")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=20000)
def thumbnail(path: str, size: int = 96) -> str:
    """A base64 PNG data URI of the image at ``path``."""
    return figures.thumbnail_data_uri(path, size)


@st.cache_data(show_spinner="k-means…", max_entries=64)
def cluster_labels(features: np.ndarray, n_clusters: int, random_state: int) -> np.ndarray:
    return kmeans_labels(features, n_clusters, random_state)[0]


@st.cache_resource(show_spinner=False)
def png_export_available() -> bool:
    return figures.png_export_available()


class _Warmup:
    """UMAP's numba compilation running in a background thread (one per server process)."""

    def __init__(self, enabled: bool):
        import threading

        self.done = threading.Event()  # every path compiled
        self.small_done = threading.Event()  # the exact-neighbour path (fewer than SMALL_DATA points) compiled
        self.seconds: float | None = None
        self.error: str | None = None
        self.enabled = enabled
        if enabled:
            threading.Thread(target=self._run, name="domainlens-umap-warmup", daemon=True).start()
        else:
            self.small_done.set()
            self.done.set()

    def _stage(self, name: str) -> None:
        if name == "exact":
            self.small_done.set()

    def _run(self) -> None:
        from core.analysis import reduce as _reduce

        try:
            self.seconds = _reduce.warm_umap(on_stage=self._stage)
            print(f"DomainLens: UMAP warm-up finished in {self.seconds:.1f} s", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - a failed warm-up only means the first UMAP compiles itself
            self.error = f"{type(e).__name__}: {e}"
            print(f"DomainLens: UMAP warm-up failed ({self.error})", file=sys.stderr, flush=True)
        finally:
            self.small_done.set()
            self.done.set()


@st.cache_resource(show_spinner=False)
def start_umap_warmup() -> _Warmup:
    """Start compiling UMAP's numba code in the background (app.py calls this when the server starts).
    ``DOMAINLENS_WARM_UMAP=0`` turns it off (the tests do: they never wait for it)."""
    return _Warmup(os.environ.get("DOMAINLENS_WARM_UMAP", "1").strip() not in ("0", "false", "no", ""))


def warm_umap(n_points: int | None = None) -> bool:
    """Wait for the part of the background UMAP warm-up (started at server start) that a layout of
    ``n_points`` needs (below 4096 points only the exact-neighbour path; None: all of it)."""
    from core.analysis.reduce import SMALL_DATA

    w = start_umap_warmup()
    ready = w.small_done if n_points is not None and n_points < SMALL_DATA else w.done
    if w.enabled and not ready.is_set():
        with st.spinner("Preparing UMAP: numba compiles once per server process; it started in the background "
                        "when the server did…", show_time=True):
            ready.wait()
    return True


# ------------------------------------------------------------------------------------------ sidebar


@dataclass(frozen=True)
class Settings:
    """The sidebar's choices, shared by every page."""

    dataset: str
    model: str
    max_per_domain: int
    seed: int
    device: str = "auto"

    def extraction(self, timestep: int = DEFAULT_TIMESTEP, prompt: PromptSpec = PromptSpec(),
                   model: str | None = None, class_label: int | None = None,
                   noise_mode: str = "noised", token_pooling: str | None = None) -> ExtractionConfig:
        return ExtractionConfig(dataset=self.dataset, model=model or self.model, timestep=int(timestep),
                                prompt=prompt, seed=int(self.seed), max_per_domain=int(self.max_per_domain),
                                class_label=class_label, noise_mode=noise_mode, token_pooling=token_pooling)


def _builtin_options() -> list[str]:
    return [f"{b}:{s}" for b in BUILTINS for s in ("heldout", "train")]


def _dataset_label(value: str) -> str:
    if value == TYPED_PATH:
        return value
    base, _, split = value.partition(":")
    if base in BUILTINS:
        return f"{base} ({'held-out' if split == 'heldout' else split})"
    return f"{Path(value).name} ({value})"


def _installed(name: str) -> bool:
    reg = REGISTERED[name]
    return reg.location is None or reg.location.is_dir()


def model_choices() -> list[str]:
    """The default model, then the registered models grouped by family in registry order (installed ones,
    plus the embedded model always), then "other"."""
    order = {f.family: i for i, f in enumerate(FAMILIES)}
    registered = sorted((n for n, r in REGISTERED.items() if n == DEFAULT_MODEL or _installed(n)),
                        key=lambda n: order.get(REGISTERED[n].family, len(order)))
    return list(dict.fromkeys([default_model_name(), *registered])) + [OTHER_MODEL]


def family_label(family: str) -> str:
    fam = family_by_name(family)
    return fam.family_label if fam is not None else family


def model_label(name: str) -> str:
    """``family · name``, so the picker reads grouped by family."""
    if name in REGISTERED:
        reg = REGISTERED[name]
        return f"{reg.family} · {name}{' (not installed)' if not _installed(name) else ''}"
    if name == OTHER_MODEL:
        return name
    return f"{short_model_name(name)} (folder)" if Path(name).is_dir() else name


def contrast_model(model: Backbone, choices: Sequence[str]) -> str:
    """The first registered choice of another family than ``model`` (Compare's default second side)."""
    for name in choices:
        if name in REGISTERED and REGISTERED[name].family != model.family and _installed(name):
            return name
    return next((c for c in choices if c != model.name), model.name)


def short_model_name(name: str) -> str:
    """A registered name as is; a folder by its last part; a hub id as is."""
    p = Path(name)
    return p.name if name not in REGISTERED and p.is_dir() else name


def explain_model_error(name: str, err: Exception) -> str:
    if name == DEFAULT_MODEL and not _installed(DEFAULT_MODEL):
        return (f"The embedded model `{DEFAULT_MODEL}` is not installed yet (expected in "
                f"`models/{DEFAULT_MODEL}`). Train it with `python -m core.training.train_default --out "
                f"models/{DEFAULT_MODEL}`, or pick the `pixels` baseline or another model in the sidebar.")
    return f"{err}\n\nPick another model in the sidebar (the `pixels` baseline always works)."


def sidebar() -> Settings | None:
    """Render the shared sidebar; store and return the settings (None after showing an error)."""
    st.session_state.pop(SETTINGS_KEY, None)  # only this run's validated choices reach a page
    sb = st.sidebar
    sb.markdown("## DomainLens")
    sb.caption("What's in a diffusion latent? How UNet features separate image domains.")

    roots = data_roots()
    options = _builtin_options() + find_datasets(tuple(map(str, roots))) + [TYPED_PATH]
    choice = sb.selectbox("Dataset", options, key="dataset", format_func=_dataset_label,
                          help="Built-in sets, DomainBed folders found under the data roots, or a path you type.")
    dataset = choice
    if choice not in (TYPED_PATH, *_builtin_options()):  # a discovered path: checked again on every run
        try:
            dataset = str(resolve_inside_roots(choice, roots))
        except PathNotAllowed as e:
            st.error(str(e))
            return None
    if choice == TYPED_PATH:
        typed = sb.text_input("Folder or CSV manifest path", key="dataset_path",
                              placeholder="/data/PACS or /data/my_set.csv",
                              help="A DomainBed folder <root>/<domain>/<class>/<image> or a CSV with "
                                   "path,domain,class. It must lie inside a data root: "
                                   + (", ".join(map(str, roots)) or "none configured (DOMAINLENS_DATA_ROOTS)."))
        if not typed.strip():
            st.info("Type the path of a DomainBed folder or CSV manifest in the sidebar.")
            return None
        try:
            dataset = str(resolve_inside_roots(typed, roots))
        except PathNotAllowed as e:
            st.error(str(e))
            return None

    model_opts = model_choices()
    model = sb.selectbox("Model", model_opts, key="model", format_func=model_label,
                         help="Registered models grouped by family (family · name), or any supported model "
                              "folder / cached Hugging Face hub id (`python -m core models` lists the families).")
    if model == OTHER_MODEL:
        model = sb.text_input("Hub id or local folder", key="model_path",
                              placeholder="stabilityai/stable-diffusion-2-1-base or /models/sd21").strip()
        if not model:
            st.info("Type a Hugging Face hub id (already downloaded) or a diffusers model folder in the sidebar.")
            return None
        try:
            model = resolve_typed_model(model, model_roots())
        except PathNotAllowed as e:
            st.error(str(e))
            return None

    if "max_per_domain" not in st.session_state:
        st.session_state["max_per_domain"] = default_max_per_domain()
    max_per_domain = sb.number_input("Images per domain", min_value=2, max_value=1_000_000, step=50,
                                     key="max_per_domain",
                                     help="A class-balanced sample per domain. More images: steadier scores, "
                                          "slower first extraction (then cached on disk).")
    seed = sb.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="seed",
                           help="Image sample, diffusion noise, k-means and layouts all follow it.")
    sb.caption(f"Device: **{device_label()}**")

    settings = Settings(dataset=dataset, model=model, max_per_domain=int(max_per_domain), seed=int(seed))
    try:
        summary = dataset_summary(dataset)
    except EXPECTED_ERRORS as e:
        st.error(f"Dataset problem: {e}")
        return None
    if len(summary["domains"]) < 2:
        st.error(f"Dataset {summary['name']!r} has fewer than 2 domains; pick or lay out a dataset with one "
                 "folder per domain.")
        return None
    sb.caption(f"{len(summary['domains'])} domains · {len(summary['classes'])} classes · "
               f"{summary['n_images']:,} images")
    for w in summary["warnings"][:3]:
        sb.warning(w)
    try:
        get_model(model, settings.device)
    except EXPECTED_ERRORS as e:
        st.error(explain_model_error(model, e))
        return None
    st.session_state[SETTINGS_KEY] = settings
    return settings


APP_PATH = Path(__file__).resolve().parent.parent / "app.py"


def _under_entrypoint() -> bool:
    """True when this run goes through app.py (its module frame is on the call stack)."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "<module>" and Path(f.f_code.co_filename).resolve() == APP_PATH:
            return True
        f = f.f_back
    return False


def settings() -> Settings:
    """The sidebar's settings of this run; every page calls this first.

    Streamlit runs a file of a ``pages/`` folder on its own (its legacy multipage mode) for the first
    request a fresh server gets on a page URL, and in AppTest. Then app.py is run here instead, so the
    navigation, the sidebar and this page render exactly as after any other request.
    """
    if not _under_entrypoint():
        runpy.run_path(str(APP_PATH), run_name="__main__")
        st.stop()
    s = st.session_state.get(SETTINGS_KEY)
    if s is None:  # app.py stops the run when the sidebar's settings are unusable
        st.stop()
    return s


def current_model(s: Settings, name: str | None = None, container: Any = st) -> Backbone:
    """The loaded model (``name`` or the sidebar's); shows an error with what to do and stops if it fails."""
    name = name or s.model
    try:
        return get_model(name, s.device)
    except EXPECTED_ERRORS as e:
        container.error(explain_model_error(name, e))
        st.stop()
        raise  # unreachable (st.stop raises); keeps type checkers happy


def n_domains(s: Settings) -> int:
    return len(dataset_summary(s.dataset)["domains"])


# ----------------------------------------------------------------------------------------- controls


def ensure_state(key: str, valid: Callable[[Any], bool], default: Any) -> None:
    """Reset a widget's stored value when it is no longer valid (e.g. another model's block)."""
    if key in st.session_state and not valid(st.session_state[key]):
        st.session_state[key] = default
    elif key not in st.session_state:
        st.session_state[key] = default


def layer_label(model: Backbone) -> Callable[[str], str]:
    """Slider labels: each layer, the family's default marked."""
    return lambda b: f"{b} (default)" if b == model.default_block else b


def setting_controls(model: Backbone, prefix: str = "", columns: Sequence[Any] | None = None
                     ) -> tuple[str, int, PromptSpec, dict]:
    """Layer, timestep, prompt, class-label and token-pooling widgets (keys ``{prefix}block``,
    ``{prefix}timestep``, ``{prefix}prompt_mode``, ``{prefix}prompt_text``, ``{prefix}class_label``,
    ``{prefix}noise_mode``, ``{prefix}token_pooling``) for what ``model`` declares. Returns ``(layer, timestep,
    prompt, conditioning)``; ``conditioning`` holds the ``class_label``, ``noise_mode`` and ``token_pooling``
    keyword arguments of :meth:`Settings.extraction`."""
    c_block, c_time, c_prompt = columns or (st, st, st)
    cond = model.conditioning
    key = f"{prefix}block"
    if len(model.blocks) > 1:
        ensure_state(key, lambda v: v in model.blocks, model.default_block)
        block = c_block.select_slider("Layer", options=model.blocks, key=key, format_func=layer_label(model),
                                      help=f"Where the feature is read, in execution order. The default for "
                                           f"{model.family_label or model.family} is {model.default_block}.")
    else:
        block = model.blocks[0]
        c_block.markdown(f"**Feature:** `{block}`")
    extra: dict[str, Any] = {"class_label": None, "noise_mode": "noised", "token_pooling": None}
    if len(model.poolings) > 1:  # only where the backbone offers a choice
        key = f"{prefix}token_pooling"
        ensure_state(key, lambda v: v in model.poolings, model.default_pooling)
        extra["token_pooling"] = c_block.radio(
            "Token pooling", list(model.poolings), key=key, horizontal=True,
            format_func=lambda p: f"{p} (default)" if p == model.default_pooling else p,
            help="How a layer's tokens become one feature per image: cls = the summary (CLS) token, mean = the "
                 f"mean of the patch tokens. The default for this model is {model.default_pooling}.")
    timestep = DEFAULT_TIMESTEP
    if model.uses_timestep:
        hi = model.num_train_timesteps - 1
        key = f"{prefix}timestep"
        ensure_state(key, lambda v: isinstance(v, int) and 0 <= v <= hi, min(DEFAULT_TIMESTEP, hi))
        timestep = c_time.slider("Timestep", min_value=0, max_value=hi, key=key,
                                 help="Noise level added before the forward pass (0 = clean latent). The paper "
                                      "uses t = 50 of 1000; less noise usually means more domain information.")
    else:
        c_time.markdown("**Timestep:** n/a (not a diffusion model)")
    if len(cond.noise_modes) > 1:
        key = f"{prefix}noise_mode"
        ensure_state(key, lambda v: v in cond.noise_modes, cond.noise_modes[0])
        extra["noise_mode"] = c_time.radio("Input", list(cond.noise_modes), key=key, horizontal=True,
                                           help="noised: x_t at the timestep (the default); clean: the clean "
                                                "latent with only the timestep embedding.")
    if model.uses_class_label:
        key = f"{prefix}class_label"
        hi = max(cond.num_classes - 1, cond.null_class if cond.null_class is not None else 0)
        ensure_state(key, lambda v: isinstance(v, int) and 0 <= v <= hi,
                     cond.null_class if cond.null_class is not None else 0)
        extra["class_label"] = int(c_prompt.number_input(
            f"Class label (null class = {cond.null_class})", min_value=0, max_value=hi, step=1, key=key,
            help="The class the model is conditioned on; the default is the unconditional null class."))
    prompt = PromptSpec()
    if model.uses_prompt:
        key = f"{prefix}prompt_mode"
        ensure_state(key, lambda v: v in PROMPT_LABELS, "empty")
        mode = c_prompt.radio("Prompt", list(PROMPT_LABELS), key=key, format_func=PROMPT_LABELS.get,
                              horizontal=True,
                              help=f"Text conditioning: the empty prompt (paper default), the class template "
                                   f"“{TEMPLATE}”, or your own text.")
        if mode == "template":
            prompt = PromptSpec("template", TEMPLATE)
        elif mode == "custom":
            ensure_state(f"{prefix}prompt_text", lambda v: isinstance(v, str), "a painting")
            text = c_prompt.text_input("Custom prompt", key=f"{prefix}prompt_text")
            prompt = PromptSpec("custom", text)
    elif not model.uses_class_label:
        c_prompt.markdown("**Prompt:** n/a (not text-conditioned)")
    return block, int(timestep), prompt, extra


def reduction_controls(seed: int, prefix: str = "", container: Any = st, params_container: Any = None
                       ) -> ReductionConfig:
    """Reducer and its main parameters (keys ``{prefix}reducer``, ``{prefix}perplexity``,
    ``{prefix}n_neighbors``, ``{prefix}min_dist``); the parameters go to ``params_container`` if given."""
    ensure_state(f"{prefix}reducer", lambda v: v in REDUCER_LABELS, "pca")
    method = container.radio("Layout", list(REDUCER_LABELS), key=f"{prefix}reducer", horizontal=True,
                             format_func=REDUCER_LABELS.get,
                             help="2-D layout for looking only; the scores use the full features. t-SNE and UMAP "
                                  "compile numba code the first time they run on a machine (~20-40 s).")
    pc = params_container or container
    kw: dict[str, Any] = {}
    if method == "tsne":
        ensure_state(f"{prefix}perplexity", lambda v: isinstance(v, (int, float)), 30)
        kw["perplexity"] = float(pc.slider("Perplexity", 5, 100, key=f"{prefix}perplexity"))
    elif method == "umap":
        ensure_state(f"{prefix}n_neighbors", lambda v: isinstance(v, int), 15)
        ensure_state(f"{prefix}min_dist", lambda v: isinstance(v, float), 0.1)
        c1, c2 = pc.columns(2)
        kw["n_neighbors"] = int(c1.slider("Neighbours", 2, 100, key=f"{prefix}n_neighbors"))
        kw["min_dist"] = float(c2.slider("Min. distance", 0.0, 0.99, step=0.01, key=f"{prefix}min_dist"))
        current = st.session_state.get(SETTINGS_KEY)
        warm_umap(current.max_per_domain * n_domains(current) if current is not None else None)
    return ReductionConfig(method=method, random_state=int(seed), **kw)


def colour_control(prefix: str = "", container: Any = st, clusters: bool = True) -> str:
    opts = list(COLOUR_LABELS) if clusters else ["domain", "class"]
    ensure_state(f"{prefix}color_by", lambda v: v in opts, "domain")
    return container.radio("Colour by", opts, key=f"{prefix}color_by", horizontal=True,
                           format_func=COLOUR_LABELS.get)


# ---------------------------------------------------------------------------------------- running


def progress_text(label: str, done: int, total: int, elapsed: float, unit: str = "images") -> str:
    """``label: 40 / 120 images [00:05<00:10, 8.00 images/s]``: the counts, elapsed time, ETA and rate as the
    CLI's tqdm bar prints them (tqdm's own formatter)."""
    from tqdm import tqdm

    return f"{label}: " + tqdm.format_meter(done, total or None, elapsed, unit=f" {unit}", unit_scale=False,
                                             bar_format="{n_fmt} / {total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]")


def run_core(fn: Callable, *args, label: str = "Extracting features", stop: bool = True, **kwargs):
    """Call a core function that reports ``progress(done, total)``: a progress bar with image counts and an
    ETA (shown only when the call is slow, i.e. not served from the cache). Expected errors are shown with
    what to do, and the page stops (with ``stop=False``: shown as a warning, and None is returned)."""
    bar = st.empty()
    start = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = time.monotonic() - start
        if elapsed > 0.3:  # a cache hit returns sooner: no flashing bar
            bar.progress(min(1.0, done / total) if total else 1.0, text=progress_text(label, done, total, elapsed))

    try:
        with st.spinner("Computing (extracted features, layouts and scores are cached on disk)…", show_time=True):
            return fn(*args, progress=progress, **kwargs)
    except EXPECTED_ERRORS as e:
        if not stop:
            st.warning(str(e))
            return None
        st.error(f"{e}\n\nChange the setting in the controls or the sidebar and try again.")
        st.stop()
    finally:
        bar.empty()


def labels_for(fs, colour: str, block: str, seed: int) -> tuple[list[str], list[str]]:
    """Point labels and their category order for a colouring."""
    if colour == "class":
        return list(fs.classes), list(fs.class_names)
    if colour == "cluster":
        k = len(fs.domain_names)
        lab = cluster_labels(fs.features[block], k, seed)
        return [f"cluster {c}" for c in lab], [f"cluster {c}" for c in range(k)]
    return list(fs.domains), list(fs.domain_names)


def hover_texts(fs) -> list[str]:
    return [f"<b>{d}</b> · {c}<br>{i}" for d, c, i in zip(fs.domains, fs.classes, fs.ids)]


PLOT_CONFIG = {"displaylogo": False,
               "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "domainlens"}}


def selected_rows(event: Any) -> list[int]:
    """Row indices (``customdata[0]``) of the points selected in a :func:`core.figures.scatter` chart."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return []
    rows = []
    for p in points or []:
        cd = p.get("customdata")
        if cd is None:
            continue
        if isinstance(cd, dict):  # the browser sends a one-element array as {"0": row}
            cd = cd.get("0", next(iter(cd.values()), None))
        elif isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            rows.append(int(cd))
    return list(dict.fromkeys(rows))


# ------------------------------------------------------------------------------------------- output


def _fmt_nmi(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def score_metrics(scores: Scores, n_domains_: int, container: Any = st, reference: Scores | None = None) -> None:
    """The four scores as ``st.metric``s (in ``container``, or one per container of a list of four);
    with ``reference``, deltas against it."""
    slots = list(container) if isinstance(container, (list, tuple)) else [container] * 4

    def delta(a: float, b: float | None, pct: bool = False) -> str | None:
        if b is None or any(isinstance(x, float) and math.isnan(x) for x in (a, b)):
            return None
        return f"{(a - b) * (100 if pct else 1):+.1f} pp" if pct else f"{a - b:+.3f}"

    ref = reference
    slots[0].metric("Domain NMI", _fmt_nmi(scores.domain_nmi, scores.domain_nmi_std),
                     delta=delta(scores.domain_nmi, ref and ref.domain_nmi),
                     help="k-means (K = number of domains) on the full features against the domain labels; "
                          "mean ± std over 5 k-means seeds. Higher: the features separate domains.")
    slots[1].metric("Class NMI", _fmt_nmi(scores.class_nmi, scores.class_nmi_std),
                     delta=delta(scores.class_nmi, ref and ref.class_nmi), delta_color="inverse",
                     help="The same with K = number of classes. For a domain tool, lower is purer.")
    slots[2].metric("Domain predictability", _fmt(scores.domain_probe_acc, pct=True),
                     delta=delta(scores.domain_probe_acc, ref and ref.domain_probe_acc, pct=True),
                     help=f"5-fold cross-validated logistic-regression accuracy predicting the domain "
                          f"(chance ≈ {1 / max(1, n_domains_):.0%}).")
    slots[3].metric("Domain silhouette", _fmt(scores.domain_silhouette),
                     delta=delta(scores.domain_silhouette, ref and ref.domain_silhouette),
                     help="Silhouette of the domain labels (cosine, standardized features), from -1 to 1.")


def image_grid(fs, rows: Sequence[int], limit: int = 48, size: int = 96, container: Any = st) -> None:
    """Thumbnails of ``rows`` with their domain and class."""
    rows = list(rows)
    shown = rows[:limit]
    container.caption(f"{len(rows)} image(s) selected" + (f"; showing the first {limit}" if len(rows) > limit else ""))
    container.image([thumbnail(fs.paths[i], size) for i in shown],
                    caption=[f"{fs.domains[i]} · {fs.classes[i]}" for i in shown], width=size)


def cli_command(config: ExtractionConfig, blocks: Sequence[str], timesteps: Sequence[int] | None = None) -> str:
    """The ``python -m core sweep`` command that reproduces these numbers."""
    ts = timesteps if timesteps is not None else [config.timestep]
    parts = ["python", "-m", "core", "sweep", "--dataset", config.dataset, "--model", config.model,
             "--timesteps", ",".join(str(int(t)) for t in ts), "--blocks", ",".join(blocks)]
    if config.prompt.mode == "template":
        parts += ["--prompt-template", config.prompt.text]
    elif config.prompt.mode == "custom" and config.prompt.text:
        parts += ["--prompt", config.prompt.text]
    if config.max_per_domain:
        parts += ["--max-per-domain", str(config.max_per_domain)]
    if config.max_per_class:
        parts += ["--max-per-class", str(config.max_per_class)]
    parts += ["--seed", str(config.seed)]
    if config.ensemble != 1:
        parts += ["--ensemble", str(config.ensemble)]
    if config.resolution:
        parts += ["--resolution", str(config.resolution)]
    if config.class_label is not None:
        parts += ["--class-label", str(config.class_label)]
    if config.noise_mode != "noised":
        parts += ["--noise-mode", config.noise_mode]
    if config.token_pooling is not None:
        parts += ["--token-pooling", config.token_pooling]
    return shlex.join(parts)


def reproduce_spec(config: ExtractionConfig, block: str | Sequence[str], reduction: ReductionConfig | None = None,
                   timesteps: Sequence[int] | None = None, **extra: Any) -> dict:
    """The exact configuration as JSON-able data, with the equivalent CLI command."""
    blocks = [block] if isinstance(block, str) else list(block)
    spec: dict[str, Any] = {"extraction": config.to_dict(), "block": blocks[0] if isinstance(block, str) else blocks}
    if reduction is not None:
        spec["reduction"] = reduction.params()
    spec.update(extra)
    spec["cli"] = cli_command(config, blocks, timesteps)
    return spec


def scores_frame(scores: Scores, **context: Any) -> pd.DataFrame:
    return pd.DataFrame([{**context, **scores.to_dict()}])


def export_panel(stem: str, *, figs: dict[str, Any] | None = None, tables: dict[str, pd.DataFrame] | None = None,
                 spec: dict | None = None, files: dict[str, tuple[bytes, str]] | None = None,
                 key: str = "export") -> None:
    """Download buttons (figures as HTML and, when kaleido finds a browser, PNG; tables as CSV; the
    configuration as JSON) and the CLI command that reproduces the numbers."""
    with st.expander("Export & reproduce", icon=":material/download:"):
        buttons: list[tuple[str, Any, str, str]] = []
        for name, fig in (figs or {}).items():
            buttons.append((f"{name} (HTML)", lambda fig=fig: figures.figure_html(fig), f"{stem}-{name}.html".replace(" ", "_"), "text/html"))
            if png_export_available():
                buttons.append((f"{name} (PNG)", lambda fig=fig: figures.figure_png(fig), f"{stem}-{name}.png".replace(" ", "_"), "image/png"))
        for name, df in (tables or {}).items():
            buttons.append((f"{name} (CSV)", df.to_csv(index=False, float_format="%.6g"), f"{stem}-{name}.csv".replace(" ", "_"), "text/csv"))
        for name, (data, mime) in (files or {}).items():
            buttons.append((name, data, f"{stem}-{name}".replace(" ", "_"), mime))
        if spec is not None:
            buttons.append(("configuration (JSON)", json.dumps(spec, indent=2), f"{stem}-config.json", "application/json"))
        cols = st.columns(4)
        for i, (label, data, fname, mime) in enumerate(buttons):
            cols[i % 4].download_button(label, data=data, file_name=fname, mime=mime, on_click="ignore",
                                        key=f"{key}-{i}", icon=":material/download:", width="stretch")
        if spec is not None:
            st.caption("Reproduce the numbers from the command line:")
            st.code(spec["cli"], language="bash")


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()



# ------------------------------------------------------- faithful layouts, image mode, spatial maps


def faithfulness_metrics(f, container: Any = st) -> None:
    """Trustworthiness and the k-NN domain accuracy in 2-D vs the full features, as two ``st.metric``s."""
    slots = list(container) if isinstance(container, (list, tuple)) else [container] * 2
    sample = f" (on a random {f.n_trust:,} of the {f.n_images:,} images)" if f.n_trust < f.n_images else ""
    slots[0].metric("Layout trustworthiness", f"{f.trustworthiness:.3f}",
                    help=f"scikit-learn's trustworthiness with k = {f.k}{sample}: 1 when each image's nearest "
                         "neighbours in the picture are also near it in the full feature space; lower when the "
                         "picture puts far-apart images together. Judge clusters in the picture by it.")
    slots[1].metric("k-NN domain accuracy, 2-D", _fmt(f.knn_acc_2d, pct=True),
                    delta=f"{(f.knn_acc_2d - f.knn_acc_full) * 100:+.1f} pp vs full features ({f.knn_acc_full:.1%})",
                    delta_color="off",
                    help=f"Leave-one-out {f.k}-nearest-neighbour vote for the domain, in the 2-D layout vs in the "
                         f"full feature space (chance ≈ {f.chance:.0%}). Far below the full-space figure: the "
                         "picture hides domain structure the scores see; far above: it exaggerates it.")


def image_mode_control(n_images: int, prefix: str = "", container: Any = st) -> bool:
    """The "Show images" toggle (key ``{prefix}image_mode``): thumbnails in place of points."""
    from core.figures import IMAGE_MODE_MAX

    ensure_state(f"{prefix}image_mode", lambda v: isinstance(v, bool), False)
    more = n_images > IMAGE_MODE_MAX
    return container.toggle(
        "Show images", key=f"{prefix}image_mode",
        help=f"Draw each image's thumbnail just above its point (up to {IMAGE_MODE_MAX} images"
             + (f"; with {n_images:,} images, one per region of the layout" if more else "") + ").")


def point_images(fs, embedding: np.ndarray, size: int = 64) -> dict[int, str]:
    """{row: thumbnail URI} for image mode: every image up to the cap, else one per region of the layout."""
    return {int(r): thumbnail(fs.paths[int(r)], size) for r in figures.image_rows(embedding)}


def spatial_panel(model: Any, config: ExtractionConfig, block: str, fs, rows: Sequence[int], size: int = 160,
                  per_row: int = 1, show_image: bool = True, key: str = "spatial") -> None:
    """Beside a clicked image (or under a small selection): the block's spatial feature map in the colours of
    a PCA fitted on that block's maps over a sample of the dataset (core.analysis.spatial)."""
    from core.analysis import spatial

    if len(rows) > spatial.MAX_SHOWN:
        st.caption(f"Spatial maps of the first {spatial.MAX_SHOWN} of {len(rows)} selected images.")
    rows = list(rows)[:spatial.MAX_SHOWN]
    view = run_core(spatial.spatial_view, model, config, scanned_dataset(config.dataset), block,
                    [fs.ids[i] for i in rows], label=f"Fitting the colours of {block}'s maps",
                    sample_size=spatial.DEFAULT_SAMPLE, stop=False)
    if view is None:  # e.g. a layer whose output has no spatial layout: the warning says so
        return
    ev = ", ".join(f"{v:.0%}" for v in view.pca.explained)
    per = 2 if show_image else 1
    cols = st.columns(per * per_row, gap="small")
    for k, (r, rgb) in enumerate(zip(view.records, view.rgb)):
        c1, c2 = cols[per * (k % per_row)], cols[per * (k % per_row) + per - 1]
        if show_image:
            c1.image(thumbnail(r.path, size), width=size, caption=f"{r.domain} · {r.cls}")
        c2.image(spatial.map_image(rgb, size), width=size, caption=f"{block} map {rgb.shape[1]}×{rgb.shape[0]}")
    st.caption(f"Colours: the first 3 principal components of {block}'s map pixels over {len(view.pca.sample_ids)} "
               f"images spread over the domains (variance {ev}); the same colours mean similar features in "
               "every image.")
    st.download_button("spatial maps (PNG)", data=spatial.grid_png(view), file_name=f"{key}-maps.png",
                       mime="image/png", on_click="ignore", key=f"{key}-png", icon=":material/download:")


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL /_common): not one
    st.switch_page(str(APP_PATH))
