"""Benchmarks of the extraction path: all-block capture, early exit, throughput (CPU and accelerator).

Each ``bench_*`` takes a :class:`bench.context.Ctx` and returns ``{"rows": [...], "details": {...}, "notes": [...]}``."""

from __future__ import annotations

import logging
import time


from bench.context import GPU_NOTE, Ctx, _speed_row
from bench.common import (EvalCounter, extract_batch, inject_empty_prompt, interleaved, median, ratio_of_medians,
                          repeat, row, sd_sized_model, unet_block_features,
                          unet_inputs)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------- 1. all-block vs block-by-block


def bench_all_blocks(ctx: Ctx, batch: int | None = None, reps: int | None = None, sd: bool | None = None) -> dict:
    """Features of all B blocks from one UNet evaluation vs one full evaluation per block."""

    model, source = ctx.default_model()
    batch = batch or 32
    reps = reps or (3 if ctx.quick else 5)
    cases = [("default", model, batch, None, reps)]
    if sd if sd is not None else not ctx.quick:
        cases.append(("SD-2.1-sized @128px", sd_sized_model(), 1, 128, 2))
    rows, details = [], {"default_model": source}
    for label, m, n, res, r in cases:
        x0, ids, cond = unet_inputs(m, n, res)
        blocks = list(m.blocks)

        def all_pass():
            return unet_block_features(m, x0, ids, 50, cond, blocks)

        def naive():
            return {b: unet_block_features(m, x0, ids, 50, cond, [b], early_exit=False)[b] for b in blocks}

        with EvalCounter(m.unet) as c_all:
            fa = all_pass()
        with EvalCounter(m.unet) as c_naive:
            fn = naive()
        max_abs = max(float((fa[b] - fn[b]).abs().max()) for b in blocks)
        scale = max(float(fn[b].abs().max()) for b in blocks)
        t = interleaved({"naive": naive, "all": all_pass}, r, warmup=0)
        B = len(blocks)
        evals = c_naive.n / c_all.n
        wall = ratio_of_medians(t["naive"], t["all"])
        rows += [
            row(f"[{label}] UNet evaluations for all {B} blocks: naive / one pass", evals, "x",
                f">= {B - 1}x", evals >= B - 1, f"{c_naive.n} vs {c_all.n} evaluations, batch {n}"),
            _speed_row(f"[{label}] wall clock, naive / one pass", wall, None,
                       f"{median(t['naive']):.3f} s vs {median(t['all']):.3f} s (medians of {r})"),
            row(f"[{label}] features agree (max |diff| / max |feature|)", max_abs / scale, "", "<= 1e-5",
                max_abs / scale <= 1e-5, "bit-identical" if max_abs == 0 else ""),
        ]
        details[label] = {"blocks": blocks, "evals_naive": c_naive.n, "evals_one_pass": c_all.n,
                          "naive_s": t["naive"], "one_pass_s": t["all"], "batch": n, "max_abs_diff": max_abs}
    return {"rows": rows, "details": details, "notes": []}


# ----------------------------------------------------------------------------------- 2. early exit


def bench_early_exit(ctx: Ctx, batch: int | None = None, reps: int | None = None, sd: bool | None = None) -> dict:
    """Early exit vs full forward when only one block is wanted."""

    model, source = ctx.default_model()
    cases = [("default", model, batch or 32, None, reps or (3 if ctx.quick else 5))]
    if sd if sd is not None else True:
        cases.append(("SD-2.1-sized @128px", sd_sized_model(), 1 if ctx.quick else 2, 128, 2 if ctx.quick else 3))
    rows, details = [], {"default_model": source}
    for label, m, n, res, r in cases:
        x0, ids, cond = unet_inputs(m, n, res)
        for block in ("up_blocks.1", "down_blocks.0"):
            full = lambda: unet_block_features(m, x0, ids, 50, cond, [block], early_exit=False)  # noqa: E731
            ee = lambda: unet_block_features(m, x0, ids, 50, cond, [block], early_exit=True)  # noqa: E731
            same = bool((full()[block] == ee()[block]).all())
            t = interleaved({"full": full, "ee": ee}, r, warmup=0)
            x = ratio_of_medians(t["full"], t["ee"])
            rows.append(_speed_row(f"[{label}] early exit at {block}: full / early-exit", x, 1.3,
                                   f"{median(t['full']):.3f} s vs {median(t['ee']):.3f} s, batch {n}"
                                   + ("" if same else "; FEATURES DIFFER")))
            details[f"{label}/{block}"] = {"full_s": t["full"], "early_exit_s": t["ee"], "identical": same}
    return {"rows": rows, "details": details, "notes": [
        "Early exit skips what follows the block: for up_blocks.1, the later (highest-resolution) up blocks and "
        "conv_out. At 128 px the SD-2.1-sized UNet's time is dominated by its 1280-channel low-resolution blocks (about 3.4 GB of weights streamed per "
        "call at batch 1-2), which early exit cannot skip, so the ratio is lower there; at 256 / 512 px, where the "
        "high-resolution levels cost more, bench 3 measures it (SD-2.1 features are taken at 512 px)."]}


# ----------------------------------------------------------------------------------- 3. throughput


def bench_throughput(ctx: Ctx, n_images: int | None = None, batch_sizes=(1, 8, 32, 64), reps: int | None = None,
                     sd_resolutions=None) -> dict:
    """Images/s of the default model by batch size; SD-2.1-sized UNet s/img at 256 / 512 px."""
    import torch

    from core.engine.compute import run_batches

    model, source = ctx.default_model()
    n = n_images or (64 if ctx.quick else 128)
    reps = reps or (2 if ctx.quick else 3)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 3, model.resolution, model.resolution, generator=g) * 2 - 1
    ids = [f"img{i:05d}" for i in range(n)]
    prompts = [""] * n
    rows, details = [], {"default_model": source, "n_images": n}
    block_sets = [("all blocks", list(model.blocks))] + ([] if ctx.quick else [("up_blocks.1", ["up_blocks.1"])])
    for blocks_label, blocks in block_sets:
        rates = {}
        for bs in batch_sizes:
            fn = lambda sl: extract_batch(model, pixels[sl], ids[sl], prompts[sl], blocks, 50, 0, 1)  # noqa: E731
            ts = repeat(lambda: run_batches(fn, n, bs), reps, warmup=1)
            rates[bs] = n / median(ts)
            rows.append(row(f"[default, CPU] {blocks_label}, batch {bs}", round(rates[bs], 1), "img/s", None, None,
                            "VAE encode + UNet (+ cached empty-prompt embedding)"))
        details[blocks_label] = rates
    # thread count: the same batch-32 extraction with 1 and with 2 torch threads, interleaved
    threads0 = torch.get_num_threads()
    fn = lambda sl: extract_batch(model, pixels[sl], ids[sl], prompts[sl], list(model.blocks), 50, 0, 1)  # noqa: E731
    runs = {}
    for th in (1, 2):
        runs[th] = lambda th=th: (torch.set_num_threads(th), run_batches(fn, n, 32))
    try:
        t = interleaved(runs, reps, warmup=1)
    finally:
        torch.set_num_threads(threads0)
    rows.append(row("[default, CPU] all blocks, batch 32: 2 threads / 1 thread throughput",
                    round(ratio_of_medians(t[1], t[2]), 2), "x", None, None,
                    f"{n / median(t[1]):.1f} img/s (1) vs {n / median(t[2]):.1f} img/s (2); the machine is shared"))
    details["threads_1_vs_2_s"] = t
    sd_res = sd_resolutions if sd_resolutions is not None else ((256,) if ctx.quick else (256, 512))
    if sd_res:
        m = sd_sized_model()
        for res in sd_res:
            x0, sids, cond = unet_inputs(m, 1, res)
            full = lambda: unet_block_features(m, x0, sids, 50, cond, list(m.blocks))  # noqa: E731
            up1 = lambda: unet_block_features(m, x0, sids, 50, cond, ["up_blocks.1"])  # noqa: E731
            t = interleaved({"full": full, "up1": up1}, 2 if ctx.quick else 3, warmup=1)
            rows += [
                row(f"[SD-2.1-sized, CPU] {res} px, UNet all blocks", round(median(t["full"]), 2), "s/img"),
                row(f"[SD-2.1-sized, CPU] {res} px, UNet up to up_blocks.1 (early exit)",
                    round(median(t["up1"]), 2), "s/img"),
                _speed_row(f"[SD-2.1-sized, CPU] {res} px, early exit at up_blocks.1: all blocks / up_blocks.1",
                           ratio_of_medians(t["full"], t["up1"]), 1.3, "batch 1, interleaved pairs"),
            ]
            details[f"sd{res}"] = t
    notes = ["SD-2.1-sized figures are UNet-only (random weights, batch 1, fp32); the VAE encoder adds to them."]
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        g_rows, details["gpu"] = accelerator_throughput(torch.device("cuda"), dtype, quick=ctx.quick)
        rows += g_rows
        notes.append(f"GPU rows: {torch.cuda.get_device_name()}, {str(dtype).replace('torch.', '')}, SD-2.1-sized "
                     "random-weight UNet, all blocks captured in one pass; 'of peak' = achieved FLOP/s (FLOPs of "
                     "one forward counted by torch.utils.flop_counter) / this card's measured dense matmul FLOP/s.")
    else:
        rows.append(row("GPU throughput", "n/a", "", None, None, GPU_NOTE))
        notes.insert(0, GPU_NOTE)
    return {"rows": rows, "details": details, "notes": notes}


def matmul_flops(device, dtype, n: int = 8192, reps: int = 10) -> float:
    """Measured dense matmul throughput (FLOP/s) of ``device`` in ``dtype``: the card's practical peak."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def accelerator_throughput(device, dtype, quick: bool = False, resolution: int = 512, batch_sizes=None,
                           unet_config: dict | None = None, matmul_n: int = 8192) -> tuple[list[dict], dict]:
    """Images/s of an SD-2.1-sized UNet (all blocks in one pass, and up to up_blocks.1) on ``device`` in
    ``dtype``, and the fraction of the card's measured matmul FLOP/s it achieves. Runs on any device (the
    tests run it on the CPU with a tiny config)."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from core.backbones.sd_unet import SDUNet
    from core.testing import sd_sized_unet_config

    cfg = unet_config or sd_sized_unet_config(resolution)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg).eval().requires_grad_(False).to(device, dtype)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    model = SDUNet.from_components("sd21-sized-random", "random", unet, sched, resolution=resolution,
                                   device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    r = cfg["sample_size"]
    g = torch.Generator().manual_seed(0)
    batch_sizes = batch_sizes or ((1, 8) if quick else (1, 8, 32))
    peak = matmul_flops(device, dtype, matmul_n)
    rows, out = [], {"peak_flops": peak, "rates": {}}
    with torch.no_grad():
        for bs in batch_sizes:
            x0 = torch.randn(bs, cfg["in_channels"], r, r, generator=g).to(device)
            inject_empty_prompt(model, torch.randn(77, cfg["cross_attention_dim"], generator=g))
            cond = [""] * bs
            ids = [f"img{i:05d}" for i in range(bs)]
            for label, blocks in (("all blocks", list(model.blocks)), ("up_blocks.1", ["up_blocks.1"])):
                run = lambda: (unet_block_features(model, x0, ids, 50, cond, blocks), sync())  # noqa: E731
                if bs == batch_sizes[0]:
                    with FlopCounterMode(display=False) as fc:
                        run()
                    out.setdefault("flops_per_img", {})[label] = fc.get_total_flops() / bs
                ts = repeat(run, 3 if quick else 5, warmup=2)
                ips = bs / median(ts)
                frac = out["flops_per_img"][label] * ips / peak
                out["rates"][f"{label}@{bs}"] = {"img_s": ips, "of_peak": frac}
                rows.append(row(f"[SD-2.1-sized, {device.type} {str(dtype).replace('torch.', '')}] {resolution} px, "
                                f"{label}, batch {bs}", round(ips, 1), "img/s", None, None,
                                f"{frac:.0%} of the measured matmul peak ({peak / 1e12:.1f} TFLOP/s); "
                                f"{out['flops_per_img'][label] / 1e9:.0f} GFLOP per image"))
    return rows, out
