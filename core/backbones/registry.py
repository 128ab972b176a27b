"""The registry: which families exist, which named models ship, and how a name or folder becomes a backbone.

* :data:`FAMILIES`: one line per family (a :class:`~core.backbones.base.Backbone` subclass). Adding a family
  is one file in this folder plus one line here.
* :data:`REGISTERED`: short names of models that ship with the repository (or are built in), with the
  family they belong to (for grouping even when a model is missing) and a description.
* :func:`load_backbone`: a registered name, a local folder in its Hub layout, or a hub id already in the local
  Hugging Face cache -> a loaded backbone (memoised per process). Weights load from safetensors only.
* :func:`detect_family`: a folder -> its family, from the folder itself (``model_index.json`` ``_class_name``,
  ``config.json`` ``architectures`` / ``_class_name``, the flat layout of ``google/ddpm-*``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.backbones.base import Backbone, ModelError
from core.backbones.common import LOAD_ERRORS, check_model_folder, missing_components
from core.backbones.common import read_json as _read_config
from core.backbones.identity import folder_identity  # noqa: F401 - re-exported
from core.backbones.baselines import CNNBackbone, PixelsBackbone
from core.backbones.ddpm import PixelDDPMBackbone
from core.backbones.dit import DiTBackbone
from core.backbones.flux import FluxBackbone
from core.backbones.hf_vision import HFVisionBackbone
from core.backbones.pixart import PixArtBackbone
from core.backbones.sd3 import SD3Backbone
from core.backbones.sd_unet import SDUNet
from core.backbones.sdxl import SDXLUNet

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = "domainlens-tiny"

# One line per family. Detection asks each family's ``detect``; when several match, a subclass wins over
# the class it extends (e.g. SDXL over SD), so register specialisations anywhere in the list.
FAMILIES: list[type[Backbone]] = [
    SDUNet,
    PixelsBackbone,
    CNNBackbone,
    SDXLUNet,
    DiTBackbone,
    SD3Backbone,
    FluxBackbone,
    PixArtBackbone,
    PixelDDPMBackbone,
    HFVisionBackbone,
]


@dataclass(frozen=True)
class Registered:
    """A named model: ``location`` (None for built-ins without files), its family name, a description."""

    location: Path | None
    family: str
    description: str


REGISTERED: dict[str, Registered] = {
    "domainlens-tiny": Registered(MODELS_DIR / "domainlens-tiny", "sd-unet",
                                  "the project's own small latent diffusion UNet (64 px), trained on the "
                                  "built-in train splits"),
    "domainlens-tiny-dit": Registered(MODELS_DIR / "domainlens-tiny-dit", "dit",
                                      "the project's own small class-conditional DiT (64 px), trained on the "
                                      "built-in train splits"),
    "pixels": Registered(None, "pixels", "baseline: raw pixels downsampled to 16x16x3 (768-d)"),
    "domainlens-cnn": Registered(MODELS_DIR / "domainlens-cnn", "cnn",
                                 "baseline: small supervised CNN classifier (penultimate layer) trained on "
                                 "class labels"),
}

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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


# ------------------------------------------------------------------------------------ detection


def read_json(path: Path) -> dict:
    """A JSON config as a dict; {} when absent or unusable (read safely: regular files only, size-capped)."""
    return _read_config(path) or {}


def found_classes(folder: Path) -> list[str]:
    """What the folder says it holds: class names from model_index.json and config.json files (for errors)."""
    folder = Path(folder)
    found = []
    idx = read_json(folder / "model_index.json")
    if idx.get("_class_name"):
        found.append(f"model_index.json _class_name={idx['_class_name']}")
    for cfg in [folder / "config.json"] + sorted(folder.glob("*/config.json")):
        d = read_json(cfg)
        rel = cfg.relative_to(folder).as_posix()
        for k in ("_class_name", "architectures", "architecture", "model_type"):
            if d.get(k):
                found.append(f"{rel} {k}={d[k]}")
    return found


def check_safetensors(folder: Path) -> None:
    """Refuse a folder whose weights exist only as pickles (.bin, .pt, .ckpt ...): DomainLens never unpickles."""
    folder = Path(folder)
    for d in [folder] + sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pickles = [p.name for p in d.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES]
        if pickles and not any(d.glob("*.safetensors")):
            raise ModelError(
                f"{d} holds only pickle weights ({', '.join(sorted(pickles)[:3])}); DomainLens loads safetensors "
                "only. Convert once on a trusted machine: load it with diffusers/transformers and "
                "save_pretrained(..., safe_serialization=True), or download the repository's .safetensors files "
                "(`python -m core download <id>`, which fetches safetensors and configs only).")


def _most_specific(matches: list[type[Backbone]]) -> list[type[Backbone]]:
    return [m for m in matches if not any(o is not m and issubclass(o, m) for o in matches)]


def supported_families() -> str:
    return "; ".join(f"{f.family} ({f.family_label})" for f in FAMILIES)


def detect_family(folder: str | os.PathLike) -> type[Backbone]:
    """The family of a local model folder laid out as its Hub repository, or a :class:`ModelError` naming
    what was found there and the supported families."""
    folder = Path(folder)
    matches = []
    for fam in FAMILIES:
        try:
            if fam.detect(folder):
                matches.append(fam)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a malformed config is "not this family"
            logger.debug("%s.detect(%s) failed: %s", fam.__name__, folder, e)
    matches = _most_specific(matches)
    if len(matches) == 1:
        return matches[0]
    found = found_classes(folder)
    what = "; ".join(found) if found else "no model_index.json or config.json with a class name"
    if not matches:
        lacking = missing_components(folder)
        if lacking:  # e.g. a diffusers pipeline without its scheduler/
            raise ModelError(f"{folder} is incomplete: its model_index.json lists {', '.join(lacking)} but the "
                             f"folder has no such subfolder (found: {what}). Download the whole repository "
                             "(`hf download <id> --local-dir DIR`) or restore the missing folder.")
        raise ModelError(f"{folder} is not a supported model folder (found: {what}). Supported families: "
                         f"{supported_families()}. Pass the folder of a whole Hub repository (e.g. from "
                         "`python -m core download <id> --dir DIR`).")
    raise ModelError(f"{folder} matches several families ({', '.join(m.family for m in matches)}; found: {what}); "
                     "this is a registry bug, please report it.")


def family_by_name(name: str) -> type[Backbone] | None:
    return next((f for f in FAMILIES if f.family == name), None)


# ------------------------------------------------------------------------------------ resolution


def resolve_folder(name_or_path: str) -> tuple[Path | None, type[Backbone] | None]:
    """``(folder, family)`` for a registered name (family known), a local folder or a cached hub id
    (family None: detect it)."""
    if name_or_path in REGISTERED:
        reg = REGISTERED[name_or_path]
        fam = family_by_name(reg.family)
        if reg.location is None:
            if fam is None:
                raise ModelError(f"the family {reg.family!r} of {name_or_path!r} is not registered")
            return None, fam
        if not reg.location.is_dir():
            raise ModelError(f"The registered model {name_or_path!r} is missing at {reg.location}; the repository "
                             "checkout is incomplete (re-clone it) or retrain it (see models/*/README.md).")
        return reg.location, None
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"{name_or_path!r} is a file; pass a model folder laid out as its Hub repository "
                             "(e.g. a diffusers folder with model_index.json, or a transformers folder with "
                             "config.json) or a hub id.")
        return p.resolve(), None
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            try:
                folder = snapshot_download(name_or_path, local_files_only=True)
            except Exception as e:  # noqa: BLE001
                # `python -m core download` fetches only the files DomainLens loads (no pickles, no variants):
                # the cached snapshot is "incomplete" for huggingface_hub but complete for the loader
                folder = getattr(e, "snapshot_path", None)
                if not folder or not Path(folder).is_dir():
                    raise
        except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
            raise ModelError(
                f"Hub model {name_or_path!r} is not in the local Hugging Face cache, and DomainLens downloads only "
                f"when asked: run `python -m core download {name_or_path}` (safetensors and configs only; gated "
                "repositories need `hf auth login` first), or on another machine `hf download "
                f"{name_or_path} --local-dir DIR` and pass the local folder DIR."
            ) from e
        return Path(folder), None
    raise ModelError(f"Unknown model {name_or_path!r}: not a registered name ({', '.join(REGISTERED)}), not an "
                     "existing folder, and not a hub id of the form owner/name.")


@functools.lru_cache(maxsize=4)
def load_backbone(name_or_path: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> Backbone:
    """Load a feature space by registered name, local folder or cached hub id (memoised per process)."""
    folder, fam = resolve_folder(name_or_path)
    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    if folder is not None:
        check_model_folder(folder)  # regular, size-capped, bounded configs: before reading or building anything
        check_safetensors(folder)
        fam = detect_family(folder)
    try:
        return fam.load(name_or_path, folder, dev, dt)
    except ModelError:
        raise
    except LOAD_ERRORS as e:  # a config the family could not build from: name the folder, never a traceback
        raise ModelError(f"could not load the model in {folder}: {type(e).__name__}: {str(e)[:600]}. A config "
                         "file is probably malformed: download the folder again.") from e


def list_families() -> list[dict]:
    """Every registered family: name, label, what it is conditioned on, its token poolings (a note; "" for
    none to choose), example Hub ids."""
    return [{"family": f.family, "label": f.family_label, "conditioned_on": f.conditioned_on,
             "token_pooling": f.token_pooling_note, "hub_examples": list(f.hub_examples)} for f in FAMILIES]


def list_models() -> list[dict]:
    """Registered models with family and availability, for the CLI and the UI."""
    out = []
    for name, reg in REGISTERED.items():
        fam = family_by_name(reg.family)
        available = fam is not None and (reg.location is None or reg.location.is_dir())
        out.append({"name": name, "family": reg.family, "family_label": fam.family_label if fam else reg.family,
                    "description": reg.description, "available": available,
                    "location": str(reg.location) if reg.location else ""})
    return out
