"""Vision baselines through transformers: CLIP, SigLIP, DINOv2 (with and without registers), MAE.

Path of one image (ViT-B/16 at 224 px in comments)::

    image -> the checkpoint's own image processor (AutoImageProcessor)      (3, 224, 224)
    vision encoder with hooks on its transformer layers ("layer.0" ... "layer.11")   (B, 1 + R + 196, 768)
    pooling "cls": the CLS token (B, 768); "mean": the mean of the patch tokens (CLS and registers skipped)

* CLIP and SigLIP repos hold a full two-tower model; only the vision tower is loaded.
* SigLIP has no CLS token: only "mean" pooling.
* MAE masks 75 % of the patches at random, even in eval mode: it is loaded with ``mask_ratio=0`` and fed
  ``noise = arange(n_patches)`` so every patch is kept, in order.
* The layer list is found programmatically (its path moves between transformers versions); the hook on
  layer i equals ``output_hidden_states[i + 1]`` (before any final layer norm). Layer names are stable:
  ``layer.<i>``.

Default pooling: "cls" where the model has a CLS token (CLIP, DINOv2, MAE: the usual linear-probe
feature), else "mean" (``poolings``, the default first). :meth:`Backbone.with_token_pooling` gives the other
one (the engine applies ``ExtractionConfig.token_pooling``); the pooling is part of the cache key
(:meth:`HFVisionBackbone.key_conditioning`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch

from core.backbones.base import Backbone, Conditioning, ExtractionError, ModelError, Request
from core.backbones.common import identity, check_safetensors, config_of, loading, place, pretrained, quiet

# config.json ``architectures[0]`` -> (transformers class that loads the vision encoder, has a CLS token)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "CLIPModel": ("CLIPVisionModel", True),
    "CLIPVisionModel": ("CLIPVisionModel", True),
    "CLIPVisionModelWithProjection": ("CLIPVisionModel", True),
    "SiglipModel": ("SiglipVisionModel", False),
    "SiglipVisionModel": ("SiglipVisionModel", False),
    "Dinov2Model": ("Dinov2Model", True),
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersModel", True),
    "ViTMAEForPreTraining": ("ViTMAEModel", True),
    "ViTMAEModel": ("ViTMAEModel", True),
}
POOLINGS = ("cls", "mean")


def architecture(folder: Path) -> str | None:
    cfg = config_of(folder) or {}
    arch = cfg.get("architectures") or []
    return arch[0] if arch and arch[0] in ARCHITECTURES else None


def find_layer_list(model: torch.nn.Module) -> str:
    """Path of the encoder's transformer layer list (the longest ModuleList; the first of equals)."""
    lists = [(n, len(m)) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    if not lists:
        raise ModelError(f"{type(model).__name__} has no layer list to hook")
    best = max(n for _, n in lists)
    return next(name for name, n in lists if n == best)


@dataclass(eq=False)
class HFVisionBackbone(Backbone):
    family: ClassVar[str] = "hf-vision"
    family_label: ClassVar[str] = "Vision encoders (CLIP, SigLIP, DINOv2, MAE) via transformers"
    conditioned_on: ClassVar[str] = "nothing (image only)"
    hub_examples: ClassVar[tuple[str, ...]] = ("openai/clip-vit-base-patch16", "google/siglip-base-patch16-224",
                                               "facebook/dinov2-base", "facebook/dinov2-with-registers-base",
                                               "facebook/vit-mae-base")
    token_pooling_note: ClassVar[str] = ("cls (the CLS token, default where there is one) or mean (patch mean, "
                                         "registers skipped); SigLIP: mean only")

    model: Any = None
    processor: Any = None
    layer_list: str = ""
    pooling: str | None = "cls"
    poolings: tuple[str, ...] = POOLINGS  # the first is the default
    n_prefix: int = 1  # tokens before the patches: CLS + registers
    native: int = 224
    is_mae: bool = False
    _resized: dict = dataclasses.field(default_factory=dict, repr=False)  # resolution -> rescaled processor

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return architecture(Path(folder)) is not None

    @classmethod
    def load(cls, name: str, folder: Path, device: torch.device, dtype: torch.dtype) -> "HFVisionBackbone":
        import transformers
        from transformers import AutoImageProcessor

        quiet()
        folder = Path(folder)
        arch = architecture(folder)
        if arch is None:
            raise ModelError(f"{folder}/config.json names none of {', '.join(ARCHITECTURES)}")
        check_safetensors(folder, [None])
        model_cls_name, has_cls = ARCHITECTURES[arch]
        model_cls = getattr(transformers, model_cls_name)
        kw: dict = dict(use_safetensors=True, local_files_only=True)
        is_mae = model_cls_name == "ViTMAEModel"
        if is_mae:
            kw["mask_ratio"] = 0.0  # keep every patch; the order is kept by the noise passed in forward
        model = pretrained(f"{model_cls_name} vision encoder", folder, model_cls, **kw)
        place(model, device, dtype)
        processor = loading("image processor", folder, lambda: AutoImageProcessor.from_pretrained(folder))
        layer_list = find_layer_list(model)
        n = len(model.get_submodule(layer_list))
        layers = [f"layer.{i}" for i in range(n)]
        vcfg = model.config
        native = int(vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0])
        n_registers = int(getattr(vcfg, "num_register_tokens", 0) or 0)
        return cls(name=name, identity=identity(folder), device=device, dtype=dtype, resolution=native,
                   layers=layers, default_layer=layers[-1], conditioning=Conditioning(), root=model,
                   info={"folder": str(folder), "architecture": arch, "encoder": model_cls_name,
                         "layer_list": layer_list, "register_tokens": n_registers},
                   model=model, processor=processor, layer_list=layer_list,
                   pooling="cls" if has_cls else "mean", poolings=POOLINGS if has_cls else ("mean",),
                   n_prefix=(1 if has_cls else 0) + n_registers, native=native, is_mae=is_mae)

    # ---- pooling choice -------------------------------------------------------------------
    def check_pooling(self, pooling: str) -> str:
        if pooling == "cls" and pooling not in self.poolings:
            raise ExtractionError(f"token pooling {pooling!r} is not offered by {self.name!r}; use one of "
                                  f"{', '.join(self.poolings)} (this model has no CLS token)")
        return super().check_pooling(pooling)

    def with_pooling(self, pooling: str) -> "HFVisionBackbone":
        """The same loaded model with another token pooling ("cls" or "mean"; modules are shared)."""
        return self.with_token_pooling(pooling)

    def key_conditioning(self, timestep, prompt, class_label, seed, ensemble, noise_mode) -> dict:
        key = super().key_conditioning(timestep, prompt, class_label, seed, ensemble, noise_mode)
        key["token_pooling"] = self.pooling
        return key

    def layer_path(self, layer: str) -> str:
        return f"{self.layer_list}.{layer.split('.', 1)[1]}"

    def pool(self, layer: str, h: torch.Tensor) -> torch.Tensor:
        h = h.float()  # (B, prefix + patches, D)
        if self.pooling == "cls":
            return h[:, 0]
        return h[:, self.n_prefix:].mean(dim=1)

    def spatial_maps(self, x0, image_ids, layer, request) -> torch.Tensor:
        def patches_to_map(h):
            return _tokens_map(h[:, self.n_prefix:])

        out = self.forward_features(x0, image_ids, [layer], request, early_exit=True, pool_fn=patches_to_map)
        return out[layer]

    # ---- preprocessing: the checkpoint's own processor ------------------------------------
    def processor_for(self, resolution: int):
        """The checkpoint's processor, with its resize and crop sizes scaled to ``resolution`` (memoised)."""
        if resolution == self.native:
            return self.processor
        if resolution not in self._resized:
            proc = copy.deepcopy(self.processor)
            for attr in ("size", "crop_size"):
                d = getattr(proc, attr, None)
                if d:
                    d = {k: v for k, v in dict(d).items() if v is not None}
                    setattr(proc, attr, {k: max(1, round(v * resolution / self.native)) for k, v in d.items()})
            self._resized[resolution] = proc
        return self._resized[resolution]

    def preprocess(self, image, resolution: int) -> torch.Tensor:
        px = self.processor_for(resolution)(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        return px[0].float()  # (3, R, R)

    def forward_features(self, x0: torch.Tensor, image_ids: Sequence[str], layers: Sequence[str], request: Request,
                         *, early_exit: bool = True, pool_fn: Callable | None = None) -> dict[str, torch.Tensor]:
        x = x0.to(self.device, self.dtype)
        kw: dict = {}
        if x.shape[-1] != self.native or x.shape[-2] != self.native:
            kw["interpolate_pos_encoding"] = True
        if self.is_mae:
            p = self.model.config.patch_size
            n_patches = (x.shape[-2] // p) * (x.shape[-1] // p)
            # mask_ratio 0 keeps every patch; ascending noise keeps them in order
            kw["noise"] = torch.arange(n_patches, device=self.device, dtype=torch.float32).expand(x.shape[0], -1)
        out = self.run_hooked(lambda: self.model(pixel_values=x, **kw), layers, early_exit=early_exit, pool_fn=pool_fn)
        return {b: v.float().cpu() for b, v in out.items()}


def _tokens_map(h: torch.Tensor) -> torch.Tensor:
    from core.backbones.base import tokens_to_map

    return tokens_to_map(h)
