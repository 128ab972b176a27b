"""PixArt-alpha / PixArt-sigma: ``PixArtTransformer2DModel`` with T5 text conditioning.

Path of one image (PixArt-sigma 512 px in comments)::

    image -> resize + center crop, [-1, 1]                              (3, 512, 512)
    x0 = vae.encode(x).mode * scaling_factor                             (4, 64, 64)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                          (DDPM add_noise, eps seeded per image)
    transformer(x_t, text = T5(prompt) with its attention mask, timestep=t) with hooks on transformer_blocks.i
    (B, 1024, 1152) -> mean over tokens

Models with ``use_additional_conditions`` (PixArt-alpha 1024) get resolution and aspect ratio of the
model's native size. The real tokenizers are ``spiece.model`` only: they need ``sentencepiece`` and
``protobuf`` installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, ModelError, Conditioning, Request
from core.backbones.common import (identity, PromptMemo, batch_prompts, check_noise_mode, check_safetensors, check_timestep,
                                   config_of, ddpm_noised, ddpm_noiser, index_class, load_vae, place, pretrained, quiet,
                                   tokenize, vae_latents, vae_scale)
from core.backbones.dit import default_block_index
from core.backbones.sd3 import load_text

PIPELINES = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
CLASSES = ("PixArtTransformer2DModel",)
TEXT_ROWS = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}


@dataclass(eq=False)
class PixArtBackbone(Backbone):
    family: ClassVar[str] = "pixart"
    family_label: ClassVar[str] = "PixArt-alpha / sigma (T5-conditioned diffusion transformer)"
    conditioned_on: ClassVar[str] = "timestep, prompt (T5)"
    hub_examples: ClassVar[tuple[str, ...]] = ("PixArt-alpha/PixArt-XL-2-512x512",
                                               "PixArt-alpha/PixArt-Sigma-XL-2-512-MS")

    transformer: Any = None
    vae: Any = None
    noiser: Any = None
    text: tuple = ()
    text_rows: int = 300
    prompt_memo: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        folder = Path(folder)
        if index_class(folder) in PIPELINES:
            return True
        cfg = config_of(folder, "transformer") or {}
        name = cfg.get("_class_name")
        return name in CLASSES or (name == "Transformer2DModel" and cfg.get("norm_type") == "ada_norm_single")

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "PixArtBackbone":
        from diffusers import PixArtTransformer2DModel

        quiet()
        folder = Path(folder)
        check_safetensors(folder, ["transformer", "vae"])
        tr = pretrained("PixArt transformer", folder, PixArtTransformer2DModel, subfolder="transformer",
                        torch_dtype=dtype)
        place(tr, device, dtype)
        vae = load_vae(folder, device, dtype)
        text = load_text(folder, "text_encoder", "tokenizer", device, dtype, "T5EncoderModel")
        if vae is None or text[0] is None:
            raise ModelError(f"{folder} lacks vae/ or text_encoder/ + tokenizer/; a PixArt folder needs "
                                "transformer/, vae/, scheduler/, text_encoder/ and tokenizer/ (download the whole repo)")
        noiser = ddpm_noiser(folder)
        n = len(tr.transformer_blocks)
        layers = [f"transformer_blocks.{i}" for i in range(n)]
        cond = Conditioning(timestep=True, prompt=True, num_train_timesteps=int(noiser.config.num_train_timesteps))
        bb = cls(name=name, identity=identity(folder), device=device, dtype=dtype,
                 resolution=int(tr.config.sample_size) * vae_scale(vae), layers=layers,
                 default_layer=layers[default_block_index(n)], conditioning=cond, root=tr,
                 info={"folder": str(folder)}, transformer=tr, vae=vae, noiser=noiser, text=text,
                 text_rows=TEXT_ROWS.get(index_class(folder) or "", 300))
        bb.prompt_memo = PromptMemo(bb._encode_prompts)
        return bb

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return vae_latents(self.vae, pixels, self.device, self.dtype)

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc, tok = self.text
        ids, mask = tokenize(tok, prompts, self.device, min(self.text_rows, tok.model_max_length))
        return enc(ids, attention_mask=mask)[0].to(self.dtype), mask  # (P, L, 4096), (P, L)

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        check_noise_mode(request, self.conditioning.noise_modes)
        t = check_timestep(request.timestep, self.num_train_timesteps)
        b, _, h, w = x0.shape
        text, mask = self.prompt_memo(batch_prompts(request, b))
        x0 = x0.to(self.device)
        tt = torch.full((b,), t, dtype=torch.long, device=self.device)
        added = {"resolution": None, "aspect_ratio": None}
        if self.transformer.use_additional_conditions:
            s = vae_scale(self.vae)
            added = {"resolution": torch.tensor([[h * s, w * s]], device=self.device, dtype=self.dtype).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[h / w]], device=self.device, dtype=self.dtype).repeat(b, 1)}

        def one_draw(draw: int):
            x = ddpm_noised(self.noiser, x0, image_ids, request, draw, tt)
            call = lambda: self.transformer(x.to(self.dtype), encoder_hidden_states=text,  # noqa: E731
                                            encoder_attention_mask=mask, timestep=tt, added_cond_kwargs=added,
                                            return_dict=False)
            return self.run_hooked(call, layers, early_exit=early_exit, pool_fn=pool_fn)

        return self.averaged(request, one_draw)
