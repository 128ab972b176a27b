"""Model and setting controls: layer, timestep, prompt, class label, noise mode and token pooling for what
a backbone declares; layout reducer, colouring and image mode."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import streamlit as st

from core.engine.prompts import PromptSpec
from core.backbones.base import Backbone
from core.analysis import reduce as layouts
from core.analysis.reduce import ReductionConfig

from pages._access import warm_umap
from pages._sidebar import DEFAULT_TIMESTEP, SETTINGS_KEY, n_domains
from pages._env import APP_PATH


TEMPLATE = "a photo of a {class}"
PROMPT_LABELS = {"empty": "Empty “”", "template": "Class template", "custom": "Custom text"}
REDUCER_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
COLOUR_LABELS = {"domain": "Domain", "class": "Class", "cluster": "k-means cluster"}


def ensure_state(key: str, valid: Callable[[Any], bool], default: Any) -> None:
    """Reset a widget's stored value when it is no longer valid (e.g. another model's block)."""
    if key in st.session_state and not valid(st.session_state[key]):
        st.session_state[key] = default
    elif key not in st.session_state:
        st.session_state[key] = default


def layer_label(model: Backbone) -> Callable[[str], str]:
    """Slider labels: each layer, the family's default marked."""
    return lambda b: f"{b} (default)" if b == model.default_block else b


def pooling_control(model: Backbone, container: Any = st, prefix: str = "") -> str | None:
    """A "Token pooling" radio (key ``{prefix}token_pooling``) where the backbone offers more than one pooling
    (vision encoders: cls or mean); ``None`` (the model's default, no widget) otherwise."""
    if len(model.poolings) <= 1:
        return None
    key = f"{prefix}token_pooling"
    ensure_state(key, lambda v: v in model.poolings, model.default_pooling)
    return container.radio(
        "Token pooling", list(model.poolings), key=key, horizontal=True,
        format_func=lambda p: f"{p} (default)" if p == model.default_pooling else p,
        help="How a layer's tokens become one feature per image: cls = the summary (CLS) token, mean = the "
             f"mean of the patch tokens. The default for this model is {model.default_pooling}.")


# The timesteps a timestep slider offers. A slider step is a new feature extraction (seconds to minutes on a CPU),
# so the slider snaps to these, the current one and any typed under "Other timestep", never to all 1,000 values.
SUGGESTED_TIMESTEPS = (0, 5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def _add_other_timestep(key: str) -> None:
    t = int(st.session_state[f"{key}_other"])
    st.session_state[f"{key}_extra"] = sorted(set(st.session_state.get(f"{key}_extra", [])) | {t})
    st.session_state[key] = t


def timestep_control(model: Backbone, key: str, container: Any = st, label: str = "Timestep",
                     help: str | None = None) -> int:
    """A timestep slider (key ``key``) that snaps to :data:`SUGGESTED_TIMESTEPS` (clipped to the model's range),
    the current value and timesteps typed in its "Other timestep" box (key ``{key}_other``): each position is one
    deliberate extraction, shown with a progress bar and ETA while it runs."""
    hi = model.num_train_timesteps - 1
    ensure_state(key, lambda v: isinstance(v, int) and 0 <= v <= hi, min(DEFAULT_TIMESTEP, hi))
    extra = [t for t in st.session_state.get(f"{key}_extra", []) if 0 <= t <= hi]
    options = sorted({min(t, hi) for t in SUGGESTED_TIMESTEPS} | set(extra) | {int(st.session_state[key])})
    t = container.select_slider(
        label, options=options, key=key,
        help=help or "Noise level added before the forward pass (0 = clean latent); the paper uses t = 50 of 1000, "
                     "and less noise usually means more domain information. Each position is one feature extraction "
                     "(cached afterwards); type any other timestep under the slider.")
    ensure_state(f"{key}_other", lambda v: isinstance(v, int) and 0 <= v <= hi, int(t))
    container.number_input("Other timestep", min_value=0, max_value=hi, step=1, key=f"{key}_other",
                           on_change=_add_other_timestep, args=(key,),
                           help=f"Any timestep 0-{hi}: it joins the slider's positions and is computed at once.")
    return int(t)


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
    extra: dict[str, Any] = {"class_label": None, "noise_mode": "noised",
                             "token_pooling": pooling_control(model, c_block, prefix)}
    timestep = DEFAULT_TIMESTEP
    if model.uses_timestep:
        timestep = timestep_control(model, f"{prefix}timestep", c_time)
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
    if method != "pca":
        current = st.session_state.get(SETTINGS_KEY)
        n_max = current.max_per_domain * n_domains(current) if current is not None else 0
        sample = layouts.layout_sample(method, n_max)
        if n_max > sample:  # only where the layout is fitted on a sample
            ensure_state(f"{prefix}place_all", lambda v: isinstance(v, bool), False)
            kw["place_all"] = pc.toggle(
                "Place every point", key=f"{prefix}place_all",
                help=f"{REDUCER_LABELS[method]} is fitted on a stratified sample of {sample:,} images; the "
                     "others are left out (\"sample of N\"). On: the fitted embedding's transform places every "
                     "other image too (minutes for hundreds of thousands of images; cached afterwards).")
    return ReductionConfig(method=method, random_state=int(seed), **kw)


def colour_control(prefix: str = "", container: Any = st, clusters: bool = True) -> str:
    opts = list(COLOUR_LABELS) if clusters else ["domain", "class"]
    ensure_state(f"{prefix}color_by", lambda v: v in opts, "domain")
    return container.radio("Colour by", opts, key=f"{prefix}color_by", horizontal=True,
                           format_func=COLOUR_LABELS.get)


def image_mode_control(n_images: int, prefix: str = "", container: Any = st) -> bool:
    """The "Show images" toggle (key ``{prefix}image_mode``): thumbnails in place of points."""
    from core.figures import IMAGE_MODE_MAX

    ensure_state(f"{prefix}image_mode", lambda v: isinstance(v, bool), False)
    more = n_images > IMAGE_MODE_MAX
    return container.toggle(
        "Show images", key=f"{prefix}image_mode",
        help=f"Draw each image's thumbnail just above its point (up to {IMAGE_MODE_MAX} images"
             + (f"; with {n_images:,} images, one per region of the layout" if more else "") + ").")


if __name__ == "__main__":  # only when Streamlit runs this file as a page (a cold-start URL): not one
    st.switch_page(str(APP_PATH))
