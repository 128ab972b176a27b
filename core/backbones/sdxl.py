"""Stable Diffusion XL: the SD UNet recipe (sd_unet.py) with SDXL's two text encoders and added conditions.

Path of one image (SDXL-base at 1024 px in comments)::

    image -> resize + center crop, [-1, 1]                                      (3, 1024, 1024)
    x0 = vae.encode(x).mode * 0.13025      (the VAE stays fp32 when the model runs in fp16: it overflows)
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps  (a DDPMScheduler from the folder's betas: the shipped
                                                   EulerDiscreteScheduler's add_noise returns x0 + sigma eps)
    text: penultimate hidden states of text_encoder (CLIP-L) and text_encoder_2 (OpenCLIP-G), concatenated
          (77, 768 + 1280); pooled: text_encoder_2's projection (1280)
    unet(x_t, t, text, added_cond_kwargs={"text_embeds": pooled, "time_ids": [H, W, 0, 0, H, W]})
    hooks on down_blocks.i / mid_block / up_blocks.i -> spatial mean

The empty prompt is really encoded (``force_zeros_for_empty_prompt`` only zeroes the negative prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from core.backbones.base import ModelError
from core.backbones.common import check_safetensors, config_of, index_class, tokenize
from core.backbones.sd3 import load_text
from core.backbones.sd_unet import SDUNet

PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


@dataclass(eq=False)
class SDXLUNet(SDUNet):
    family: ClassVar[str] = "sdxl"
    family_label: ClassVar[str] = "Stable Diffusion XL UNet (two text encoders, text_time conditions)"
    conditioned_on: ClassVar[str] = "timestep, prompt"
    hub_examples: ClassVar[tuple[str, ...]] = ("stabilityai/stable-diffusion-xl-base-1.0",)

    text_encoder_2: Any = None
    tokenizer_2: Any = None
    noiser: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        folder = Path(folder)
        cfg = config_of(folder, "unet") or {}
        if cfg.get("_class_name") != "UNet2DConditionModel" or not (folder / "scheduler").is_dir():
            return False
        return index_class(folder) in PIPELINES or (cfg.get("addition_embed_type") == "text_time"
                                                    and (folder / "text_encoder_2").is_dir())

    @classmethod
    def load_text(cls, folder: Path) -> dict:
        """Both CLIP encoders (the second with its projection) and their tokenizers."""
        dev, dt = torch.device("cpu"), torch.float32  # SDUNet.load places them afterwards
        check_safetensors(folder, ["unet", "vae", "text_encoder", "text_encoder_2"])
        te1, tok1 = load_text(folder, "text_encoder", "tokenizer", dev, dt, "CLIPTextModel")
        te2, tok2 = load_text(folder, "text_encoder_2", "tokenizer_2", dev, dt, "CLIPTextModelWithProjection")
        if te1 is None or te2 is None:
            raise ModelError(f"{folder} lacks text_encoder/ + tokenizer/ or text_encoder_2/ + tokenizer_2/; an SDXL "
                             "folder needs both CLIP text encoders (download the whole repo)")
        return {"text_encoder": te1, "tokenizer": tok1, "text_encoder_2": te2, "tokenizer_2": tok2}

    @torch.inference_mode()
    def prompt_embedding(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt alone (memoised): hidden states (L, D1 + D2) and the pooled projection (P,)."""
        if prompt not in self._prompt_memo:
            hidden = []
            for enc, tok in ((self.text_encoder, self.tokenizer), (self.text_encoder_2, self.tokenizer_2)):
                ids, _ = tokenize(tok, [prompt], self.device)
                out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2][0])  # penultimate layer, (L, D_i)
            pooled = out.text_embeds[0]  # encoder 2's projection, (P,)
            self._prompt_memo[prompt] = (torch.cat(hidden, dim=-1).to(self.dtype), pooled.to(self.dtype))
            self.n_prompts_encoded += 1
            if len(self._prompt_memo) > 4096:
                self._prompt_memo.pop(next(iter(self._prompt_memo)))
        return self._prompt_memo[prompt]

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, Any]:
        embs = [self.prompt_embedding(p) for p in prompts]
        return {"encoder_hidden_states": torch.stack([e[0] for e in embs]),
                "text_embeds": torch.stack([e[1] for e in embs])}

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.noiser is None:
            from diffusers import DDPMScheduler

            self.noiser = DDPMScheduler.from_config({k: v for k, v in self.scheduler.config.items()
                                                     if not k.startswith("_")})
        return self.noiser.add_noise(x0.float(), noise, t.cpu() if self.device.type == "mps" else t)

    def call_model(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> Any:
        b, _, h, w = x_t.shape
        s = self.resolution // int(self.unet.config.sample_size if isinstance(self.unet.config.sample_size, int)
                                   else self.unet.config.sample_size[0])
        hh, ww = h * s, w * s  # the pixel size the latents came from
        time_ids = torch.tensor([[hh, ww, 0, 0, hh, ww]], device=self.device, dtype=self.dtype).repeat(b, 1)
        added = {"text_embeds": cond["text_embeds"], "time_ids": time_ids}
        return self.unet(x_t.to(self.dtype), t, encoder_hidden_states=cond["encoder_hidden_states"],
                         added_cond_kwargs=added, return_dict=False)
