"""Where an extraction's time goes: seconds per stage and each stage's share of the wall time.

``python -m core extract --profile`` (and ``get_features(..., profile=StageTimes(...))``) times every stage of
the path from image files to cache chunks:

* ``decode`` (file -> RGB, :func:`core.data.datasets.load_rgb`) and ``resize`` (the backbone's ``preprocess``:
  resize, center crop, scaling), per image, in the decoding threads or DataLoader worker processes;
* ``waiting for images``: the main thread waiting for decoded images (decode is the bottleneck when it is large);
* ``host->device``: stacking the chunk's pixels (into pinned memory on CUDA) and the copy to the device;
* ``VAE``: the clean encoding (``Backbone.encode``, e.g. VAE latents) on the device;
* ``model``: the hooked forward passes (noise, conditioning, the network up to the deepest layer) less pooling;
  the pooled features (a few KB per image) leave the device inside the forward and are counted here;
* ``pooling``: the hooks' pooling of each layer's output (timed inside the hooks);
* ``device->host``: latents copied back for the in-memory latent memo, features as float32 arrays;
* ``write``: encoding and writing the chunk files (and reading their headers back), in a background thread.

On CUDA each stage synchronises the device at its start and end, so the times are the device's own (the
synchronisation costs a little overlap: the profile is a measurement mode). Stages that run outside the main
thread (decode and resize in workers, writes in the writer thread) overlap the others: their share of wall time
says how much of it they would take if they did not. The main thread's stages and ``other`` (Python, progress,
bookkeeping) add up to the wall time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

STAGES = ("decode", "resize", "waiting for images", "host->device", "VAE", "model", "pooling", "device->host",
          "write")
BACKGROUND = ("decode", "resize", "write")  # not on the main thread (overlapped with it)


class StageTimes:
    """Seconds per stage (thread-safe sums) of one or more extraction calls; ``wall`` is set by the caller (or by
    :meth:`timing`)."""

    def __init__(self, device=None):
        import torch

        self.seconds = {s: 0.0 for s in STAGES}
        self.images = 0
        self.wall = 0.0
        self.workers = 0
        self._lock = threading.Lock()
        dev = torch.device(device) if device is not None else None
        self._sync = torch.cuda.synchronize if dev is not None and dev.type == "cuda" else None

    def add(self, stage: str, seconds: float) -> None:
        if stage not in self.seconds:
            raise KeyError(f"unknown stage {stage!r}; one of {STAGES}")
        with self._lock:
            self.seconds[stage] += seconds

    def sync(self) -> None:
        if self._sync is not None:
            self._sync()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (the device synchronised before and after on CUDA)."""
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.add(name, time.perf_counter() - t0)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Add the block's wall time to :attr:`wall`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - t0

    def table(self) -> list[dict]:
        """One row per stage: seconds, ms per image and share of the wall time (``model`` less ``pooling``, which
        runs inside it), then ``other`` (the main thread's time in no stage)."""
        s = dict(self.seconds)
        s["model"] = max(0.0, s["model"] - s["pooling"])
        wall = self.wall or sum(v for k, v in s.items() if k not in BACKGROUND) or 1e-9
        n = max(1, self.images)
        rows = [{"stage": k, "seconds": v, "ms_per_image": 1000 * v / n, "share": v / wall,
                 "background": k in BACKGROUND} for k, v in s.items()]
        main = sum(v for k, v in s.items() if k not in BACKGROUND)
        rows.append({"stage": "other", "seconds": max(0.0, wall - main), "ms_per_image": 1000 * max(0.0, wall - main) / n,
                     "share": max(0.0, wall - main) / wall, "background": False})
        return rows

    def format(self) -> str:
        n = self.images
        rate = n / self.wall if self.wall else float("nan")
        where = (f"{self.workers} worker process(es)" if self.workers else "the decoding threads")
        lines = [f"profile: {n} image(s) through the model in {self.wall:.2f} s ({rate:.1f} img/s)",
                 f"  {'stage':<20} {'seconds':>9} {'ms/image':>9} {'share of wall':>14}"]
        for r in self.table():
            note = ""
            if r["stage"] in ("decode", "resize"):
                note = f"  (in {where}; overlapped)" if self.workers else f"  (summed over {where})"
            elif r["stage"] == "write":
                note = "  (background writer thread; overlapped)"
            lines.append(f"  {r['stage']:<20} {r['seconds']:>9.3f} {r['ms_per_image']:>9.2f} {100 * r['share']:>13.1f}%"
                         f"{note}")
        return "\n".join(lines)


@contextlib.contextmanager
def timed_pooling(model, profile: StageTimes | None) -> Iterator[None]:
    """Within the block, the hooks' pooling of ``model`` is timed as the ``pooling`` stage (the bound method is
    shadowed on this instance and restored after)."""
    if profile is None:
        yield
        return
    orig = model.pool

    def pool(layer, h):
        with profile.stage("pooling"):
            return orig(layer, h)

    model.__dict__["pool"] = pool
    try:
        yield
    finally:
        model.__dict__.pop("pool", None)
