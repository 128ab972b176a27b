"""Helpers the family files share: reading a Hub folder's configs, safetensors-only loading, the VAE latent
convention, DDPM and flow-matching noising, and a per-prompt memo for text encoders.

Nothing here names a family: each family file (dit.py, sd3.py, ...) composes these.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from core.backbones.base import ExtractionError, ModelError, Request, image_noise
from core.backbones.identity import folder_identity as identity  # noqa: F401 - the family files' name
from core.safeio import MiB, UnsafeFileError, check_regular_file, read_json_object

NOISE_MODES_CLEAN = ("noised", "clean")


# ------------------------------------------------------------------------------------ folder facts


def read_json(path: Path) -> dict | None:
    """A JSON config as a dict, or None when it is missing or unusable (not a regular file, over
    :data:`CONFIG_MAX_BYTES`, not a JSON object, nested too deep): detection reads leniently and never blocks
    on a FIFO; :func:`check_model_folder` (run before detection) names any such file as the error."""
    try:
        return read_json_object(path, CONFIG_MAX_BYTES, "model config")
    except (OSError, UnsafeFileError):
        return None


# ----------------------------------------------------------------------------- config safety

CONFIG_MAX_BYTES = 4 * MiB  # a model config is a few KB; a 12B model's sharded-weights index ~120 KB
SIDE_FILE_MAX_BYTES = 256 * MiB  # tokenizers, vocabularies, sentencepiece models (the largest real ones ~30 MB)
# read by tokenizers / sentencepiece, not parsed here: regular and size-capped only
TOKENIZER_FILES = {"tokenizer.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json"}
CHECKED_SUFFIXES = {".json", ".safetensors", ".txt", ".model", ".tiktoken"}

_LAYERS = "a layer count; the largest real models use under 100 layers, and each layer is built in memory"
_BLOCKS = "a block count; real UNets have 3 to 6 levels"
_WIDTH = "a width; real models stay far below it, and layers are allocated from it"
_TABLE = "a table size; embeddings of this many rows are allocated from it"
_STEPS = "the scheduler allocates arrays of this length; real models train with 1,000 steps"
_SIZE = "a spatial size; real models use at most a few thousand"
# config key -> (lowest, highest, why): every size a config gives is checked before anything is built from it.
# A list value (e.g. block_out_channels) is checked entry by entry, and its length against ``BLOCK_LISTS``.
SIZE_BOUNDS: dict[str, tuple[int, int, str]] = {
    "layers_per_block": (0, 16, _LAYERS),
    "transformer_layers_per_block": (0, 64, _LAYERS),
    "reverse_transformer_layers_per_block": (0, 64, _LAYERS),
    "num_layers": (0, 256, _LAYERS),
    "num_single_layers": (0, 256, _LAYERS),
    "num_hidden_layers": (0, 256, _LAYERS),
    "num_decoder_layers": (0, 256, _LAYERS),
    "decoder_num_hidden_layers": (0, 256, _LAYERS),
    "block_out_channels": (1, 16_384, _WIDTH),
    "channels": (1, 16_384, _WIDTH),
    "in_channels": (1, 16_384, _WIDTH),
    "out_channels": (1, 16_384, _WIDTH),
    "latent_channels": (1, 16_384, _WIDTH),
    "num_channels": (1, 16_384, _WIDTH),
    "norm_num_groups": (1, 16_384, _WIDTH),
    "hidden_size": (1, 65_536, _WIDTH),
    "intermediate_size": (1, 262_144, _WIDTH),
    "decoder_hidden_size": (1, 65_536, _WIDTH),
    "decoder_intermediate_size": (1, 262_144, _WIDTH),
    "d_model": (1, 65_536, _WIDTH),
    "d_ff": (1, 262_144, _WIDTH),
    "d_kv": (1, 65_536, _WIDTH),
    "cross_attention_dim": (1, 65_536, _WIDTH),
    "joint_attention_dim": (1, 65_536, _WIDTH),
    "pooled_projection_dim": (1, 65_536, _WIDTH),
    "caption_channels": (1, 65_536, _WIDTH),
    "projection_dim": (1, 65_536, _WIDTH),
    "projection_class_embeddings_input_dim": (1, 65_536, _WIDTH),
    "time_embedding_dim": (1, 65_536, _WIDTH),
    "addition_time_embed_dim": (1, 65_536, _WIDTH),
    "attention_head_dim": (1, 65_536, _WIDTH),
    "num_attention_heads": (1, 4_096, _WIDTH),
    "vocab_size": (1, 1_048_576, _TABLE),
    "max_position_embeddings": (1, 1_048_576, _TABLE),
    "num_embeds_ada_norm": (1, 1_048_576, _TABLE),
    "num_class_embeds": (1, 1_048_576, _TABLE),
    "num_classes": (1, 1_048_576, _TABLE),
    "num_register_tokens": (0, 4_096, _TABLE),
    "num_train_timesteps": (1, 100_000, _STEPS),
    "sample_size": (1, 8_192, _SIZE),
    "image_size": (1, 8_192, _SIZE),
    "patch_size": (1, 1_024, _SIZE),
    "resolution": (8, 2_048, _SIZE),
}
BLOCK_LISTS = {"down_block_types": 16, "up_block_types": 16, "block_out_channels": 16, "channels": 64}
STRING_KEYS = ("_class_name", "model_type", "architecture")


def _ints(value) -> list:
    """The leaves of a (nested) list, or [value]."""
    out, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        else:
            out.append(v)
    return out


def check_config_bounds(cfg: dict, path: Path) -> None:
    """Raise :class:`ModelError` naming ``path``, the key and the bound when a size in ``cfg`` (nested
    configs included, e.g. CLIP's ``vision_config``) is not an integer in its :data:`SIZE_BOUNDS` range, or
    a name (``_class_name``, ``architectures``) is not a string: before any of it is used to build a model."""
    stack: list[tuple[str, dict]] = [("", cfg)]
    while stack:
        prefix, d = stack.pop()
        for key, value in d.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}.", value))
                continue
            if key in STRING_KEYS and value is not None and not isinstance(value, str):
                raise ModelError(f"{path}: `{name}` must be a string (a class name), got {value!r}; the config is "
                                 "broken (fix the value or download the file again)")
            if key == "architectures" and value is not None and not (
                    isinstance(value, list) and all(isinstance(a, str) for a in value)):
                raise ModelError(f"{path}: `{name}` must be a list of class names, got {value!r}; the config is "
                                 "broken (fix the value or download the file again)")
            if key in BLOCK_LISTS and isinstance(value, (list, tuple)) and len(value) > BLOCK_LISTS[key]:
                raise ModelError(f"{path}: `{name}` lists {len(value):,} entries, over the bound of "
                                 f"{BLOCK_LISTS[key]} ({_BLOCKS}); the config is broken or not a real model's")
            if key not in SIZE_BOUNDS or value is None:
                continue
            lo, hi, why = SIZE_BOUNDS[key]
            for v in _ints(value):
                if v is None and key in ("attention_head_dim", "num_attention_heads", "patch_size"):
                    continue  # diffusers accepts None for these
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ModelError(f"{path}: `{name}` must be an integer in [{lo:,}, {hi:,}], got {value!r}; "
                                     "the config is broken (fix the value or download the file again)")
                if not lo <= v <= hi:
                    raise ModelError(f"{path}: `{name}` = {v:,} is outside the bound [{lo:,}, {hi:,}] ({why}); "
                                     "the config is broken or not a real model's (fix the value or download the "
                                     "file again)")


def check_model_folder(folder: Path) -> None:
    """Before detecting or building anything: every file a loader would read in ``folder`` and its direct
    subfolders (configs, weights, tokenizers) must be a regular file (links followed: the Hugging Face cache
    links to blobs), configs at most :data:`CONFIG_MAX_BYTES` of valid JSON objects whose sizes are within
    :data:`SIZE_BOUNDS`. Raises :class:`ModelError` naming the file and the fix."""
    folder = Path(folder)
    dirs = [folder]
    try:
        dirs += sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir())
    except OSError as e:
        raise ModelError(f"cannot list the model folder {folder}: {e}") from e
    for d in dirs:
        try:
            entries = sorted(p for p in d.iterdir() if not p.name.startswith(".") and p.suffix in CHECKED_SUFFIXES)
        except OSError as e:
            raise ModelError(f"cannot list {d}: {e}") from e
        for p in entries:
            try:
                if p.suffix == ".json" and p.name not in TOKENIZER_FILES:
                    check_config_bounds(read_json_object(p, CONFIG_MAX_BYTES, "model config"), p)
                elif p.suffix == ".safetensors":
                    check_regular_file(p, "weights file")
                else:
                    check_regular_file(p, "tokenizer file", SIDE_FILE_MAX_BYTES)
            except UnsafeFileError as e:
                raise ModelError(f"{e}") from None
            except FileNotFoundError:
                if p.is_symlink():
                    raise ModelError(f"{p} is a broken link (its target {os.readlink(p)!r} does not exist); "
                                     "download the model again") from None
                raise
            except OSError as e:
                raise ModelError(f"cannot read {p}: {e}") from None


def missing_components(folder: Path) -> list[str]:
    """What model_index.json lists but the folder lacks (``scheduler/`` ...), for messages."""
    idx = read_json(Path(folder) / "model_index.json") or {}
    out = []
    for name, spec in idx.items():
        if name.startswith("_") or not (isinstance(spec, list) and len(spec) == 2 and spec[0] and spec[1]):
            continue
        if not (Path(folder) / name).is_dir():
            out.append(f"{name}/")
    return out


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


# errors a from_pretrained call raises on a malformed config or a config that does not match its weights
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError,
               NotImplementedError, RecursionError)


def loading(what: str, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run a from_pretrained call, turning file and config errors into a :class:`ModelError` that names the
    folder (never a traceback)."""
    try:
        return fn()
    except ModelError:
        raise
    except LOAD_ERRORS as e:
        raise ModelError(f"could not load the {what} in {folder}: {type(e).__name__}: {str(e)[:600]}") from e


# unexpected checkpoint keys that are fine to leave unused, by prefix or suffix: the other tower of a two-tower
# repo (CLIP, SigLIP: only the vision tower is loaded), MAE's pre-training decoder, non-persistent position ids
IGNORABLE_UNEXPECTED = {
    "CLIPVisionModel": ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "logit_bias"),
    "SiglipVisionModel": ("text_model.", "logit_scale", "logit_bias"),
    "ViTMAEModel": ("decoder.",),
}


def _keys(keys, limit: int = 6) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit:,} more" if len(keys) > limit else "")


def pretrained(what: str, folder: Path, model_cls: Any, **kw) -> Any:
    """``model_cls.from_pretrained(folder, **kw)`` (safetensors, offline) that refuses a checkpoint whose
    weights do not match its config: any missing weight (a layer the config claims but the weights lack
    would be randomly initialised) or unexpected one (the config describes another model) is a
    :class:`ModelError` naming the keys, from the loading report diffusers / transformers return."""
    kw = {**KW, **kw}
    model, info = loading(what, folder, lambda: model_cls.from_pretrained(folder, output_loading_info=True, **kw))
    where = Path(folder) / kw["subfolder"] if kw.get("subfolder") else Path(folder)
    missing = list(info.get("missing_keys") or ())
    ignorable = IGNORABLE_UNEXPECTED.get(model_cls.__name__, ())
    unexpected = [k for k in info.get("unexpected_keys") or ()
                  if not (str(k).endswith("position_ids") or str(k).startswith(ignorable))]
    mismatched = [k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys") or ()]
    problems = []
    if missing:
        problems.append(f"{len(missing):,} weight(s) the config needs are missing from the checkpoint "
                        f"({_keys(missing)}): they would be random")
    if unexpected:
        problems.append(f"{len(unexpected):,} weight(s) in the checkpoint are not in the model the config "
                        f"describes ({_keys(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched):,} weight(s) have another shape than the config says "
                        f"({_keys(mismatched)})")
    if problems:
        raise ModelError(f"the {what} in {where} does not match its config.json: {'; '.join(problems)}. The "
                         "config was edited or belongs to another checkpoint: download the folder again.")
    return model




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
    vae = pretrained("VAE", folder, AutoencoderKL, subfolder=sub, torch_dtype=vae_dtype)
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
    return loading("scheduler", d, lambda: DDPMScheduler.from_config(keep))


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
