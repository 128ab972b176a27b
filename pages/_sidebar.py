"""The shared sidebar: dataset and model choice (grouped by family), images per domain and seed, validated
into one :class:`Settings` per run that every page reads with :func:`settings`."""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import streamlit as st

from core.data.builtin import BUILTINS
from core.engine.extract import ExtractionConfig
from core.engine.prompts import PromptSpec
from core.backbones.base import Backbone
from core.backbones.registry import DEFAULT_MODEL, FAMILIES, REGISTERED, family_by_name

from pages._access import dataset_summary, get_model
from pages._env import (APP_PATH, EXPECTED_ERRORS, PathNotAllowed, data_roots, default_max_per_domain,
                        default_model_name, device_label, find_datasets, model_roots, resolve_inside_roots,
                        resolve_typed_model)


TYPED_PATH = "Folder or CSV manifest…"
OTHER_MODEL = "Other: hub id or local folder…"
DEFAULT_TIMESTEP = 50
SETTINGS_KEY = "_dl_settings"


@dataclass(frozen=True)
class Settings:
    """The sidebar's choices, shared by every page."""

    dataset: str
    model: str
    max_per_domain: int
    seed: int
    device: str = "auto"
    n_init: int = 1  # k-means runs per k-means seed (best kept); 1 = one k-means, the paper's protocol

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
    with sb.expander("Statistics"):
        n_init = st.number_input("k-means runs per seed (n_init)", min_value=1, max_value=20, value=1, step=1,
                                 key="n_init",
                                 help="Every NMI is k-means over 5 seeds; each seed keeps the best of this many "
                                      "runs. 1 (default): one k-means per seed, as in the paper, so ± is the "
                                      "real seed-to-seed spread. More runs hide that spread (the old default "
                                      "was 3). docs/METHODS.md states every statistic.")
    sb.caption(f"Device: **{device_label()}**")

    settings = Settings(dataset=dataset, model=model, max_per_domain=int(max_per_domain), seed=int(seed),
                        n_init=int(n_init))
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


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
