"""Stable Diffusion 3 / 3.5 (MMDiT): ``SD3Transformer2DModel`` joint blocks.

Path of one image (SD3-medium at 1024 px in comments)::

    image -> resize + center crop, [-1, 1]                                  (3, 1024, 1024)
    x0 = (vae.encode(x).mode - shift_factor) * scaling_factor               (16, 128, 128)
    sigma = t / num_train_timesteps;  x_t = (1 - sigma) x0 + sigma eps      (flow matching, eps seeded per image)
    transformer(x_t, timestep = sigma * 1000, text, pooled) with hooks on transformer_blocks.i
    each joint block returns (text_stream, image_stream): the image stream (B, 4096, 1536) -> mean over tokens

Text: the two CLIP encoders' penultimate hidden states concatenated (77, 768 + 1280), zero-padded to the
joint dim (4096) and followed by the T5 rows (256); with no T5 in the folder (``text_encoder_3``) the T5
rows are zeros, as the pipeline does without it. Pooled: both CLIP projections concatenated (2048).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, ModelError, Conditioning, Request
from core.backbones.common import (identity, PromptMemo, batch_prompts, check_noise_mode, check_safetensors, check_timestep,
                                   class_name, config_of, flow_noised, scheduler_timesteps, index_class, load_vae, place, pretrained, quiet,
                                   tokenize, vae_latents, vae_scale)

PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
CLASSES = ("SD3Transformer2DModel",)
T5_ROWS = 256  # the pipeline's default max_sequence_length


def load_text(folder: Path, enc: str, tok: str, device, dtype, enc_default: str):
    """A transformers text encoder and its tokenizer from subfolders, or (None, None) when absent."""
    import transformers
    from transformers import AutoTokenizer

    if not (Path(folder) / enc).is_dir() or not (Path(folder) / tok).is_dir():
        return None, None
    check_safetensors(folder, [enc])
    arch = ((config_of(folder, enc) or {}).get("architectures") or [enc_default])[0]
    model_cls = getattr(transformers, arch, None) or getattr(transformers, enc_default)
    model = pretrained(f"text encoder {enc}", folder, model_cls, subfolder=enc)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, subfolder=tok, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"could not load the tokenizer in {Path(folder) / tok}: {e}. T5 tokenizers saved as "
                            "spiece.model only need `pip install sentencepiece protobuf`.") from e
    return place(model, device, dtype), tokenizer


@dataclass(eq=False)
class SD3Backbone(Backbone):
    family: ClassVar[str] = "sd3"
    family_label: ClassVar[str] = "Stable Diffusion 3 / 3.5 (MMDiT)"
    conditioned_on: ClassVar[str] = "timestep (flow matching), prompt"
    hub_examples: ClassVar[tuple[str, ...]] = ("stabilityai/stable-diffusion-3-medium-diffusers",
                                               "stabilityai/stable-diffusion-3.5-medium")

    transformer: Any = None
    vae: Any = None
    text: tuple = ()  # ((encoder, tokenizer) x 3; T5 may be (None, None))
    prompt_memo: Any = None

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return index_class(Path(folder)) in PIPELINES or class_name(Path(folder), "transformer") in CLASSES

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "SD3Backbone":
        from diffusers import SD3Transformer2DModel

        quiet()
        folder = Path(folder)
        check_safetensors(folder, ["transformer", "vae"])
        tr = pretrained("SD3 transformer", folder, SD3Transformer2DModel, subfolder="transformer", torch_dtype=dtype)
        place(tr, device, dtype)
        vae = load_vae(folder, device, dtype)
        if vae is None:
            raise ModelError(f"{folder} has no vae/; an SD3 folder needs transformer/, vae/, scheduler/ and the "
                                "CLIP text encoders (download the whole repo)")
        text = tuple(load_text(folder, f"text_encoder{s}", f"tokenizer{s}", device, dtype, d)
                     for s, d in (("", "CLIPTextModelWithProjection"), ("_2", "CLIPTextModelWithProjection"),
                                  ("_3", "T5EncoderModel")))
        if text[0][0] is None or text[1][0] is None:
            raise ModelError(f"{folder} lacks text_encoder/ + tokenizer/ or text_encoder_2/ + tokenizer_2/ (the "
                                "two CLIP encoders SD3 needs; only T5, text_encoder_3/, may be left out)")
        layers = [f"transformer_blocks.{i}" for i in range(len(tr.transformer_blocks))]
        n_t = scheduler_timesteps(folder)
        cond = Conditioning(timestep=True, prompt=True, num_train_timesteps=n_t)
        bb = cls(name=name, identity=identity(folder), device=device, dtype=dtype,
                 resolution=int(tr.config.sample_size) * vae_scale(vae), layers=layers,
                 default_layer=layers[len(layers) // 2], conditioning=cond, root=tr,
                 info={"folder": str(folder), "t5": text[2][0] is not None}, transformer=tr, vae=vae, text=text)
        bb.prompt_memo = PromptMemo(bb._encode_prompts)
        return bb

    def layer_output(self, layer: str, output: Any) -> torch.Tensor:
        return output[1]  # (text_stream, image_stream); the last block's text stream is None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return vae_latents(self.vae, pixels, self.device, self.dtype)

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 77 + T5 rows, joint_dim) text embeddings and (P, pooled_dim) pooled projections."""
        joint = int(self.transformer.config.joint_attention_dim)
        hidden, pooled = [], []
        for enc, tok in self.text[:2]:
            ids, _ = tokenize(tok, prompts, self.device)
            out = enc(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # penultimate layer, (P, 77, D_i)
            pooled.append(out.text_embeds)  # (P, proj_i)
        clip = torch.cat(hidden, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, joint - clip.shape[-1]))  # (P, 77, joint)
        t5_enc, t5_tok = self.text[2]
        if t5_enc is not None:
            ids, _ = tokenize(t5_tok, prompts, self.device, min(T5_ROWS, t5_tok.model_max_length))
            t5 = t5_enc(ids)[0]
        else:  # no T5 in the folder: zero rows, as the pipeline without text_encoder_3
            t5 = torch.zeros(len(prompts), T5_ROWS, joint, device=self.device, dtype=clip.dtype)
        return torch.cat([clip, t5.to(clip.dtype)], dim=1).to(self.dtype), torch.cat(pooled, dim=-1).to(self.dtype)

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        check_noise_mode(request, self.conditioning.noise_modes)
        n = self.num_train_timesteps
        sigma = check_timestep(request.timestep, n) / n
        text, pooled = self.prompt_memo(batch_prompts(request, x0.shape[0]))
        x0 = x0.to(self.device)
        tt = torch.full((x0.shape[0],), sigma * 1000.0, device=self.device, dtype=self.dtype)

        def one_draw(draw: int):
            x = flow_noised(x0, image_ids, request, draw, sigma)
            call = lambda: self.transformer(x.to(self.dtype), encoder_hidden_states=text,  # noqa: E731
                                            pooled_projections=pooled, timestep=tt, return_dict=False)
            return self.run_hooked(call, layers, early_exit=early_exit, pool_fn=pool_fn)

        return self.averaged(request, one_draw)
