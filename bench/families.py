"""Benchmark 12: every model family, all layers vs the default layer with early exit.

Each ``bench_*`` takes a :class:`bench.context.Ctx` and returns ``{"rows": [...], "details": {...}, "notes": [...]}``."""

from __future__ import annotations

import logging


from bench.context import Ctx
from bench.common import (interleaved, median, row)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------- 12. every family: all layers vs default layer


FAMILY_KINDS = ("dit", "sdxl", "sd3", "flux", "pixart", "ddpm", "clip", "siglip", "dinov2", "dinov2-registers", "mae")


def bench_families(ctx: Ctx, kinds=FAMILY_KINDS, batch: int | None = None, reps: int | None = None) -> dict:
    """Per family (a tiny random model in its Hub layout, loaded through the public loader, CPU fp32):
    images/s of the feature pass for all layers vs for the default layer with early exit."""
    import shutil

    import torch

    from core.backbones.base import Request
    from core.backbones.registry import load_backbone
    from core.tiny_families import make_tiny

    batch = batch or (8 if ctx.quick else 16)
    reps = reps or (3 if ctx.quick else 7)
    rows, details = [], {}
    root = ctx.work / "tiny-families"
    try:
        for kind in kinds:
            folder = make_tiny(kind, root / kind)
            bb = load_backbone(str(folder), "cpu", "float32")
            g = torch.Generator().manual_seed(0)
            pixels = torch.rand(batch, 3, bb.resolution, bb.resolution, generator=g) * 2 - 1
            x0 = bb.encode(pixels)
            ids = [f"img{i}" for i in range(batch)]
            req = Request(timestep=50, prompts=("",) * batch if bb.uses_prompt else ())
            ran: list[str] = []
            handles = [bb.module(n).register_forward_pre_hook(lambda m, a, n=n: ran.append(n)) for n in bb.layers]
            try:
                bb.forward_features(x0, ids, [bb.default_layer], req)
            finally:
                for h in handles:
                    h.remove()
            t = interleaved({"all": lambda: bb.forward_features(x0, ids, bb.layers, req),
                             "default": lambda: bb.forward_features(x0, ids, [bb.default_layer], req)}, reps, warmup=1)
            ips_all, ips_def = batch / median(t["all"]), batch / median(t["default"])
            n_run = len(set(ran))
            rows += [
                row(f"[{bb.family}: {kind}] img/s, all {len(bb.layers)} layers in one pass", round(ips_all, 1), "img/s",
                    None, None, f"batch {batch} at {bb.resolution} px, median of {reps}"),
                row(f"[{bb.family}: {kind}] img/s, default layer {bb.default_layer} with early exit", round(ips_def, 1),
                    "img/s", None, None, f"{n_run} of {len(bb.layers)} layers run; "
                                         f"{ips_def / ips_all:.2f}x the all-layer rate"),
            ]
            details[kind] = {"family": bb.family, "layers": bb.layers, "default_layer": bb.default_layer,
                             "layers_run_for_default": n_run, "all_s": t["all"], "default_s": t["default"],
                             "batch": batch, "resolution": bb.resolution}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "details": details,
            "notes": ["Tiny random models (core/tiny_families.py, 30K-400K parameters): the numbers show the seam's "
                      "overhead and how much early exit saves at each family's default layer, not the speed of the "
                      "real checkpoints. Times cover the feature pass only (VAE encoding and preprocessing excluded)."]}
