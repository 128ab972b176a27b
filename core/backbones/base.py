"""The backbone seam: what every model family implements, and the hook machinery they share.

A *backbone* is one loaded feature space: a diffusion UNet or transformer, or a vision baseline. Each family
is one file in this folder with one :class:`Backbone` subclass that says

* how it is recognised (:meth:`Backbone.detect` on a local folder laid out as its real Hub repo) and
  loaded (:meth:`Backbone.load`, safetensors only);
* its readable layers in execution order and its default layer (``layers``, ``default_layer``);
* what it is conditioned on (:class:`Conditioning`: a timestep? a prompt? a class label? nothing?);
* its own preprocessing (:meth:`Backbone.preprocess`) and clean encoding (:meth:`Backbone.encode`, e.g. VAE
  latents: memoisable, it depends only on the image and the resolution);
* pooled per-image features for a set of layers from one forward pass
  (:meth:`Backbone.forward_features`), built on :meth:`Backbone.run_hooked`: forward hooks on modules
  found by path, early exit after the deepest requested layer, and pooling that knows maps (B, C, H, W),
  token sequences (B, N, D) and tuple outputs.

The engine only talks to this interface: no family names appear outside this folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from PIL import Image


class BackboneError(ValueError):
    """A model or setting a backbone cannot take as given; the message says what to do."""


class ModelError(BackboneError):
    """A model that cannot be loaded as given (unsupported folder, pickle weights, missing files)."""


class ExtractionError(BackboneError):
    """Bad extraction settings (unknown layer, timestep out of range, a prompt the model cannot take)."""


# ------------------------------------------------------------------------------------ conditioning


@dataclass(frozen=True)
class Conditioning:
    """What a backbone's forward pass is conditioned on. The UI shows only the controls declared here and
    the cache key holds exactly these inputs."""

    timestep: bool = False  # a diffusion timestep: the input is x_t (noised), or x0 with "clean" noise mode
    prompt: bool = False  # a text prompt
    class_label: bool = False  # a class label (DiT); ``null_class`` is the unconditional one
    num_train_timesteps: int = 0
    num_classes: int = 0  # labels 0 .. num_classes - 1 (plus the null class)
    null_class: int | None = None
    noise_modes: tuple[str, ...] = ("noised",)  # "noised" (x_t, the default) and, where offered, "clean"

    def describe(self) -> str:
        parts = []
        if self.timestep:
            parts.append(f"timestep (0..{self.num_train_timesteps - 1})")
        if self.prompt:
            parts.append("prompt")
        if self.class_label:
            parts.append(f"class label (null = {self.null_class})")
        if "clean" in self.noise_modes:
            parts.append("clean-latent option")
        return ", ".join(parts) or "nothing (image only)"


@dataclass(frozen=True)
class Request:
    """The conditioning of one forward pass. A backbone reads only what its :class:`Conditioning` declares."""

    timestep: int = 0
    prompts: Sequence[str] = ()  # one per image (empty strings = the empty prompt)
    class_label: int | None = None  # None: the null class
    seed: int = 0
    ensemble: int = 1  # noise draws averaged
    noise_mode: str = "noised"


# --------------------------------------------------------------------------------------- noise


def image_seed(seed: int, image_id: str, draw: int = 0) -> int:
    """A 63-bit seed from (seed, stable image id, ensemble draw)."""
    d = hashlib.blake2b(f"{seed}\x00{image_id}\x00{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def image_noise(shape: Sequence[int], seed: int, image_ids: Sequence[str], draw: int = 0) -> torch.Tensor:
    """Per-image Gaussian noise drawn on the CPU (device and batch independent): (B, *shape) float32."""
    out = torch.empty((len(image_ids), *shape), dtype=torch.float32)
    for i, iid in enumerate(image_ids):
        g = torch.Generator().manual_seed(image_seed(seed, iid, draw))
        out[i] = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return out


# ----------------------------------------------------------------------------------- preprocess


def center_crop(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution`` (bicubic), center crop, scale to [-1, 1]: (3, R, R) float32."""
    w, h = image.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------- pooling


def pool(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> mean over space; (B, N, D) -> mean over tokens; (B, D) as is. Returns float32."""
    h = h.float()
    if h.ndim == 4:
        return h.mean(dim=(2, 3))
    if h.ndim == 3:
        return h.mean(dim=1)
    if h.ndim == 2:
        return h
    raise BackboneError(f"cannot pool a layer output of shape {tuple(h.shape)}")


def tokens_to_map(h: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A layer output as a spatial map (B, C, h, w): maps as they are, tokens (row-major patches) reshaped."""
    if h.ndim == 4:
        return h.float()
    if h.ndim == 3:
        b, n, d = h.shape
        gh, gw = grid if grid is not None else (int(round(n ** 0.5)),) * 2
        if gh * gw != n:
            raise BackboneError(f"{n} tokens do not form a {gh}x{gw} grid")
        return h.float().reshape(b, gh, gw, d).permute(0, 3, 1, 2)
    raise BackboneError(f"a layer output of shape {tuple(h.shape)} has no spatial layout")


# ----------------------------------------------------------------------------------------- hooks


class StopForward(Exception):
    """Raised by the hook of the deepest requested layer: the rest of the network is not needed."""


# ----------------------------------------------------------------------------------- the seam


@dataclass
class Backbone(ABC):
    """One loaded feature space. Subclasses set the class attributes and implement :meth:`detect`,
    :meth:`load` and :meth:`forward_features` (usually a few lines around :meth:`run_hooked`)."""

    family: ClassVar[str] = ""  # registry name, e.g. "sd-unet"
    family_label: ClassVar[str] = ""  # human name, e.g. "Stable Diffusion 1.x / 2.x UNet"
    conditioned_on: ClassVar[str] = ""  # for listings before loading, e.g. "timestep, prompt"
    hub_examples: ClassVar[tuple[str, ...]] = ()  # real Hub ids of this family, for help texts
    token_pooling_note: ClassVar[str] = ""  # for listings before loading: the token poolings a family offers

    name: str
    identity: str  # content hash of the weights and configs
    device: torch.device
    dtype: torch.dtype
    resolution: int  # the model's native input size in pixels
    layers: list[str]  # readable layers in execution order
    default_layer: str
    conditioning: Conditioning = field(default_factory=Conditioning)
    root: Any = None  # the module the layer paths are relative to (for hooks)
    info: dict = field(default_factory=dict)
    # Token pooling choices (e.g. "cls", "mean") of a model whose layers output token sequences with a
    # summary token; the first is the default. () for models that pool maps (and tokens) by their mean only.
    poolings: tuple[str, ...] = ()
    pooling: str | None = None  # the choice in use (one of ``poolings``; None when there is none)

    # ---- what the engine and the UI read -------------------------------------------------
    @property
    def blocks(self) -> list[str]:
        """The layers (the UI and older code call them blocks)."""
        return self.layers

    @property
    def default_block(self) -> str:
        return self.default_layer

    @property
    def uses_timestep(self) -> bool:
        return self.conditioning.timestep

    @property
    def uses_prompt(self) -> bool:
        return self.conditioning.prompt

    @property
    def uses_class_label(self) -> bool:
        return self.conditioning.class_label

    @property
    def num_train_timesteps(self) -> int:
        return self.conditioning.num_train_timesteps or 1

    # ---- token pooling --------------------------------------------------------------------
    @property
    def default_pooling(self) -> str | None:
        """The documented default token pooling (the first of :attr:`poolings`), None when there is no choice."""
        return self.poolings[0] if self.poolings else None

    def check_pooling(self, pooling: str) -> str:
        """``pooling`` if this backbone offers it, else :class:`ExtractionError` naming the valid choices."""
        if pooling in self.poolings:
            return pooling
        who = f"{self.name!r} ({self.family_label or self.family})"
        if not self.poolings:
            raise ExtractionError(f"token pooling {pooling!r} is not offered by {who}: it averages each layer's "
                                  "output over space (or tokens) and has no pooling choice; leave token pooling "
                                  "unset (`python -m core models MODEL` lists a model's poolings)")
        raise ExtractionError(f"token pooling {pooling!r} is not offered by {who}; use one of "
                              f"{', '.join(self.poolings)} (default {self.default_pooling})")

    def with_token_pooling(self, pooling: str | None) -> "Backbone":
        """This backbone with token pooling ``pooling`` (None: the default); the loaded modules are shared.
        Raises :class:`ExtractionError` for a pooling it does not offer."""
        if pooling is None:
            pooling = self.default_pooling
            if pooling is None:
                return self
        self.check_pooling(pooling)
        return self if pooling == self.pooling else dataclasses.replace(self, pooling=pooling)

    # ---- loading --------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def detect(cls, folder: Path) -> bool:
        """Whether ``folder`` (a local model folder in its Hub layout) holds this family."""

    @classmethod
    @abstractmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "Backbone":
        """Load from ``folder`` (safetensors only, no network)."""

    # ---- the recipe -----------------------------------------------------------------------
    def preprocess(self, image: Image.Image, resolution: int) -> torch.Tensor:
        """One RGB image -> (3, R, R) float32. Default: resize + center crop to [-1, 1]."""
        return center_crop(image, resolution)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The clean encoding of preprocessed pixels (B, 3, R, R), e.g. VAE latents. It must depend only on
        the image and the resolution (the engine memoises it across timesteps and prompts). Default: the
        pixels on the model's device."""
        return pixels.to(self.device, self.dtype)

    @abstractmethod
    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str],
                         request: Request, *, early_exit: bool = True,
                         pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        """Pooled features ``{layer: (B, D) float32 on CPU}`` of clean encodings ``x0`` for ``layers``,
        from one forward pass per noise draw (averaged over ``request.ensemble``). Implementations pass
        ``early_exit`` and ``pool_fn`` on to :meth:`run_hooked` (``pool_fn`` replaces :meth:`pool`, e.g.
        :func:`tokens_to_map` for spatial maps)."""

    def spatial_maps(self, x0: torch.Tensor, image_ids: Sequence[str], layer: str,
                     request: Request) -> torch.Tensor:
        """The un-pooled output of ``layer`` as maps (B, C, h, w) float32 on CPU (tokens reshaped)."""
        out = self.forward_features(x0, image_ids, [layer], request, early_exit=True, pool_fn=tokens_to_map)
        return out[layer]

    def key_conditioning(self, timestep: int, prompt: tuple[str, str], class_label: int | None, seed: int,
                         ensemble: int, noise_mode: str) -> dict:
        """The part of the cache key that comes from conditioning: exactly what this backbone declares."""
        c = self.conditioning
        key: dict[str, Any] = {
            "timestep": timestep if c.timestep else None,
            "prompt": list(prompt) if c.prompt else None,
            "seed": seed if c.timestep else None,
            "ensemble": ensemble if c.timestep else 1,
        }
        if c.class_label:
            key["class_label"] = self.null_class_if_none(class_label)
        if len(c.noise_modes) > 1:
            key["noise_mode"] = noise_mode
        return key

    def check_timestep(self, timestep: int) -> int:
        """``timestep`` as an int in [0, num_train_timesteps - 1], else :class:`ExtractionError`."""
        n = self.num_train_timesteps
        if isinstance(timestep, bool) or int(timestep) != timestep:
            raise ExtractionError(f"`timestep` must be an integer, got {timestep!r}")
        if not 0 <= int(timestep) < n:
            raise ExtractionError(f"`timestep` must be in [0, {n - 1}] for this scheduler, got {timestep}")
        return int(timestep)

    def key_dtype(self) -> str:
        """The compute dtype as it enters the cache key."""
        return str(self.dtype)

    def check_request(self, request: Request) -> None:
        """Raise :class:`ExtractionError` for conditioning this backbone declares but cannot take as given
        (the engine calls it before any work, cached or not). Options it does not declare are ignored, not
        errors: see :meth:`ignored_options`."""
        c = self.conditioning
        if c.timestep:
            self.check_timestep(request.timestep)
        if c.class_label and request.class_label is not None:
            lab = request.class_label
            if isinstance(lab, bool) or int(lab) != lab or not (0 <= int(lab) < c.num_classes
                                                                 or int(lab) == c.null_class):
                raise ExtractionError(f"`class_label` must be an integer in [0, {c.num_classes - 1}] or the null "
                                      f"class {c.null_class} for {self.name!r}, got {lab!r}")
        if request.noise_mode not in c.noise_modes:
            if len(c.noise_modes) > 1:
                raise ExtractionError(f"`noise_mode` must be one of {', '.join(c.noise_modes)} for {self.name!r}, "
                                      f"got {request.noise_mode!r}")
        if request.ensemble < 1:
            raise ExtractionError(f"`ensemble` must be >= 1, got {request.ensemble}")

    def ignored_options(self, *, timesteps: Sequence[int] = (), prompt: bool = False,
                        class_label: int | None = None, noise_mode: str = "noised") -> list[str]:
        """Human notes for options the user gave (``timesteps``: only when given explicitly) that this backbone
        does not declare and therefore ignores."""
        c = self.conditioning
        who = f"{self.name!r} ({self.family_label or self.family})"
        notes = []
        if not c.timestep and timesteps:
            notes.append(f"the timestep{'s' if len(set(timesteps)) > 1 else ''} {', '.join(map(str, timesteps))} "
                         f"{'are' if len(set(timesteps)) > 1 else 'is'} ignored: {who} takes no timestep, so one "
                         "extraction serves all")
        if prompt and not c.prompt:
            notes.append(f"the prompt is ignored: {who} is not conditioned on text")
        if class_label is not None and not c.class_label:
            notes.append(f"the class label is ignored: {who} is not class-conditional")
        if noise_mode != "noised" and noise_mode not in c.noise_modes:
            notes.append(f"noise mode {noise_mode!r} is ignored: {who} offers only {', '.join(c.noise_modes)}")
        return notes

    def describe(self) -> str:
        """One line for listings: family, layers, default layer, conditioning."""
        pooling = (f"; token pooling {' or '.join(self.poolings)} (default {self.default_pooling})"
                   if self.poolings else "")
        return (f"{self.family_label or self.family}: {len(self.layers)} layers, default {self.default_layer}; "
                f"conditioned on {self.conditioning.describe()}{pooling}")

    def null_class_if_none(self, class_label: int | None) -> int | None:
        return self.conditioning.null_class if class_label is None else int(class_label)

    # ---- hooks ----------------------------------------------------------------------------
    def layer_output(self, layer: str, output: Any) -> torch.Tensor:
        """The tensor to read from a hooked module's output. Default: a tensor as is, a tuple's first
        element (UNet down blocks: (hidden, residuals)). Families whose blocks return
        ``(text_stream, image_stream)`` override this."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def pool(self, layer: str, h: torch.Tensor) -> torch.Tensor:
        """(B, ...) layer output -> (B, D). Default :func:`pool`; vision families override (CLS token)."""
        return pool(h)

    def module(self, layer: str) -> torch.nn.Module:
        """The module a layer name points to, by path under :attr:`root`."""
        if layer not in self.layers:
            raise ExtractionError(f"unknown layer {layer!r} for {self.name!r}; valid layers: {', '.join(self.layers)}")
        return self.root.get_submodule(self.layer_path(layer))

    def layer_path(self, layer: str) -> str:
        """Module path of a layer under :attr:`root`. Default: the layer name itself."""
        return layer

    @contextlib.contextmanager
    def hooks(self, layers: Sequence[str], *, early_exit: bool = True,
              pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> Iterator[dict[str, torch.Tensor]]:
        """Forward hooks storing each requested layer's pooled output; with ``early_exit`` the deepest one
        raises :class:`StopForward`. Hooks are removed on exit, whatever happens.

        The hooks belong to this call: they act only on forward passes run by the thread that registered
        them, so any number of threads (app sessions) can extract from one loaded model at once, each
        seeing only its own layers (registering and removing a hook is atomic under the GIL, and
        ``Module.__call__`` iterates over a snapshot of the hooks)."""
        unknown = [b for b in layers if b not in self.layers]
        if unknown:
            raise ExtractionError(f"unknown layer(s) {unknown} for {self.name!r}; valid layers: "
                                  f"{', '.join(self.layers)}")
        if not layers:
            raise ExtractionError(f"no layer given; pass 'all' or some of {', '.join(self.layers)}")
        captured: dict[str, torch.Tensor] = {}
        deepest = max(layers, key=self.layers.index)
        handles = []

        owner = threading.get_ident()

        def make_hook(name):
            def hook(module, args, output):
                if threading.get_ident() != owner:  # another thread's forward pass through the shared module
                    return None
                h = self.layer_output(name, output)
                captured[name] = pool_fn(h) if pool_fn is not None else self.pool(name, h)
                if early_exit and name == deepest:
                    raise StopForward

            return hook

        try:
            for b in layers:
                handles.append(self.module(b).register_forward_hook(make_hook(b)))
            yield captured
        finally:
            for h in handles:
                h.remove()

    def run_hooked(self, call: Callable[[], Any], layers: Sequence[str], *, early_exit: bool = True,
                   pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run ``call()`` (one forward pass) with hooks on ``layers``; returns ``{layer: tensor}``."""
        with self.hooks(layers, early_exit=early_exit, pool_fn=pool_fn) as captured, torch.inference_mode():
            try:
                call()
            except StopForward:
                pass
        missing = [b for b in layers if b not in captured]
        if missing:
            raise BackboneError(f"layer(s) {missing} of {self.name!r} did not run in the forward pass")
        return dict(captured)

    def averaged(self, request: Request, one_draw: Callable[[int], dict[str, torch.Tensor]]
                 ) -> dict[str, torch.Tensor]:
        """Average ``one_draw(draw)`` over ``request.ensemble`` noise draws; float32 on CPU."""
        if request.ensemble < 1:
            raise ExtractionError(f"`ensemble` must be >= 1, got {request.ensemble}")
        sums: dict[str, torch.Tensor] = {}
        for draw in range(request.ensemble):
            for b, v in one_draw(draw).items():
                sums[b] = sums[b] + v if b in sums else v
        return {b: (v / request.ensemble).float().cpu() for b, v in sums.items()}
