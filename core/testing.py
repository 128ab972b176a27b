"""Tiny random Stable-Diffusion-format models for tests and benchmarks (no download).

``make_tiny_sd(folder)`` builds a seeded UNet2DConditionModel + AutoencoderKL + CLIPTextModel +
CLIPTokenizer + DDIMScheduler from configs and ``save_pretrained``s them as a diffusers folder, which
then loads through the real loader (:func:`core.backbones.registry.load_backbone`).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch


def make_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer (no merges) saved in ``folder``."""
    from transformers import CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + "{}.,'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=16, pad_token="<|endoftext|>")
    return tok


def make_tiny_sd(folder: str | Path, seed: int = 0, sample_size: int = 8, with_text: bool = True,
                 with_vae: bool = True) -> Path:
    """Save a tiny random SD-format model (32 px images -> 8x8x4 latents) into ``folder``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4 if with_vae else 3, out_channels=4 if with_vae else 3,
        layers_per_block=1, block_out_channels=(16, 32, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    if with_vae:
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=1, norm_num_groups=8, sample_size=sample_size * 8)
        vae.save_pretrained(folder / "vae", safe_serialization=True)
        index["vae"] = ["diffusers", "AutoencoderKL"]
    if with_text:
        torch.manual_seed(seed + 2)
        tok = make_tokenizer(folder)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                          bos_token_id=0, eos_token_id=1, pad_token_id=1))
        te.save_pretrained(folder / "text_encoder", safe_serialization=True)
        tok.save_pretrained(folder / "tokenizer")
        index["text_encoder"] = ["transformers", "CLIPTextModel"]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def sd_sized_unet_config(resolution: int = 512) -> dict:
    """The SD-2.1-base UNet's architecture (865M params) for random-weight speed benchmarks."""
    return dict(sample_size=resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)


def make_domainbed(root: str | Path, domains=("art", "photo"), classes=("cat", "dog"), per_cell: int = 2,
                   sizes=((64, 64),), seed: int = 0) -> Path:
    """A small DomainBed folder ``root/<domain>/<class>/img<i>.png`` of seeded random-texture images; image k
    (in domain, class, index order) has size ``sizes[k % len(sizes)]`` as (width, height)."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    k = 0
    for d in domains:
        for c in classes:
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_cell):
                w, h = sizes[k % len(sizes)]
                k += 1
                Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / d / c / f"img{i}.png")
    return root
