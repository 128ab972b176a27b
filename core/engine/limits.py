"""Bounds on sizes a user controls, and a memory estimate checked before anything large is allocated.

A size typed on the command line or in the app must never make the process take the machine's memory
(``--resolution 100000`` once took 22 GB before the kernel's OOM killer fired). Each bound says why.
"""

from __future__ import annotations

import os
import threading

import torch

from core.backbones.base import ExtractionError

MAX_RESOLUTION = 2048  # SD-XL works at 1024 px; 2048 px already needs ~16x SD-2.1's activation memory
MAX_BATCH_SIZE = 4096
MAX_ENSEMBLE = 64
MAX_SEEDS = 100
MAX_WORKERS = 64

BOUNDS = {
    "resolution": (8, MAX_RESOLUTION, "memory grows with the square of the resolution: several GiB of activations per "
                                      "2048 px image (estimate_extraction_bytes)"),
    "batch_size": (1, MAX_BATCH_SIZE, "a batch is held in memory at once; larger batches are not faster"),
    "ensemble": (1, MAX_ENSEMBLE, "each noise draw is one more UNet pass per image"),
    "n_seeds": (1, MAX_SEEDS, "each k-means seed refits the clustering; 5 is the default"),
    "workers": (0, MAX_WORKERS, "each worker is a process holding decoded chunks; 0 decodes in the main process, "
                                "and more workers than CPU cores is not faster"),
}
# the research views' counts (issue 18): each is more model passes or refits, so each is bounded with the cost
BOUNDS.update({
    "timesteps": (1, 64, ("each timestep is one more model pass over every image (and, for CKA, one more row and "
                          "column of the layer grid); the defaults use 1 to 9")),
    "noise_seeds": (1, MAX_SEEDS, ("each noise seed is one more extraction of every image (a model pass over the "
                                   "dataset); the default is 5")),
    "kmeans_seeds": (1, MAX_SEEDS, "each k-means seed refits the clustering; the default is 10"),
    "bootstraps": (0, 1000, "each bootstrap refits the clustering on a resample; the default is 20"),
})


def check_size(name: str, value: int | None) -> None:
    """Raise :class:`ExtractionError` when ``value`` is outside ``BOUNDS[name]`` (None = default, allowed)."""
    if value is None:
        return
    lo, hi, why = BOUNDS[name]
    label = "the number of timesteps" if name == "timesteps" else f"`{name}`"
    if int(value) < lo:
        raise ExtractionError(f"{label} must be >= {lo}, got {value:,} (allowed: {lo} to {hi:,}).")
    if int(value) > hi:
        raise ExtractionError(f"{label} must be <= {hi:,}, got {value:,} ({why}).")


def check_timesteps(model, timesteps) -> list[int]:
    """The one check of timesteps given to any command (extract, sweep, filmstrip, cka, ...): at most
    ``BOUNDS["timesteps"]`` of them, each an integer the model's scheduler takes (``model.check_timestep``:
    out-of-range values are refused, never clipped). Models without a timestep accept anything (they ignore it)."""
    ts = list(timesteps)
    check_size("timesteps", len(ts))
    if getattr(model, "uses_timestep", False):
        ts = [model.check_timestep(t) for t in ts]
    return ts


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


PROBE_RESOLUTION = 64  # the probe pass: cheap (0.2 s for the tiny models on one CPU thread), valid for every family


def _output_bytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(_output_bytes(o) for o in out)
    if isinstance(out, dict):
        return sum(_output_bytes(o) for o in out.values())
    return sum(_output_bytes(v) for v in getattr(out, "__dict__", {}).values()) if hasattr(out, "__dataclass_fields__") \
        else 0


def probe_activation_bytes(model, probe: int = PROBE_RESOLUTION) -> int:
    """Bytes that every module of ``model`` outputs in one pass (VAE encoding + the whole network, no early
    exit) on one ``probe`` x ``probe`` image, as if all were alive at once: measured once per model (memoised
    on it). Inference frees most of them as it goes, so this bounds the live activations from above, up to
    the temporaries inside one module (attention); see :func:`activation_bytes_per_image`."""
    memo = model.__dict__.setdefault("_activation_probe", {})
    if probe in memo:
        return memo[probe]
    from core.backbones.base import Request

    owner = threading.get_ident()
    total = [0]

    def hook(module, args, out):
        if threading.get_ident() == owner:
            total[0] += _output_bytes(out)

    mods = {id(m): m for v in vars(model).values() if isinstance(v, torch.nn.Module) for m in v.modules()
            if not any(True for _ in m.children())}
    handles = [m.register_forward_hook(hook) for m in mods.values()]
    try:
        x = torch.zeros(1, 3, probe, probe)
        n = model.conditioning.num_train_timesteps
        request = Request(timestep=min(50, n - 1) if n else 0)
        with torch.inference_mode():
            model.forward_features(model.encode(x), ["probe"], list(model.layers), request, early_exit=False)
    finally:
        for h in handles:
            h.remove()
    memo[probe] = total[0]
    return total[0]


def activation_bytes_per_image(model, resolution: int) -> int | None:
    """Host memory of one image's pass at ``resolution``: the probe (:func:`probe_activation_bytes`) scaled
    by the area, (R / 64)^2 (activations grow with the pixels and tokens). None when the model computes
    off the CPU (activations live in device memory) or has no layers to probe.

    Calibration (tests/test_reliability_models.py, peak RSS measured in a subprocess, one image): the tiny
    SD model peaks at 25 / 63 / 128 MiB at 128 / 256 / 512 px, 5.4 GB at 2048 px, against estimates of
    53 / 213 / 853 MiB and 13.6 GB (the ratio shrinks at 2048 px, where attention's temporaries grow
    faster than the pixels); the former fixed 64 maps per pixel estimated 4 MiB at 128 px and 1.05 GiB at
    2048 px, under the measured peaks."""
    if getattr(getattr(model, "device", None), "type", "cpu") != "cpu" or not getattr(model, "layers", None):
        return None
    if getattr(model, "root", None) is None:
        return None
    per = probe_activation_bytes(model)
    return int(per * (resolution / PROBE_RESOLUTION) ** 2)


def estimate_extraction_bytes(resolution: int, n_images: int, batch_size: int,
                              per_image_activations: int | None = None, chunks_decoded: int = 1) -> int:
    """Peak host memory of the extraction loop, estimated before allocating it: the decoded float32 pixels of
    ``chunks_decoded`` chunks of ``n_images`` (n x 3 x R x R x 4 bytes each: the chunk being computed, plus those
    DataLoader workers decode ahead) plus one model call's activations: ``batch_size`` (the images per model
    call: the micro-batch on the CPU) times ``per_image_activations`` (measured for the model:
    :func:`activation_bytes_per_image`), else ~64 float32 maps of the input size per image (a rough figure for
    SD-sized UNets)."""
    pixels = max(1, chunks_decoded) * n_images * 3 * resolution * resolution * 4
    per = 64 * resolution * resolution * 4 if per_image_activations is None else per_image_activations
    activations = min(batch_size, max(n_images, 1)) * per
    return pixels + activations


def check_memory(resolution: int, n_images: int, batch_size: int, available: int | None = None,
                 per_image_activations: int | None = None, chunks_decoded: int = 1) -> None:
    """Refuse, with the numbers, an extraction whose estimate exceeds 80% of the available memory.
    ``batch_size``: images per model call; ``chunks_decoded``: chunks of ``n_images`` decoded at once."""
    if os.environ.get("DOMAINLENS_SKIP_MEMORY_CHECK"):
        return
    need = estimate_extraction_bytes(resolution, n_images, batch_size, per_image_activations, chunks_decoded)
    have = available_memory_bytes() if available is None else available
    if have is not None and need > 0.8 * have:
        ahead = f" x {chunks_decoded} chunks decoded at once" if chunks_decoded > 1 else ""
        raise ExtractionError(
            f"resolution {resolution} px with {batch_size} images per model call needs about {need / 2**30:.1f} "
            f"GiB (decoded pixels of {n_images} images{ahead} + one call's activations) but only "
            f"{have / 2**30:.1f} GiB is available; use a smaller --resolution or --batch-size"
            + (" or fewer --workers" if chunks_decoded > 1 else "") + ".")
