"""Shared helpers for the benchmarks: timing, models, synthetic data, result rows.

Every figure the benchmarks report is a median over repetitions or a ratio of two things measured in the
same run (interleaved A/B repetitions), because the machines are shared and absolute times drift.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "models" / "domainlens-tiny"

# SD-2.1-base UNet blocks and their output channels (down 0-3, mid, up 0-3).
SD21_BLOCKS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
               "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3"]
SD21_CHANNELS = dict(zip(SD21_BLOCKS, [320, 640, 1280, 1280, 1280, 1280, 1280, 640, 320]))
DOMAINNET_IMAGES = 586_575


# ------------------------------------------------------------------------------------------ timing


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable, *args, **kw) -> tuple[float, object]:
    """(seconds, result) of one call."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], object], reps: int, warmup: int = 0) -> list[float]:
    """Wall-clock seconds of ``reps`` calls (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    return [timed(fn)[0] for _ in range(reps)]


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several variants round-robin (A B A B ...), so that load drift hits them alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            out[k].append(timed(f)[0])
    return out


def ratio_of_medians(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median of the per-repetition ratios slow/fast (pairs measured back to back)."""
    return median([s / f for s, f in zip(slow, fast)])


def environment() -> dict:
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "gpu": ("CUDA " + torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ------------------------------------------------------------------------------------------ rows


def row(metric: str, value, unit: str = "", target: str | None = None, met: bool | None = None,
        note: str = "") -> dict:
    """One line of the results table."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return {"metric": metric, "value": value, "unit": unit, "target": target, "met": met, "note": note}


# ------------------------------------------------------------------------------------------ models


def default_model(work: Path):
    """The embedded default model: ``models/domainlens-tiny`` when it exists, else an untrained stand-in of
    the same architecture (built with the trainer's own builders). Returns ``(backbone, source)``."""
    from core.backbones.registry import load_backbone as load_model

    if default_model_ready():
        return load_model("domainlens-tiny", "cpu", "float32"), "models/domainlens-tiny (trained)"
    folder = work / "standin-domainlens-tiny"
    if not (folder / "model_index.json").is_file():
        build_standin(folder)
    return load_model(str(folder), "cpu", "float32"), "untrained stand-in of domainlens-tiny's architecture"


def default_model_ready(folder: Path = DEFAULT_MODEL_DIR) -> bool:
    """The trained default is complete: the trainer writes training_log.json last; otherwise every
    component's weights must be there (a folder being written is not used)."""
    if (folder / "training_log.json").is_file():
        return True
    return all(any((folder / sub).glob("*.safetensors")) for sub in ("unet", "vae", "text_encoder"))


def build_standin(folder: Path) -> Path:
    """Save an untrained model with exactly the default's architecture (core.training.train_default.TrainConfig)."""
    from diffusers import StableDiffusionPipeline

    from core.training.train_default import TrainConfig, build_components

    tok, vae, te, unet, _, ddim = build_components(TrainConfig())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=ddim,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


_SD_MODEL = {}


def sd_sized_model():
    """An SD backbone around a random-weight SD-2.1-base-sized UNet (865M params; no VAE/text encoder).
    Built once per process (~20-30 s on CPU)."""
    if "m" not in _SD_MODEL:
        import torch
        from diffusers import DDIMScheduler, UNet2DConditionModel

        from core.backbones.sd_unet import SDUNet
        from core.testing import sd_sized_unet_config

        torch.manual_seed(0)
        unet = UNet2DConditionModel(**sd_sized_unet_config(512)).eval().requires_grad_(False)
        sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
        _SD_MODEL["m"] = SDUNet.from_components("sd21-sized-random", "sd21-sized-random-seed0", unet, sched,
                                                resolution=512)
    return _SD_MODEL["m"]


def unet_inputs(model, n: int, resolution: int | None = None, seed: int = 0):
    """Seeded clean latents (n, 4, r/8, r/8), image ids and empty-prompt conditioning for ``model``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = [f"img{i:05d}" for i in range(n)]
    cond = [""] * n  # the empty prompt
    if model.text_encoder is None:  # the SD-sized random UNet: a random stand-in for the (77, 1024) embedding
        dim = model.unet.config.cross_attention_dim
        inject_empty_prompt(model, torch.randn(77, dim, generator=g))
    if model.vae is not None:
        res = resolution or model.resolution
        pixels = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        x0 = model.encode(pixels)
    else:
        r = (resolution or model.resolution) // 8
        x0 = torch.randn(n, model.unet.config.in_channels, r, r, generator=g)
    return x0, ids, cond


def inject_empty_prompt(model, embedding) -> None:
    """Make ``embedding`` (L, D) the empty prompt's conditioning of an SD backbone without a text encoder."""
    model._prompt_memo[""] = embedding.to(model.device, model.dtype)


def unet_block_features(model, x0, ids, timestep, prompts, blocks, seed=0, ensemble=1, early_exit=True):
    """Pooled features of clean latents through the backbone seam (one forward per noise draw)."""
    from core.backbones.base import Request

    return model.forward_features(x0, ids, blocks, Request(timestep=timestep, prompts=tuple(prompts), seed=seed,
                                                           ensemble=ensemble), early_exit=early_exit)


def extract_batch(model, pixels, ids, prompts, blocks, timestep, seed=0, ensemble=1):
    """One batch through the whole recipe (encode + forward): ``{block: (B, C) float32 array}``."""
    out = unet_block_features(model, model.encode(pixels), ids, timestep, prompts, blocks, seed, ensemble)
    return {b: v.numpy() for b, v in out.items()}


class EvalCounter:
    """Counts calls of ``unet.forward`` (a pre-hook); use as a context manager."""

    def __init__(self, unet):
        self.unet, self.n = unet, 0

    def __enter__(self):
        def pre(module, args):
            self.n += 1

        self._h = self.unet.register_forward_pre_hook(pre)
        return self

    def __exit__(self, *exc):
        self._h.remove()


# ------------------------------------------------------------------------------------ synthetic data


def clustered_features(n: int, dim: int = 1280, n_domains: int = 4, n_classes: int = 6, seed: int = 0,
                       domain_sep: float = 2.0, class_sep: float = 1.0, rank: int = 64, noise: float = 0.5,
                       domains: np.ndarray | None = None, classes: np.ndarray | None = None,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic clustered features like mean-pooled UNet features: (n, dim) float32, domain and class
    labels (drawn, or the given ``domains`` / ``classes``). Structure lives in a random ``rank``-dim
    subspace (domain + class offsets + per-point scatter), plus isotropic noise in all ``dim`` directions."""
    rng = np.random.default_rng(seed)
    dom = rng.integers(0, n_domains, n) if domains is None else np.asarray(domains)
    cls = rng.integers(0, n_classes, n) if classes is None else np.asarray(classes)
    n_domains, n_classes = max(n_domains, int(dom.max()) + 1), max(n_classes, int(cls.max()) + 1)
    dc = rng.normal(0, domain_sep, (n_domains, rank)).astype(np.float32)
    cc = rng.normal(0, class_sep, (n_classes, rank)).astype(np.float32)
    z = dc[dom] + cc[cls] + rng.normal(0, 1.0, (n, rank)).astype(np.float32)
    basis = rng.normal(0, 1.0 / np.sqrt(rank), (rank, dim)).astype(np.float32)
    X = z @ basis
    X += rng.normal(0, noise, (n, dim)).astype(np.float32)
    return X.astype(np.float32, copy=False), dom, cls


def synthetic_domainbed(root: Path, n_domains: int = 4, n_classes: int = 5, per_cell: int = 250,
                        size: int = 64, seed: int = 0) -> Path:
    """A DomainBed folder ``root/<domain>/<class>/<i>.png`` of procedurally drawn images: a domain sets the
    palette and texture, a class sets the shape. Written once (a marker file records completion)."""
    from PIL import Image, ImageDraw, ImageFilter

    marker = root / ".complete"
    if marker.is_file():
        return root
    rng = np.random.default_rng(seed)
    palettes = rng.integers(0, 256, (n_domains, 2, 3))
    for d in range(n_domains):
        for c in range(n_classes):
            folder = root / f"domain{d}" / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_cell):
                bg, fg = (tuple(int(v) for v in p) for p in palettes[d])
                im = Image.new("RGB", (size, size), bg)
                dr = ImageDraw.Draw(im)
                cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
                r = int(rng.integers(size // 8, size // 4))
                box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
                if c % 3 == 0:
                    dr.ellipse(box, fill=fg)
                elif c % 3 == 1:
                    dr.rectangle(box, fill=fg)
                else:
                    dr.polygon([(box[0], box[3]), (box[2], box[3]), (int(cx), box[1])], fill=fg)
                if c >= 3:
                    dr.line((0, int(cy), size, int(cy)), fill=fg, width=2)
                if d % 2 == 1:
                    im = im.filter(ImageFilter.GaussianBlur(1.5))
                if d >= 2:
                    a = np.asarray(im, dtype=np.int16) + rng.integers(-40, 41, (size, size, 3))
                    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
                im.save(folder / f"{i:05d}.png")
    marker.write_text("ok")
    return root
