"""Pixel-space DDPM (google/ddpm-cifar10-32, -celebahq-256, ...): an unconditional ``UNet2DModel``.

Path of one image (ddpm-cifar10-32 sizes)::

    image -> resize + center crop, [-1, 1]                    (3, 32, 32)   (no VAE: x0 is the pixels)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                (DDPM add_noise, eps seeded per image)
    unet(x_t, t) with hooks on down_blocks.i / mid_block / up_blocks.i    (B, C, h, w) -> spatial mean

google/ddpm-* repos are flat (config.json, diffusion_pytorch_model.safetensors and scheduler_config.json at
the root); a pipeline layout (model_index.json, unet/, scheduler/) loads too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, Conditioning, Request
from core.backbones.common import (identity, KW, check_noise_mode, check_safetensors, check_timestep, class_name, ddpm_noised,
                                   ddpm_noiser, index_class, place, pretrained, quiet)

CLASSES = ("UNet2DModel",)


def unet_layout(folder: Path) -> str | None:
    """The subfolder holding the UNet2DModel ("unet"), "" for the flat layout, None if neither."""
    folder = Path(folder)
    if class_name(folder, "unet") in CLASSES and (index_class(folder) in (None, "DDPMPipeline", "DDIMPipeline")):
        return "unet"
    if class_name(folder) in CLASSES:
        return ""
    return None


def unet_layers(unet) -> list[str]:
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    return names + [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]


@dataclass(eq=False)
class PixelDDPMBackbone(Backbone):
    family: ClassVar[str] = "ddpm"
    family_label: ClassVar[str] = "Pixel-space DDPM (UNet2DModel)"
    conditioned_on: ClassVar[str] = "timestep"
    hub_examples: ClassVar[tuple[str, ...]] = ("google/ddpm-cifar10-32", "google/ddpm-celebahq-256")

    unet: Any = None
    noiser: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return unet_layout(Path(folder)) is not None

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "PixelDDPMBackbone":
        from diffusers import UNet2DModel

        quiet()
        folder = Path(folder)
        sub = unet_layout(folder) or ""
        check_safetensors(folder, [sub or None])
        kw = dict(KW, torch_dtype=dtype, subfolder=sub) if sub else dict(KW, torch_dtype=dtype)
        unet = pretrained("UNet2DModel", folder, UNet2DModel, **kw)
        place(unet, device, dtype)
        noiser = ddpm_noiser(folder, "scheduler" if sub else None)
        layers = unet_layers(unet)
        size = unet.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        cond = Conditioning(timestep=True, num_train_timesteps=int(noiser.config.num_train_timesteps))
        return cls(name=name, identity=identity(folder), device=device, dtype=dtype, resolution=int(size),
                   layers=layers, default_layer="up_blocks.1" if "up_blocks.1" in layers else layers[-1],
                   conditioning=cond, root=unet, info={"folder": str(folder), "layout": "pipeline" if sub else "flat"},
                   unet=unet, noiser=noiser)

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        check_noise_mode(request, self.conditioning.noise_modes)
        t = check_timestep(request.timestep, self.num_train_timesteps)
        x0 = x0.to(self.device)
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=self.device)

        def one_draw(draw: int):
            x = ddpm_noised(self.noiser, x0, image_ids, request, draw, tt)  # (B, 3, R, R)
            return self.run_hooked(lambda: self.unet(x.to(self.dtype), tt, return_dict=False), layers,
                                   early_exit=early_exit, pool_fn=pool_fn)

        return self.averaged(request, one_draw)
