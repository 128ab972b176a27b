"""Feature extraction: the paper's recipe with all-block capture in one UNet pass and early exit.

Path of one image (SD-2.1-base sizes in comments; the embedded default is 64 px / 16x16x4)::

    image -> RGB, resize short side, center crop   (3, 512, 512) in [-1, 1]
    x0  = vae.encode(x).latent_dist.mode() * scaling_factor      (4, 64, 64)
    eps ~ N(0, I) from a generator seeded by (seed, image id, draw)
    x_t = scheduler.add_noise(x0, eps, t)
    UNet(x_t, t, text_embedding(prompt)) with forward hooks on the requested blocks;
    the hook of the deepest requested block stops the forward (early exit).
    block output (B, C, h, w) -> spatial mean -> (B, C)

A feature therefore depends only on (model, image, block, timestep, prompt, seed, resolution,
ensemble), never on batch size, order or run.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from core.backbones.loading import FeatureModel

logger = logging.getLogger(__name__)


class ExtractionError(ValueError):
    """Bad extraction settings; the message says what to do."""


# ------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSpec:
    """``mode``: "empty" (the paper's default), "template" (``text`` with ``{class}``) or "custom"."""

    mode: str = "empty"
    text: str = ""

    def __post_init__(self):
        if self.mode not in ("empty", "template", "custom"):
            raise ExtractionError(f"prompt mode must be empty, template or custom, got {self.mode!r}")
        if self.mode == "template" and "{class}" not in self.text:
            raise ExtractionError(f"a class template must contain {{class}}, e.g. 'a photo of a {{class}}'; "
                                  f"got {self.text!r}")

    def for_class(self, cls: str) -> str:
        if self.mode == "empty":
            return ""
        if self.mode == "template":
            return self.text.replace("{class}", cls.replace("_", " "))
        return self.text

    @property
    def label(self) -> str:
        return "" if self.mode == "empty" else self.text

    @classmethod
    def parse(cls, prompt: str | None = None, template: str | None = None) -> "PromptSpec":
        if prompt and template:
            raise ExtractionError("give either a prompt or a prompt template, not both")
        if template:
            return cls("template", template)
        if prompt:
            return cls("custom", prompt)
        return cls()


# ----------------------------------------------------------------------------------- preprocess


def preprocess(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution`` (bicubic), center crop, scale to [-1, 1].

    Returns a float32 tensor (3, resolution, resolution).
    """
    w, h = image.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    a = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


# -------------------------------------------------------------------------------------- noise


def image_seed(seed: int, image_id: str, draw: int = 0) -> int:
    """A 63-bit seed from (seed, stable image id, ensemble draw)."""
    d = hashlib.blake2b(f"{seed}\x00{image_id}\x00{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


def image_noise(shape: Sequence[int], seed: int, image_ids: Sequence[str], draw: int = 0) -> torch.Tensor:
    """Per-image Gaussian noise drawn on the CPU (device independent): (B, *shape)."""
    out = torch.empty((len(image_ids), *shape), dtype=torch.float32)
    for i, iid in enumerate(image_ids):
        g = torch.Generator().manual_seed(image_seed(seed, iid, draw))
        out[i] = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    return out


# -------------------------------------------------------------------------------------- hooks


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block: the rest of the UNet is not needed."""


def _block_module(unet, name: str):
    if name == "mid_block":
        return unet.mid_block
    kind, _, idx = name.partition(".")
    return getattr(unet, kind)[int(idx)]


@contextlib.contextmanager
def capture_blocks(unet, blocks: Sequence[str], block_order: Sequence[str], early_exit: bool = True
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store each requested block's output (spatially mean-pooled, (B, C)).

    With ``early_exit`` the deepest requested block (in ``block_order``) raises :class:`_StopForward`.
    Hooks are removed on exit, whatever happens.
    """
    unknown = [b for b in blocks if b not in block_order]
    if unknown:
        raise ExtractionError(f"unknown block(s) {unknown}; this UNet has {list(block_order)}")
    captured: dict[str, torch.Tensor] = {}
    deepest = max(blocks, key=block_order.index)
    handles = []

    def make_hook(name):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output  # down blocks: (hidden, residuals)
            captured[name] = h.float().mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
            if early_exit and name == deepest:
                raise _StopForward

        return hook

    try:
        for b in blocks:
            handles.append(_block_module(unet, b).register_forward_hook(make_hook(b)))
        yield captured
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------------- extraction


class PromptEncoder:
    """Encodes each distinct prompt once and keeps the embedding."""

    def __init__(self, model: FeatureModel):
        self.model = model
        self._memo: dict[str, torch.Tensor] = {}
        self.n_encoded = 0

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        m = self.model
        missing = [p for p in dict.fromkeys(prompts) if p not in self._memo]
        if missing:
            if m.text_encoder is None:
                if any(missing):
                    raise ExtractionError(f"model {m.name!r} has no text encoder; only the empty prompt works")
                dim = m.unet.config.cross_attention_dim
                dim = dim[0] if isinstance(dim, (list, tuple)) else dim
                for p in missing:
                    self._memo[p] = torch.zeros(1, dim, device=m.device, dtype=m.dtype)
            else:
                tok = m.tokenizer(missing, padding="max_length", max_length=m.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt")
                with torch.inference_mode():
                    emb = m.text_encoder(tok.input_ids.to(m.device))[0]  # (P, L, D)
                for p, e in zip(missing, emb):
                    self._memo[p] = e.to(m.dtype)
                self.n_encoded += len(missing)
        return torch.stack([self._memo[p] for p in prompts])  # (B, L, D)


def validate_timestep(model: FeatureModel, timestep: int) -> int:
    n = model.num_train_timesteps
    if isinstance(timestep, bool) or int(timestep) != timestep:
        raise ExtractionError(f"`timestep` must be an integer, got {timestep!r}")
    if not 0 <= int(timestep) < n:
        raise ExtractionError(f"`timestep` must be in [0, {n - 1}] for this scheduler, got {timestep}")
    return int(timestep)


@torch.inference_mode()
def encode_latents(model: FeatureModel, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> x0 = latent mode * scaling_factor (B, 4, H/8, W/8); pixels if no VAE."""
    if model.vae is None:
        return pixels.to(model.device, model.dtype)
    vae = model.vae
    vae_dtype = next(vae.parameters()).dtype
    dist = vae.encode(pixels.to(model.device, vae_dtype)).latent_dist
    x0 = dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((x0 - shift) * vae.config.scaling_factor).to(model.dtype)


@torch.inference_mode()
def unet_block_features(
    model: FeatureModel,
    x0: torch.Tensor,
    image_ids: Sequence[str],
    timestep: int,
    cond: torch.Tensor,
    blocks: Sequence[str],
    seed: int = 0,
    ensemble: int = 1,
    early_exit: bool = True,
) -> dict[str, torch.Tensor]:
    """Features of ``blocks`` for clean latents ``x0`` (B, c, h, w): one UNet pass per noise draw.

    Returns ``{block: (B, C) float32 on CPU}``, averaged over ``ensemble`` draws.
    """
    if ensemble < 1:
        raise ExtractionError(f"`ensemble` must be >= 1, got {ensemble}")
    unet, sched = model.unet, model.scheduler
    t = torch.full((x0.shape[0],), timestep, dtype=torch.long, device=model.device)
    sums: dict[str, torch.Tensor] = {}
    for draw in range(ensemble):
        noise = image_noise(x0.shape[1:], seed, image_ids, draw).to(model.device, torch.float32)
        x_t = sched.add_noise(x0.float(), noise, t.cpu() if model.device.type == "mps" else t)
        with capture_blocks(unet, blocks, model.blocks, early_exit) as captured:
            try:
                unet(x_t.to(model.dtype), t, encoder_hidden_states=cond, return_dict=False)
            except _StopForward:
                pass
        for b in blocks:
            sums[b] = sums[b] + captured[b] if b in sums else captured[b]
    return {b: (v / ensemble).cpu() for b, v in sums.items()}


@torch.inference_mode()
def baseline_features(model: FeatureModel, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Offline baselines: downsampled pixels (768-d) or the CNN's penultimate layer."""
    if model.kind == "pixels":
        small = torch.nn.functional.interpolate(pixels.float(), size=(16, 16), mode="area")
        return {"pixels": small.flatten(1)}  # (B, 768)
    from core.training.train_baseline import cnn_features

    return {"features": cnn_features(model.net, pixels.to(model.device)).float().cpu()}


def extract_batch(
    model: FeatureModel,
    pixels: torch.Tensor,
    image_ids: Sequence[str],
    prompts: Sequence[str],
    blocks: Sequence[str],
    timestep: int,
    seed: int = 0,
    ensemble: int = 1,
    prompt_encoder: PromptEncoder | None = None,
) -> dict[str, np.ndarray]:
    """One batch through the whole recipe: ``{block: (B, C) float32}``."""
    if model.kind != "diffusion":
        return {b: v.numpy() for b, v in baseline_features(model, pixels).items() if b in blocks}
    encoder = prompt_encoder or PromptEncoder(model)
    cond = encoder(prompts)
    x0 = encode_latents(model, pixels)
    out = unet_block_features(model, x0, image_ids, timestep, cond, blocks, seed, ensemble)
    return {b: v.numpy().astype(np.float32) for b, v in out.items()}


def run_batches(
    fn: Callable[[slice], dict[str, np.ndarray]],
    n: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    concat: Callable = np.concatenate,
) -> dict[str, np.ndarray]:
    """Apply ``fn`` to consecutive slices of ``n`` items; a CUDA out-of-memory halves the batch and
    carries on from where it stopped. Returns the concatenated arrays."""
    parts: dict[str, list[np.ndarray]] = {}
    i = 0
    while i < n:
        sl = slice(i, min(n, i + batch_size))
        try:
            out = fn(sl)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            logger.warning("CUDA out of memory: batch size halved to %d", batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
        i = sl.stop
        if progress:
            progress(sl.stop - sl.start)
    return {k: concat(v) for k, v in parts.items()}
