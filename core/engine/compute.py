"""One chunk's features from its images: decode (threads or DataLoader workers), VAE-encode (memoised per
process, :data:`LATENT_MEMO`) and the hooked forward in fixed micro-batches (:data:`MICRO_BATCH` on the CPU, so
the batch size never changes a number), with the stage times of ``--profile``. :mod:`core.engine.extract` runs
it chunk by chunk."""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from core.backbones.base import Backbone, Request
from core.engine.hashing import stable_hash
from core.engine.loader import load_pixels

logger = logging.getLogger(__name__)

MICRO_BATCH = 8  # images per model call on the CPU, whatever the batch size (see core.engine.extract)


def request_of(config, prompts: Sequence[str] = ()) -> Request:
    """The backbone request of an extraction config (a :class:`core.engine.extract.ExtractionConfig`) for these
    prompts."""
    return Request(timestep=config.timestep, prompts=tuple(prompts), class_label=config.class_label,
                   seed=config.seed, ensemble=config.ensemble, noise_mode=config.noise_mode)


class _LatentMemo:
    """Clean latents of recent chunks, in memory (bounded), so a sweep over timesteps or prompts decodes
    and VAE-encodes each image once per process."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, tuple] = OrderedDict()

    def get(self, key: str):
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return None

    def put(self, key: str, value: tuple) -> None:
        self._d[key] = value
        while self._d and sum(v[2].numel() * v[2].element_size() for v in self._d.values()) > self.max_bytes:
            self._d.popitem(last=False)


LATENT_MEMO = _LatentMemo(int(os.environ.get("DOMAINLENS_LATENT_MEMO_MB", "1024")) << 20)


def micro_batch_size(model: Backbone, batch_size: int) -> int:
    """Images per model call: fixed on the CPU (bit-identical features whatever the batch size), the batch
    size elsewhere."""
    return MICRO_BATCH if model.device.type == "cpu" else batch_size


def run_fixed_batches(fn: Callable[[list[int]], dict[str, np.ndarray]], n: int, size: int,
                      progress: Callable[[int], None] | None = None, concat: Callable = np.concatenate
                      ) -> dict[str, np.ndarray]:
    """Call ``fn(indices)`` on consecutive runs of ``size`` items, the last run padded to ``size`` with its
    last index repeated (so every call has the same shape); returns the real rows only, concatenated. A CUDA
    out-of-memory halves ``size`` (see :func:`run_batches`)."""
    def one(sl: slice, current: int):
        idx = list(range(sl.start, sl.stop))
        real = len(idx)
        idx += [idx[-1]] * (current - real)
        return {k: v[:real] for k, v in fn(idx).items()}

    return run_batches(one, n, size, progress=progress, concat=concat, with_size=True)


def _stage(profile, name):
    return profile.stage(name) if profile is not None else _NO_STAGE


class _NoStage:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_STAGE = _NoStage()


def chunk_inputs(model: Backbone, recs, resolution, batch_size, pool, fingerprint, profile=None, overlap=True):
    """(readable records, skipped (id, reason), clean encodings x0): memoised on the CPU; with ``overlap`` a
    freshly encoded chunk's x0 is returned where it was computed (on the device) and the memo gets a host copy."""
    memo_key = stable_hash([model.identity, str(model.dtype), resolution, fingerprint, [r.id for r in recs]])
    hit = LATENT_MEMO.get(memo_key)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    loaded = load_pixels(model, recs, resolution, pool)
    if profile is not None:
        if not hasattr(pool, "loaded"):  # decoded here, by the thread pool: the main thread waited for it
            profile.add("waiting for images", time.perf_counter() - t0)
        for *_, (t_dec, t_res) in loaded:
            profile.add("decode", t_dec)
            profile.add("resize", t_res)
    ok = [r for r, (x, *_) in zip(recs, loaded) if x is not None]
    skipped = [(r.id, err) for r, (x, err, _) in zip(recs, loaded) if x is None]
    for rid, why in skipped:
        logger.warning("skipped unreadable image %s: %s", rid, why)
    if not ok:
        return ok, skipped, None
    xs = [x for x, *_ in loaded if x is not None]
    on_cuda = model.device.type == "cuda"
    with _stage(profile, "host->device"):
        if overlap and on_cuda:  # one pinned buffer, one asynchronous copy of the chunk
            pixels = torch.empty((len(xs), *xs[0].shape), dtype=xs[0].dtype, pin_memory=True)
            torch.stack(xs, out=pixels)
            pixels = pixels.to(model.device, non_blocking=True)
        else:
            pixels = torch.stack(xs)  # (n, 3, R, R); encode() moves each micro-batch
    with _stage(profile, "VAE"):
        x0 = run_fixed_batches(lambda idx: {"x0": model.encode(pixels[idx]) if overlap
                                            else model.encode(pixels[idx]).cpu()}, len(ok),
                               micro_batch_size(model, batch_size), concat=torch.cat)["x0"]  # (n, c, h, w)
    with _stage(profile, "device->host"):
        host = x0.cpu()
    LATENT_MEMO.put(memo_key, (ok, skipped, host))
    return ok, skipped, x0


def compute_chunk(model: Backbone, config, recs, blocks, resolution, batch_size, pool, progress_in_chunk,
                   fingerprint="", profile=None, overlap=True):
    ok, skipped, inputs = chunk_inputs(model, recs, resolution, batch_size, pool, fingerprint, profile, overlap)
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([r.id for r in ok], dtype=str),
        "skipped_ids": np.array([s[0] for s in skipped], dtype=str),
        "skipped_reasons": np.array([s[1] for s in skipped], dtype=str),
    }
    if not ok:
        for b in blocks:
            arrays[f"f:{b}"] = np.zeros((0, 0), np.float32)
        return arrays
    ids = [r.id for r in ok]
    prompts = [config.prompt.for_class(r.cls, r.domain, r.id) for r in ok]

    def fn(idx: list[int]):
        request = request_of(config, [prompts[i] for i in idx])
        with _stage(profile, "model"):
            out = model.forward_features(inputs[idx], [ids[i] for i in idx], blocks, request)
        with _stage(profile, "device->host"):
            return {b: v.numpy() for b, v in out.items()}

    counted = [0]

    def progress(k: int):
        counted[0] += k
        progress_in_chunk(counted[0])

    feats = run_fixed_batches(fn, len(ok), micro_batch_size(model, batch_size), progress=progress)
    with _stage(profile, "device->host"):
        for b in blocks:
            arrays[f"f:{b}"] = feats[b].astype(np.float32)
    if profile is not None:
        profile.images += len(ok)
    return arrays


def run_batches(
    fn: Callable[..., dict[str, np.ndarray]],
    n: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    concat: Callable = np.concatenate,
    with_size: bool = False,
) -> dict[str, np.ndarray]:
    """Apply ``fn`` to consecutive slices of ``n`` items (``fn(slice, current_batch_size)`` with
    ``with_size``); a CUDA out-of-memory halves the batch and carries on from where it stopped. Returns the
    concatenated arrays."""
    parts: dict[str, list[np.ndarray]] = {}
    i = 0
    while i < n:
        sl = slice(i, min(n, i + batch_size))
        try:
            out = fn(sl, batch_size) if with_size else fn(sl)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            logger.warning("CUDA out of memory: batch size halved to %d", batch_size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
        i = sl.stop
        if progress:
            progress(sl.stop - sl.start)
    return {k: concat(v) for k, v in parts.items()}
