"""Helpers the family files share: reading a Hub folder's configs, safetensors-only loading, the VAE latent
convention, DDPM and flow-matching noising, and a per-prompt memo for text encoders.

Nothing here names a family: each family file (dit.py, sd3.py, ...) composes these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from core.backbones.base import ExtractionError, ModelError, Request, image_noise

NOISE_MODES_CLEAN = ("noised", "clean")


# ------------------------------------------------------------------------------------ folder facts


def read_json(path: Path) -> dict | None:
    """A JSON file as a dict, or None when it is missing or not a JSON object."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def index_class(folder: Path) -> str | None:
    """``_class_name`` of the folder's model_index.json (a diffusers pipeline), if any."""
    d = read_json(Path(folder) / "model_index.json")
    return d.get("_class_name") if d else None


def config_of(folder: Path, sub: str | None = None) -> dict | None:
    """``config.json`` of ``folder/sub`` (or of the folder itself)."""
    return read_json(Path(folder) / sub / "config.json" if sub else Path(folder) / "config.json")


def class_name(folder: Path, sub: str | None = None) -> str | None:
    d = config_of(folder, sub)
    return d.get("_class_name") if d else None


def check_safetensors(folder: Path, subs: Sequence[str | None]) -> None:
    """Refuse pickle-only weights with the fix."""
    for sub in subs:
        d = Path(folder) / sub if sub else Path(folder)
        if d.is_dir() and not any(d.glob("*.safetensors")) and (any(d.glob("*.bin")) or any(d.glob("*.pt*"))):
            raise ModelError(
                f"{d} holds only pickle weights (.bin/.pt); DomainLens loads safetensors only. Convert once on a "
                "trusted machine: load it with diffusers/transformers and save_pretrained(..., "
                "safe_serialization=True), or download the repo's safetensors files.")


def loading(what: str, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run a from_pretrained call, turning file errors into a :class:`ModelError` that names the folder."""
    try:
        return fn()
    except (OSError, FileNotFoundError, EnvironmentError) as e:
        raise ModelError(f"could not load the {what} in {folder}: {e}") from e


def identity(folder: Path) -> str:
    """Content hash of the folder's weights, configs and tokenizer files (the registry's)."""
    from core.backbones.registry import folder_identity  # the registry imports the family files

    return folder_identity(folder)


def quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # load reports list the unused text tower of CLIP repos


KW = dict(use_safetensors=True, local_files_only=True)


def place(module: torch.nn.Module | None, device: torch.device, dtype: torch.dtype) -> Any:
    """eval mode, no grads, on ``device`` in ``dtype`` (float modules only)."""
    if module is None:
        return None
    module.eval().requires_grad_(False)
    module.to(device)
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)  # diffusers models were loaded in ``dtype`` already (a cast here warns)
    return module


# --------------------------------------------------------------------------------------- VAE


def load_vae(folder: Path, device: torch.device, dtype: torch.dtype, sub: str = "vae"):
    """The folder's AutoencoderKL in fp32 when the model runs in fp16 (SD/SDXL VAEs overflow there), else in
    the model's dtype; None when the folder has no vae/."""
    if not (Path(folder) / sub).is_dir():
        return None
    from diffusers import AutoencoderKL

    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    vae = loading("VAE", folder, lambda: AutoencoderKL.from_pretrained(folder, subfolder=sub, torch_dtype=vae_dtype,
                                                                         **KW))
    return place(vae, device, vae_dtype)


def vae_scale(vae) -> int:
    """Pixels per latent cell (8 for SD VAEs)."""
    return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1


@torch.inference_mode()
def vae_latents(vae, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> ``(mode - shift_factor) * scaling_factor`` (B, c, H/s, W/s) in ``dtype``."""
    vdt = next(vae.parameters()).dtype
    z = vae.encode(pixels.to(device, vdt)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z.float() - shift) * vae.config.scaling_factor).to(dtype)


# ------------------------------------------------------------------------------------- noise


def check_timestep(timestep: int, n: int) -> int:
    if isinstance(timestep, bool) or int(timestep) != timestep:
        raise ExtractionError(f"`timestep` must be an integer, got {timestep!r}")
    if not 0 <= int(timestep) < n:
        raise ExtractionError(f"`timestep` must be in [0, {n - 1}] for this scheduler, got {timestep}")
    return int(timestep)


def check_noise_mode(request: Request, modes: Sequence[str]) -> None:
    if request.noise_mode not in modes:
        raise ExtractionError(f"noise mode {request.noise_mode!r} is not offered by this model; use one of "
                            f"{', '.join(modes)}")


def scheduler_timesteps(folder: Path, sub: str = "scheduler") -> int:
    """``num_train_timesteps`` of the folder's scheduler config (1000 when it does not say)."""
    return int((read_json(Path(folder) / sub / "scheduler_config.json") or {}).get("num_train_timesteps", 1000))


def ddpm_noiser(folder: Path, sub: str | None = "scheduler"):
    """A DDPMScheduler built from the folder's scheduler config (its betas), used only for ``add_noise``:
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. (EulerDiscreteScheduler.add_noise would return the
    unscaled x0 + sigma eps.)"""
    from diffusers import DDPMScheduler

    d = Path(folder) / sub if sub else Path(folder)
    cfg = read_json(d / "scheduler_config.json")
    if cfg is None:
        raise ModelError(f"{d} has no scheduler_config.json; the folder is incomplete (download the whole repo)")
    keep = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(keep)


def ddpm_noised(noiser, x0: torch.Tensor, image_ids: Sequence[str], request: Request, draw: int,
                timesteps: torch.Tensor) -> torch.Tensor:
    """x_t for one noise draw (noise seeded per image on the CPU), float32 on x0's device."""
    noise = image_noise(x0.shape[1:], request.seed, image_ids, draw).to(x0.device)
    return noiser.add_noise(x0.float(), noise, timesteps.cpu() if x0.device.type == "mps" else timesteps)


def flow_noised(x0: torch.Tensor, image_ids: Sequence[str], request: Request, draw: int, sigma: float
                ) -> torch.Tensor:
    """Rectified-flow noising x_t = (1 - sigma) x0 + sigma eps (SD3, FLUX), float32."""
    noise = image_noise(x0.shape[1:], request.seed, image_ids, draw).to(x0.device)
    return (1.0 - sigma) * x0.float() + sigma * noise


def key_without_noise(key: dict, noise_mode: str) -> dict:
    """In "clean" mode nothing is drawn: seed and ensemble do not change a feature, so not the key either."""
    if noise_mode == "clean":
        key = dict(key, seed=None, ensemble=1)
    return key


# ------------------------------------------------------------------------------------- prompts


class PromptMemo:
    """Encodes each distinct prompt once, alone (``encode([prompt]) -> tuple of (1, ...) tensors``), and stacks
    the memoised rows for a batch."""

    def __init__(self, encode: Callable[[list[str]], tuple[torch.Tensor, ...]]):
        self.encode = encode
        self.memo: dict[str, tuple[torch.Tensor, ...]] = {}

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, ...]:
        for p in dict.fromkeys(prompts):
            if p not in self.memo:  # each prompt alone, so it never depends on the others in a batch
                with torch.inference_mode():
                    self.memo[p] = tuple(o[0] for o in self.encode([p]))
                if len(self.memo) > 4096:  # bounded: drop the oldest
                    self.memo.pop(next(iter(self.memo)))
        n = len(self.memo[prompts[0]])
        return tuple(torch.stack([self.memo[p][k] for p in prompts]) for k in range(n))


def batch_prompts(request: Request, n: int) -> list[str]:
    """One prompt per image: the request's, or the empty prompt."""
    prompts = list(request.prompts) if request.prompts else [""] * n
    if len(prompts) != n:
        raise ExtractionError(f"got {len(prompts)} prompts for {n} images; pass one per image")
    return prompts


def tokenize(tokenizer, prompts: Sequence[str], device: torch.device, max_length: int | None = None):
    """Pad to the tokenizer's max length (as the pipelines do): ``(input_ids, attention_mask)``."""
    tok = tokenizer(list(prompts), padding="max_length", max_length=max_length or tokenizer.model_max_length,
                    truncation=True, return_tensors="pt")
    return tok.input_ids.to(device), tok.attention_mask.to(device)
