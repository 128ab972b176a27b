"""Tiny random models of every family, saved in the family's real Hub folder layout (no download).

Each ``make_tiny_<family>(folder)`` builds seeded random modules from configs (30K-400K parameters), saves
them with ``save_pretrained`` (safetensors) exactly where the real Hub repo keeps them, and returns the
folder, which then loads offline through the public loader. Used by tests/test_families.py and the
families benchmark. Each builds in well under a second on one CPU thread.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Callable

import torch

from core.testing import make_tokenizer

# --------------------------------------------------------------------------------------- parts


def _vae(latent_channels: int = 4, scaling_factor: float = 0.18215, shift_factor: float | None = None):
    """A tiny AutoencoderKL with 4 px per latent cell (32 px images -> 8x8 latents)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8,
                         sample_size=32, scaling_factor=scaling_factor, shift_factor=shift_factor)


def _ddpm_scheduler(cls_name: str = "DDIMScheduler"):
    import diffusers

    return getattr(diffusers, cls_name)(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                        beta_schedule="linear")


def _clip_text(tok, hidden: int, with_projection: bool, projection_dim: int = 16, seed: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=tok.model_max_length, bos_token_id=0,
                         eos_token_id=1, pad_token_id=1, projection_dim=projection_dim)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def make_t5_tokenizer(max_length: int = 8):
    """A tiny T5 tokenizer (Unigram over characters, built with `tokenizers`, no sentencepiece needed); saves
    as tokenizer.json as transformers 5 does for the real ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in string.ascii_lowercase + string.digits + ".,'-{}"]
    pieces += [("\u2581" + c, -1.5) for c in string.ascii_lowercase]
    tk = Tokenizer(models.Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    from tokenizers.processors import TemplateProcessing

    tk.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _t5(tok, d_model: int = 32, seed: int = 3):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _index(folder: Path, pipeline: str, parts: dict[str, tuple[str, str] | None]) -> None:
    d = {"_class_name": pipeline, "_diffusers_version": "0.42.1"}
    d.update({k: list(v) if v else [None, None] for k, v in parts.items()})
    (folder / "model_index.json").write_text(json.dumps(d, indent=1))


# ----------------------------------------------------------------------------------- diffusers


def make_tiny_dit(folder: str | Path, legacy: bool = False) -> Path:
    """DiT: transformer/ (DiTTransformer2DModel, 4 blocks, 1000 classes + null), vae/, scheduler/,
    model_index.json with id2label. ``legacy``: the config says "Transformer2DModel" as facebook/DiT-XL-2-* do."""
    from diffusers import DiTTransformer2DModel

    folder = Path(folder)
    torch.manual_seed(0)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                               num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                               norm_num_groups=8)
    tr.save_pretrained(folder / "transformer", safe_serialization=True)
    if legacy:
        p = folder / "transformer" / "config.json"
        cfg = json.loads(p.read_text())
        cfg["_class_name"] = "Transformer2DModel"
        p.write_text(json.dumps(cfg, indent=1))
    _vae().save_pretrained(folder / "vae", safe_serialization=True)
    _ddpm_scheduler("DDIMScheduler").save_pretrained(folder / "scheduler")
    _index(folder, "DiTPipeline", {"transformer": ("diffusers", "Transformer2DModel" if legacy else
                                                   "DiTTransformer2DModel"),
                                   "vae": ("diffusers", "AutoencoderKL"), "scheduler": ("diffusers", "DDIMScheduler")})
    idx = json.loads((folder / "model_index.json").read_text())
    idx["id2label"] = {str(i): f"class {i}" for i in range(1000)}
    (folder / "model_index.json").write_text(json.dumps(idx, indent=1))
    return folder


def make_tiny_sdxl(folder: str | Path) -> Path:
    """SDXL: unet/ (text_time additions), two CLIP text encoders (the second with projection), vae/ with SDXL's
    scaling factor, EulerDiscreteScheduler."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    folder = Path(folder)
    tok1, tok2 = make_tokenizer(folder), make_tokenizer(folder)
    te1 = _clip_text(tok1, 16, with_projection=False, seed=2)
    te2 = _clip_text(tok2, 32, with_projection=True, projection_dim=16, seed=3)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16 + 32, attention_head_dim=4,
        transformer_layers_per_block=1, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16, use_linear_projection=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    _vae(scaling_factor=0.13025).save_pretrained(folder / "vae", safe_serialization=True)
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")
    te1.save_pretrained(folder / "text_encoder", safe_serialization=True)
    te2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    tok1.save_pretrained(folder / "tokenizer")
    tok2.save_pretrained(folder / "tokenizer_2")
    _index(folder, "StableDiffusionXLPipeline", {
        "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
        "scheduler": ("diffusers", "EulerDiscreteScheduler"), "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer")})
    return folder


def make_tiny_sd3(folder: str | Path, with_t5: bool = False) -> Path:
    """SD3 / 3.5: transformer/ (SD3Transformer2DModel, 3 joint blocks), two CLIP encoders with projection,
    optional T5 (text_encoder_3/, tokenizer_3/), 16-channel VAE with shift and scale, flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    folder = Path(folder)
    tok1, tok2 = make_tokenizer(folder), make_tokenizer(folder)
    te1 = _clip_text(tok1, 16, with_projection=True, projection_dim=16, seed=2)
    te2 = _clip_text(tok2, 32, with_projection=True, projection_dim=16, seed=3)
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
                               num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                               pooled_projection_dim=32, out_channels=16, pos_embed_max_size=16)
    tr.save_pretrained(folder / "transformer", safe_serialization=True)
    _vae(16, scaling_factor=1.5305, shift_factor=0.0609).save_pretrained(folder / "vae", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")
    te1.save_pretrained(folder / "text_encoder", safe_serialization=True)
    te2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    tok1.save_pretrained(folder / "tokenizer")
    tok2.save_pretrained(folder / "tokenizer_2")
    parts = {"transformer": ("diffusers", "SD3Transformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
             "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
             "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
             "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
             "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer"),
             "text_encoder_3": None, "tokenizer_3": None}
    if with_t5:
        tok3 = make_t5_tokenizer(8)
        _t5(tok3, d_model=64).save_pretrained(folder / "text_encoder_3", safe_serialization=True)
        tok3.save_pretrained(folder / "tokenizer_3")
        parts.update(text_encoder_3=("transformers", "T5EncoderModel"), tokenizer_3=("transformers", "T5TokenizerFast"))
    _index(folder, "StableDiffusion3Pipeline", parts)
    return folder


def make_tiny_flux(folder: str | Path, guidance: bool = False) -> Path:
    """FLUX.1: transformer/ (2 double + 2 single blocks; ``guidance`` as in -dev), CLIP (pooled) + T5 text,
    16-channel VAE with shift and scale, flow-matching scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    folder = Path(folder)
    tok1 = make_tokenizer(folder)
    te1 = _clip_text(tok1, 16, with_projection=False, seed=2)
    tok2 = make_t5_tokenizer(8)
    te2 = _t5(tok2, d_model=32)
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    tr.save_pretrained(folder / "transformer", safe_serialization=True)
    _vae(16, scaling_factor=0.3611, shift_factor=0.1159).save_pretrained(folder / "vae", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(folder / "scheduler")
    te1.save_pretrained(folder / "text_encoder", safe_serialization=True)
    te2.save_pretrained(folder / "text_encoder_2", safe_serialization=True)
    tok1.save_pretrained(folder / "tokenizer")
    tok2.save_pretrained(folder / "tokenizer_2")
    _index(folder, "FluxPipeline", {
        "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"), "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "T5EncoderModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
        "tokenizer_2": ("transformers", "T5TokenizerFast")})
    return folder


def make_tiny_pixart(folder: str | Path) -> Path:
    """PixArt-alpha/sigma: transformer/ (PixArtTransformer2DModel, 4 blocks, with the resolution and aspect-ratio
    conditions), T5 text encoder, vae/, scheduler/."""
    from diffusers import PixArtTransformer2DModel

    folder = Path(folder)
    tok = make_t5_tokenizer(8)
    te = _t5(tok, d_model=32)
    torch.manual_seed(0)
    # resolution and aspect-ratio conditions on, as PixArt-alpha 1024 (their embedders need a width divisible by 3)
    tr = PixArtTransformer2DModel(num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8,
                                  num_layers=4, cross_attention_dim=24, sample_size=8, patch_size=2,
                                  caption_channels=32, use_additional_conditions=True, norm_num_groups=8)
    tr.save_pretrained(folder / "transformer", safe_serialization=True)
    _vae().save_pretrained(folder / "vae", safe_serialization=True)
    _ddpm_scheduler("DPMSolverMultistepScheduler").save_pretrained(folder / "scheduler")
    te.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tok.save_pretrained(folder / "tokenizer")
    _index(folder, "PixArtSigmaPipeline", {
        "transformer": ("diffusers", "PixArtTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
        "scheduler": ("diffusers", "DPMSolverMultistepScheduler"), "text_encoder": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "T5TokenizerFast")})
    return folder


def make_tiny_ddpm(folder: str | Path, layout: str = "flat") -> Path:
    """Pixel-space DDPM (UNet2DModel, 16 px): ``flat`` as google/ddpm-cifar10-32 (config.json,
    diffusion_pytorch_model.safetensors and scheduler_config.json at the root) or ``pipeline`` (unet/,
    scheduler/, model_index.json)."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    if layout == "flat":
        unet.save_pretrained(folder, safe_serialization=True)
        sched.save_pretrained(folder)
    elif layout == "pipeline":
        unet.save_pretrained(folder / "unet", safe_serialization=True)
        sched.save_pretrained(folder / "scheduler")
        _index(folder, "DDPMPipeline", {"unet": ("diffusers", "UNet2DModel"), "scheduler": ("diffusers", "DDPMScheduler")})
    else:
        raise ValueError(f"layout must be 'flat' or 'pipeline', got {layout!r}")
    return folder


# ---------------------------------------------------------------------------------- transformers


def make_tiny_clip(folder: str | Path) -> Path:
    """A full CLIPModel repo (text + vision towers, as openai/clip-vit-base-patch16) with its image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                        image_size=32, patch_size=8),
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_tiny_siglip(folder: str | Path) -> Path:
    """A full SiglipModel repo (as google/siglip-base-patch16-224) with its image processor."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = Path(folder)
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                          num_attention_heads=4, image_size=32, patch_size=8))
    SiglipModel(cfg).save_pretrained(folder, safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_tiny_dinov2(folder: str | Path, registers: int = 0) -> Path:
    """Dinov2Model (as facebook/dinov2-base) or, with ``registers``, Dinov2WithRegistersModel, with the BitImageProcessor."""
    from transformers import BitImageProcessor

    folder = Path(folder)
    torch.manual_seed(0)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8)
    if registers:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        from transformers import Dinov2Config, Dinov2Model

        model = Dinov2Model(Dinov2Config(**kw))
    model.save_pretrained(folder, safe_serialization=True)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_convert_rgb=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def make_tiny_mae(folder: str | Path) -> Path:
    """ViTMAEForPreTraining (as facebook/vit-mae-base, mask ratio 0.75 in its config) with its ViTImageProcessor."""
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    folder = Path(folder)
    torch.manual_seed(0)
    cfg = ViTMAEConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                       patch_size=8, decoder_hidden_size=16, decoder_intermediate_size=32, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, mask_ratio=0.75)
    ViTMAEForPreTraining(cfg).save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------- index

# family -> builder of its tiny model (the one every per-family test and bench row uses)
TINY: dict[str, Callable[[Path], Path]] = {
    "dit": make_tiny_dit,
    "dit-legacy": lambda f: make_tiny_dit(f, legacy=True),
    "sdxl": make_tiny_sdxl,
    "sd3": make_tiny_sd3,
    "sd3-t5": lambda f: make_tiny_sd3(f, with_t5=True),
    "flux": make_tiny_flux,
    "flux-dev": lambda f: make_tiny_flux(f, guidance=True),
    "pixart": make_tiny_pixart,
    "ddpm": make_tiny_ddpm,
    "ddpm-pipeline": lambda f: make_tiny_ddpm(f, layout="pipeline"),
    "clip": make_tiny_clip,
    "siglip": make_tiny_siglip,
    "dinov2": make_tiny_dinov2,
    "dinov2-registers": lambda f: make_tiny_dinov2(f, registers=4),
    "mae": make_tiny_mae,
}


def make_tiny(kind: str, folder: str | Path) -> Path:
    """Build the tiny model ``kind`` (a key of :data:`TINY`) into ``folder``."""
    if kind not in TINY:
        raise ValueError(f"unknown tiny model {kind!r}; choose from {', '.join(TINY)}")
    from core.backbones.common import quiet

    quiet()  # no progress bars or load reports from save_pretrained
    with torch.random.fork_rng():
        return TINY[kind](Path(folder))
