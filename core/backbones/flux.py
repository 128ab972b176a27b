"""FLUX.1 (schnell, dev): ``FluxTransformer2DModel`` double-stream then single-stream blocks.

Path of one image (FLUX.1 at 1024 px in comments)::

    image -> resize + center crop, [-1, 1]                               (3, 1024, 1024)
    x0 = (vae.encode(x).mode - shift_factor) * scaling_factor            (16, 128, 128)
    sigma = t / num_train_timesteps;  x_t = (1 - sigma) x0 + sigma eps   (flow matching, eps seeded per image)
    packed: 2x2 latent patches -> tokens                                  (4096, 64), img_ids (4096, 3)
    transformer(packed, timestep = sigma (scaled inside), text, pooled, guidance for -dev)
      hooks on transformer_blocks.i (double) and single_transformer_blocks.i; both return
      (text_stream, image_stream): the image stream (B, 4096, 3072) -> mean over tokens

Text: T5 (``text_encoder_2``) hidden states (512 rows for dev, 256 for schnell; zeros when the folder has no
T5) and the CLIP pooled output (``text_encoder``). ``guidance`` (dev only, ``guidance_embeds``) is 3.5, the
pipeline's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, Conditioning, ExtractionError, ModelError, Request
from core.backbones.common import (identity, PromptMemo, batch_prompts, check_noise_mode, check_safetensors, check_timestep,
                                   class_name, flow_noised, index_class, load_vae, place, pretrained, quiet,
                                   scheduler_timesteps, tokenize, vae_latents, vae_scale)
from core.backbones.sd3 import load_text

PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline")
CLASSES = ("FluxTransformer2DModel",)
GUIDANCE = 3.5
T5_ROWS = {True: 512, False: 256}  # dev (guidance_embeds) / schnell


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches, row-major (as FluxPipeline)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h2: int, w2: int, device, dtype) -> torch.Tensor:
    """(h2 * w2, 3) position ids [0, row, col] of the packed tokens (no batch dim)."""
    ids = torch.zeros(h2, w2, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h2, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w2, device=device, dtype=dtype)[None, :]
    return ids.reshape(h2 * w2, 3)


@dataclass(eq=False)
class FluxBackbone(Backbone):
    family: ClassVar[str] = "flux"
    family_label: ClassVar[str] = "FLUX.1 (double- and single-stream transformer)"
    conditioned_on: ClassVar[str] = "timestep (flow matching), prompt"
    hub_examples: ClassVar[tuple[str, ...]] = ("black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev")

    transformer: Any = None
    vae: Any = None
    text: tuple = ()  # ((CLIP encoder, tokenizer), (T5 encoder, tokenizer) or (None, None))
    prompt_memo: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return index_class(Path(folder)) in PIPELINES or class_name(Path(folder), "transformer") in CLASSES

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "FluxBackbone":
        from diffusers import FluxTransformer2DModel

        quiet()
        folder = Path(folder)
        check_safetensors(folder, ["transformer", "vae"])
        tr = pretrained("FLUX transformer", folder, FluxTransformer2DModel, subfolder="transformer", torch_dtype=dtype)
        place(tr, device, dtype)
        vae = load_vae(folder, device, dtype)
        if vae is None:
            raise ModelError(f"{folder} has no vae/; a FLUX folder needs transformer/, vae/, scheduler/, "
                                "text_encoder/ and tokenizer/ (download the whole repo)")
        clip = load_text(folder, "text_encoder", "tokenizer", device, dtype, "CLIPTextModel")
        if clip[0] is None:
            raise ModelError(f"{folder} lacks text_encoder/ + tokenizer/ (the CLIP encoder FLUX's pooled "
                                "projection needs; only T5, text_encoder_2/, may be left out)")
        t5 = load_text(folder, "text_encoder_2", "tokenizer_2", device, dtype, "T5EncoderModel")
        layers = ([f"transformer_blocks.{i}" for i in range(len(tr.transformer_blocks))]
                  + [f"single_transformer_blocks.{i}" for i in range(len(tr.single_transformer_blocks))])
        # the default: the middle block in execution order
        cond = Conditioning(timestep=True, prompt=True, num_train_timesteps=scheduler_timesteps(folder))
        # FLUX's native 1024 px (128 latent cells, the pipeline's default) with its 8x VAE; with the smaller
        # VAEs of test models, 8 latent cells
        res = 1024 if vae_scale(vae) >= 8 else 8 * vae_scale(vae)
        bb = cls(name=name, identity=identity(folder), device=device, dtype=dtype, resolution=res, layers=layers,
                 default_layer=layers[len(layers) // 2], conditioning=cond, root=tr,
                 info={"folder": str(folder), "t5": t5[0] is not None,
                       "guidance": GUIDANCE if tr.config.guidance_embeds else None},
                 transformer=tr, vae=vae, text=(clip, t5))
        bb.prompt_memo = PromptMemo(bb._encode_prompts)
        return bb

    def layer_output(self, layer: str, output: Any) -> torch.Tensor:
        return output[1]  # (text_stream, image_stream)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        s = 2 * vae_scale(self.vae)
        if pixels.shape[-1] % s or pixels.shape[-2] % s:
            raise ExtractionError(f"FLUX needs a resolution divisible by {s}, got {tuple(pixels.shape[-2:])}")
        return vae_latents(self.vae, pixels, self.device, self.dtype)

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        (clip, clip_tok), (t5, t5_tok) = self.text
        ids, _ = tokenize(clip_tok, prompts, self.device)
        pooled = clip(ids).pooler_output  # (P, 768)
        joint = int(self.transformer.config.joint_attention_dim)
        rows = T5_ROWS[bool(self.transformer.config.guidance_embeds)]
        if t5 is not None:
            ids, _ = tokenize(t5_tok, prompts, self.device, min(rows, t5_tok.model_max_length))
            text = t5(ids)[0]  # (P, rows, 4096)
        else:
            text = torch.zeros(len(prompts), rows, joint, device=self.device)
        return text.to(self.dtype), pooled.to(self.dtype)

    def forward_features(self, x0: torch.Tensor, image_ids_: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        check_noise_mode(request, self.conditioning.noise_modes)
        n = self.num_train_timesteps
        sigma = check_timestep(request.timestep, n) / n
        b, _, h, w = x0.shape
        text, pooled = self.prompt_memo(batch_prompts(request, b))
        x0 = x0.to(self.device)
        tt = torch.full((b,), sigma, device=self.device, dtype=self.dtype)
        img_ids = image_ids(h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = (torch.full((b,), GUIDANCE, device=self.device, dtype=torch.float32)
                    if self.transformer.config.guidance_embeds else None)

        def one_draw(draw: int):
            x = pack(flow_noised(x0, image_ids_, request, draw, sigma)).to(self.dtype)  # (B, N, 4C)
            call = lambda: self.transformer(x, encoder_hidden_states=text, pooled_projections=pooled,  # noqa: E731
                                            timestep=tt, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                                            return_dict=False)
            return self.run_hooked(call, layers, early_exit=early_exit, pool_fn=pool_fn)

        return self.averaged(request, one_draw)
