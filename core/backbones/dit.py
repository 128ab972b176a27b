"""DiT (facebook/DiT-XL-2-256, -512): a class-conditional latent diffusion transformer.

Path of one image (DiT-XL/2-512 sizes in comments)::

    image -> resize + center crop, [-1, 1]                         (3, 512, 512)
    x0 = (vae.encode(x).mode - shift) * scaling_factor              (4, 64, 64)
    "noised" (default): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPM add_noise, eps seeded per image)
    "clean": x_t = x0, only the timestep embedding sees t (the paper's public DiT code)
    transformer(x_t, timestep=t, class_labels=label) with hooks on transformer_blocks.i   (B, 1024, 1152)
    mean over tokens -> (B, 1152)

The class label defaults to the null class (``num_embeds_ada_norm``, 1000 for DiT-XL/2). The model's output
(eps and the learned variance, 2C channels) is never read: hooks stop the pass after the deepest block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, Conditioning, ExtractionError, ModelError, Request, center_crop
from core.backbones.common import (identity, NOISE_MODES_CLEAN, check_noise_mode, check_safetensors, check_timestep,
                                   class_name, config_of, ddpm_noised, ddpm_noiser, index_class, key_without_noise,
                                   load_vae, place, pretrained, quiet, vae_latents, vae_scale)

PIPELINES = ("DiTPipeline",)
CLASSES = ("DiTTransformer2DModel",)


def default_block_index(n_layers: int) -> int:
    """Block 14 of DiT-XL/2's 28 (the paper's layer), scaled to the depth of other models."""
    return min(n_layers - 1, round(n_layers * 14 / 28))


@dataclass(eq=False)
class DiTBackbone(Backbone):
    family: ClassVar[str] = "dit"
    family_label: ClassVar[str] = "DiT (class-conditional latent diffusion transformer)"
    conditioned_on: ClassVar[str] = "timestep (noised x_t or clean latent), class label (default: the null class)"
    hub_examples: ClassVar[tuple[str, ...]] = ("facebook/DiT-XL-2-256", "facebook/DiT-XL-2-512")

    transformer: Any = None
    vae: Any = None
    noiser: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        folder = Path(folder)
        if index_class(folder) in PIPELINES:
            return True
        cfg = config_of(folder, "transformer") or {}
        name = cfg.get("_class_name")
        # real facebook/DiT-XL-2-* say the legacy "Transformer2DModel"; diffusers remaps it by norm_type
        return name in CLASSES or (name == "Transformer2DModel" and cfg.get("norm_type") == "ada_norm_zero")

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "DiTBackbone":
        from diffusers import DiTTransformer2DModel

        quiet()
        folder = Path(folder)
        check_safetensors(folder, ["transformer", "vae"])
        tr = pretrained("DiT transformer", folder, DiTTransformer2DModel, subfolder="transformer", torch_dtype=dtype)
        place(tr, device, dtype)  # eval(): a fresh DiT drops class labels at random in train mode
        vae = load_vae(folder, device, dtype)
        if vae is None:
            raise ModelError(f"{folder} has no vae/ subfolder; a DiT folder needs transformer/, vae/ and "
                                "scheduler/ (download the whole repo)")
        noiser = ddpm_noiser(folder)
        n_layers = len(tr.transformer_blocks)
        layers = [f"transformer_blocks.{i}" for i in range(n_layers)]
        n_classes = int(tr.config.num_embeds_ada_norm)
        cond = Conditioning(timestep=True, class_label=True, num_train_timesteps=int(noiser.config.num_train_timesteps),
                            num_classes=n_classes, null_class=n_classes, noise_modes=NOISE_MODES_CLEAN)
        return cls(name=name, identity=identity(folder), device=device, dtype=dtype,
                   resolution=int(tr.config.sample_size) * vae_scale(vae), layers=layers,
                   default_layer=layers[default_block_index(n_layers)], conditioning=cond, root=tr,
                   info={"folder": str(folder), "class": class_name(folder, "transformer"),
                         "vae_dtype": str(next(vae.parameters()).dtype)},
                   transformer=tr, vae=vae, noiser=noiser)

    def preprocess(self, image, resolution: int) -> torch.Tensor:
        return center_crop(image, resolution)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return vae_latents(self.vae, pixels, self.device, self.dtype)

    def key_conditioning(self, timestep, prompt, class_label, seed, ensemble, noise_mode) -> dict:
        return key_without_noise(super().key_conditioning(timestep, prompt, class_label, seed, ensemble, noise_mode),
                                 noise_mode)

    def label(self, request: Request) -> int:
        c = self.conditioning
        label = self.null_class_if_none(request.class_label)
        if not 0 <= label <= c.num_classes:
            raise ExtractionError(f"class label must be in [0, {c.num_classes - 1}] or {c.null_class} (the null "
                                f"class), got {label}")
        return label

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        check_noise_mode(request, self.conditioning.noise_modes)
        t = check_timestep(request.timestep, self.num_train_timesteps)
        b = x0.shape[0]
        tt = torch.full((b,), t, dtype=torch.long, device=self.device)
        labels = torch.full((b,), self.label(request), dtype=torch.long, device=self.device)
        x0 = x0.to(self.device)

        def one_draw(draw: int):
            x = x0 if request.noise_mode == "clean" else ddpm_noised(self.noiser, x0, image_ids, request, draw, tt)
            call = lambda: self.transformer(x.to(self.dtype), timestep=tt, class_labels=labels,  # noqa: E731
                                            return_dict=False)
            return self.run_hooked(call, layers, early_exit=early_exit, pool_fn=pool_fn)

        if request.noise_mode == "clean":  # nothing random: one pass whatever the ensemble
            return self.averaged(Request(ensemble=1), one_draw)
        return self.averaged(request, one_draw)
