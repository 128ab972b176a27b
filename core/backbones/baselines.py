"""Offline baselines: downsampled pixels, and the project's small supervised CNN (``domainlens-cnn``).

Both are conditioned on nothing (``Conditioning()``): no timestep, prompt, seed or class label enters their
features or their cache keys. The CNN's network definition, its safetensors loader and its feature function
live here (training imports them from here; inference never imports :mod:`core.training`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from core.backbones.base import Backbone, ExtractionError, ModelError, Request
from core.backbones.identity import folder_identity
from core.safeio import read_json_object

DEFAULT_CHANNELS = (32, 64, 128, 128)


# ------------------------------------------------------------------------------------------ pixels


@dataclass(eq=False)
class PixelsBackbone(Backbone):
    """Raw pixels (preprocessed as for the diffusion models) area-downsampled to 16x16x3 = 768-d."""

    family: ClassVar[str] = "pixels"
    family_label: ClassVar[str] = "Baseline: downsampled pixels"
    conditioned_on: ClassVar[str] = "nothing (image only)"
    GRID: ClassVar[int] = 16

    def key_dtype(self) -> str:
        return "float32"  # always computed in fp32 (and the cache keys written before the seam say so)

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return False  # built in, never a folder

    @classmethod
    def load(cls, name: str, folder: Path | None, device: torch.device, dtype: torch.dtype) -> "PixelsBackbone":
        return cls(name=name, identity="pixels-16x16-v1", device=device, dtype=torch.float32, resolution=64,
                   layers=["pixels"], default_layer="pixels")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float()  # on the CPU: the work is one area interpolation

    @torch.inference_mode()
    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str],
                         request: Request, *, early_exit: bool = True,
                         pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        self.check_layers(layers)
        small = torch.nn.functional.interpolate(x0.float().cpu(), size=(self.GRID, self.GRID), mode="area")
        return {"pixels": pool_fn(small) if pool_fn is not None else small.flatten(1)}  # (B, 768)

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [b for b in layers if b not in self.layers]
        if unknown or not layers:
            raise ExtractionError(f"unknown or no layer(s) {list(unknown)} for {self.name!r}; valid layers: "
                                  f"{', '.join(self.layers)}")


# --------------------------------------------------------------------------------------------- CNN


class BaselineCNN(nn.Module):
    """conv-BN-ReLU-pool x len(channels), global average pool, linear head."""

    def __init__(self, num_classes: int, channels: Sequence[int] = DEFAULT_CHANNELS, in_channels: int = 3):
        super().__init__()
        layers, c_in = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)
        self.feature_dim = c_in

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: globally average-pooled last conv block, (B, D)."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def load_baseline_cnn(path: str | os.PathLike) -> nn.Module:
    """Load a saved :class:`BaselineCNN` (folder with model.safetensors + config.json), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_json_object(path / "config.json", what="model config")
    model = BaselineCNN(cfg["num_classes"], cfg["channels"], cfg.get("in_channels", 3))
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.classes = cfg["classes"]
    return model.eval()


@torch.no_grad()
def cnn_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer (globally pooled) features of images in [-1, 1], (B, 3, H, W) -> (B, D)."""
    model.eval()
    return model.embed(images.float())


@dataclass(eq=False)
class CNNBackbone(Backbone):
    """The project's supervised CNN (class labels only): its globally pooled last conv block."""

    family: ClassVar[str] = "cnn"
    family_label: ClassVar[str] = "Baseline: supervised CNN (BaselineCNN)"
    conditioned_on: ClassVar[str] = "nothing (image only)"

    net: Any = None

    def key_dtype(self) -> str:
        return "float32"  # always computed in fp32 (and the cache keys written before the seam say so)

    @classmethod
    def detect(cls, folder: Path) -> bool:
        try:
            cfg = read_json_object(Path(folder) / "config.json", what="model config")
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and cfg.get("architecture") == "BaselineCNN" and \
            (Path(folder) / "model.safetensors").is_file()

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "CNNBackbone":
        try:
            net = load_baseline_cnn(folder).to(device).eval()
            res = int(read_json_object(Path(folder) / "config.json", what="model config").get("resolution", 64))
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ModelError(f"Could not load the CNN baseline in {folder}: {e}") from e
        return cls(name=name, identity="cnn-" + folder_identity(folder), device=device, dtype=torch.float32,
                   resolution=res, layers=["features"], default_layer="features", root=net,
                   info={"folder": str(folder)}, net=net)

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str],
                         request: Request, *, early_exit: bool = True,
                         pool_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> dict[str, torch.Tensor]:
        x = x0.to(self.device, torch.float32)
        out = self.run_hooked(lambda: self.net.embed(x), layers, early_exit=early_exit, pool_fn=pool_fn)
        return {b: v.float().cpu() for b, v in out.items()}
