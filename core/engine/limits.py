"""Bounds on sizes a user controls, and a memory estimate checked before anything large is allocated.

A size typed on the command line or in the app must never make the process take the machine's memory
(``--resolution 100000`` once took 22 GB before the kernel's OOM killer fired). Each bound says why.
"""

from __future__ import annotations

import os

from core.backbones.base import ExtractionError

MAX_RESOLUTION = 2048  # SD-XL works at 1024 px; 2048 px already needs ~16x SD-2.1's activation memory
MAX_BATCH_SIZE = 4096
MAX_ENSEMBLE = 64
MAX_SEEDS = 100

BOUNDS = {
    "resolution": (8, MAX_RESOLUTION, "memory grows with the square of the resolution: about 1 GiB of activations per "
                                      "2048 px image (estimate_extraction_bytes)"),
    "batch_size": (1, MAX_BATCH_SIZE, "a batch is held in memory at once; larger batches are not faster"),
    "ensemble": (1, MAX_ENSEMBLE, "each noise draw is one more UNet pass per image"),
    "n_seeds": (1, MAX_SEEDS, "each k-means seed refits the clustering; 5 is the default"),
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


def estimate_extraction_bytes(resolution: int, n_images: int, batch_size: int) -> int:
    """Peak host memory of one extraction chunk, estimated before allocating it: the decoded float32 pixels
    of the chunk (n x 3 x R x R x 4 bytes) plus one batch's UNet activations, taken as ~64 float32 maps of
    the input size per image (a deliberately rough upper bound for SD-sized UNets at 1/8 latent size)."""
    pixels = n_images * 3 * resolution * resolution * 4
    activations = min(batch_size, max(n_images, 1)) * 64 * resolution * resolution * 4
    return pixels + activations


def check_memory(resolution: int, n_images: int, batch_size: int, available: int | None = None) -> None:
    """Refuse, with the numbers, an extraction whose estimate exceeds 80% of the available memory."""
    if os.environ.get("DOMAINLENS_SKIP_MEMORY_CHECK"):
        return
    need = estimate_extraction_bytes(resolution, n_images, batch_size)
    have = available_memory_bytes() if available is None else available
    if have is not None and need > 0.8 * have:
        raise ExtractionError(
            f"resolution {resolution} px with batch size {batch_size} needs about {need / 2**30:.1f} GiB "
            f"(decoded pixels of {n_images} images + one batch of activations) but only "
            f"{have / 2**30:.1f} GiB is available; use a smaller --resolution or --batch-size.")
