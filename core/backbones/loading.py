"""Model registry and loading: diffusers Stable-Diffusion-format folders or hub ids, plus baselines.

Every feature space the tool can study is a :class:`FeatureModel`: a diffusion model (any diffusers
folder with ``unet/`` and ``scheduler/``; ``vae/``, ``text_encoder/`` and ``tokenizer/`` optional) or an
offline baseline (downsampled pixels; the project's supervised CNN). Weights load from safetensors only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = "domainlens-tiny"

# short name -> (kind, location, description)
REGISTRY: dict[str, tuple[str, str, str]] = {
    "domainlens-tiny": ("diffusion", str(MODELS_DIR / "domainlens-tiny"),
                        "the project's own small latent diffusion model (64 px), trained on the built-in train splits"),
    "pixels": ("pixels", "", "baseline: raw pixels downsampled to 16x16x3 (768-d)"),
    "domainlens-cnn": ("cnn", str(MODELS_DIR / "domainlens-cnn"),
                       "baseline: small supervised CNN classifier (penultimate layer) trained on class labels"),
}


class ModelError(ValueError):
    """A model that cannot be loaded as given; the message says what to do."""


# --------------------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("CUDA was asked for but no CUDA GPU is visible; use --device auto or cpu.")
    return dev


def resolve_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """fp32 on CPU; bf16 (else fp16) on GPU, unless given."""
    if dtype != "auto":
        table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in table:
            raise ModelError(f"Unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16.")
        return table[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


# --------------------------------------------------------------------------------------- identity

def _hash_memo_path() -> Path:
    """Read at call time (not import time), so DOMAINLENS_CACHE_DIR set after import is honoured."""
    return Path(os.environ.get("DOMAINLENS_CACHE_DIR", Path.home() / ".cache" / "domainlens")) / "weight-hashes.json"


def _file_sha256(path: Path) -> str:
    memo_path = _hash_memo_path()
    st = path.stat()
    memo_key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo: dict[str, str] = {}
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        pass
    if memo_key in memo:
        return memo[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    memo[memo_key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    except OSError:
        pass
    return digest


def folder_identity(folder: str | os.PathLike) -> str:
    """Hash of every weight, config and tokenizer file in a model folder (content, not path)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in {".safetensors", ".json", ".txt", ".model"} and not p.name.startswith("."):
            if p.name in {"training_log.json"}:
                continue
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(_file_sha256(p).encode())
    return h.hexdigest()[:20]


# ------------------------------------------------------------------------------------ resolution


def resolve_model_path(name_or_path: str) -> tuple[str, str]:
    """Return ``(kind, local folder)`` for a registered name, a local folder or a cached hub id."""
    if name_or_path in REGISTRY:
        kind, loc, _ = REGISTRY[name_or_path]
        if kind != "pixels" and not Path(loc).is_dir():
            raise ModelError(f"The registered model {name_or_path!r} is missing at {loc}; the repository "
                             "checkout is incomplete (re-clone it) or retrain it (see models/*/README.md).")
        return kind, loc
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"{name_or_path!r} is a file; pass a diffusers model folder (with unet/ and "
                             "scheduler/ subfolders) or a hub id.")
        if (p / "unet").is_dir():
            return "diffusion", str(p.resolve())
        raise ModelError(f"{name_or_path!r} has no unet/ subfolder; pass a diffusers Stable Diffusion folder "
                         "(model_index.json, unet/, scheduler/, optional vae/, text_encoder/, tokenizer/).")
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name_or_path, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
            raise ModelError(
                f"Hub model {name_or_path!r} is not in the local Hugging Face cache and this machine cannot "
                "download it. On a connected machine run `huggingface-cli download "
                f"{name_or_path}` (or copy its folder here) and pass the local folder instead."
            ) from e
        return "diffusion", folder
    raise ModelError(f"Unknown model {name_or_path!r}: not a registered name ({', '.join(REGISTRY)}), not an "
                     "existing folder, and not a hub id of the form owner/name.")


# ------------------------------------------------------------------------------------ models


@dataclass
class FeatureModel:
    """A loaded feature space. Diffusion models fill ``unet``/``scheduler`` (and optional parts)."""

    name: str
    kind: str  # "diffusion" | "pixels" | "cnn"
    identity: str
    resolution: int
    device: torch.device
    dtype: torch.dtype
    blocks: list[str]
    unet: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    scheduler: Any = None
    net: Any = None  # baselines
    info: dict = field(default_factory=dict)

    @property
    def uses_timestep(self) -> bool:
        return self.kind == "diffusion"

    @property
    def uses_prompt(self) -> bool:
        return self.kind == "diffusion" and self.text_encoder is not None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps) if self.scheduler is not None else 1

    @property
    def default_block(self) -> str:
        return "up_blocks.1" if "up_blocks.1" in self.blocks else self.blocks[-1]


def unet_block_names(unet) -> list[str]:
    """Every block in execution order: down_blocks.0 ... mid_block ... up_blocks.N."""
    names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
    if getattr(unet, "mid_block", None) is not None:
        names.append("mid_block")
    names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    return names


def _check_safetensors(folder: Path, sub: str) -> None:
    d = folder / sub
    if d.is_dir() and not any(d.glob("*.safetensors")) and any(d.glob("*.bin")):
        raise ModelError(f"{d} holds only pickle weights (.bin); DomainLens loads safetensors only. Convert once "
                         "on a trusted machine: load it with diffusers and save_pretrained(..., "
                         "safe_serialization=True).")


@functools.lru_cache(maxsize=4)
def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> FeatureModel:
    """Load a feature space by registered name, local folder or cached hub id (memoised per process)."""
    kind, folder = resolve_model_path(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    if kind == "pixels":
        return FeatureModel(name_or_path, "pixels", "pixels-16x16-v1", 64, dev, torch.float32, ["pixels"])
    if kind == "cnn":
        from core.training.train_baseline import load_baseline_cnn

        net = load_baseline_cnn(folder).to(dev).eval()
        res = int(json.loads((Path(folder) / "config.json").read_text()).get("resolution", 64))
        return FeatureModel(name_or_path, "cnn", "cnn-" + folder_identity(folder), res, dev, torch.float32,
                            ["features"], net=net)
    return _load_diffusion(name_or_path, Path(folder), dev, dt)


def _load_diffusion(name: str, folder: Path, dev: torch.device, dt: torch.dtype) -> FeatureModel:
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    for sub in ("unet", "vae", "text_encoder"):
        _check_safetensors(folder, sub)
    kw = dict(use_safetensors=True, local_files_only=True)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
        sched_cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        sched_cls = getattr(diffusers, sched_cfg.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
        if not hasattr(sched_cls, "add_noise"):
            sched_cls = diffusers.DDPMScheduler
        scheduler = sched_cls.from_pretrained(folder, subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw) if (folder / "vae").is_dir() else None
        text_encoder = tokenizer = None
        if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
            te_cfg = json.loads((folder / "text_encoder" / "config.json").read_text())
            te_cls = getattr(transformers, (te_cfg.get("architectures") or ["CLIPTextModel"])[0],
                             transformers.CLIPTextModel)
            text_encoder = te_cls.from_pretrained(folder, subfolder="text_encoder", **kw)
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, subfolder="tokenizer",
                                                                   local_files_only=True)
    except FileNotFoundError as e:
        raise ModelError(f"Model folder {folder} is incomplete ({e}); it needs unet/ and scheduler/ "
                         "(and optionally vae/, text_encoder/, tokenizer/).") from e
    except OSError as e:
        raise ModelError(f"Could not load the model in {folder}: {e}") from e
    vae_dtype = dt
    parts = [unet, vae, text_encoder]
    for m in parts:
        if m is not None:
            m.eval().requires_grad_(False)
            m.to(dev) if dt == torch.float32 else m.to(dev, dtype=dt)
    if vae is not None and dt == torch.float16:
        vae.to(dtype=torch.float32)  # SD VAEs overflow in fp16; encoding is cheap next to the UNet
        vae_dtype = torch.float32
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    sample = unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return FeatureModel(
        name=name, kind="diffusion", identity=folder_identity(folder), resolution=int(sample) * scale,
        device=dev, dtype=dt, blocks=unet_block_names(unet), unet=unet, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler=scheduler, info={"folder": str(folder), "vae_dtype": str(vae_dtype)},
    )


def list_models() -> list[dict]:
    """Registered models with availability, for the CLI and the UI."""
    return [{"name": k, "kind": v[0], "description": v[2],
             "available": v[0] == "pixels" or Path(v[1]).is_dir()} for k, v in REGISTRY.items()]
