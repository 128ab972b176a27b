"""GPU rows and a real-size smoke run, in one script for a lent GPU machine.

Usage (on a CUDA machine; ``--tiny`` runs the same path at toy sizes on any device, for the tests)::

    python -m bench.gpu --out DIR [--tiny] [--device cuda]

1. Real-size folders with random weights in their Hub layouts, written to disk and loaded back through the
   public loader (``core.backbones.registry.load_backbone``): SD-2.1-base (VAE, 865M-parameter UNet, a
   CLIP text encoder of SD-2.1's width) and DiT-XL/2-512 (28 blocks, 1152 wide, null class 1000).
2. Throughput of the model forward with hooks, all layers in one pass vs the default layer with early exit,
   in bf16, at batch 1 / 8 / 32, as images/s and as a fraction of the card's measured dense matmul FLOP/s
   (FLOPs of one forward counted by torch.utils.flop_counter).
3. The extraction pipeline in process (bench 16's case, :func:`bench.pipeline.pipeline_case`; model loaded,
   1,024 images of a built-in set at 512 px, all layers, fp16 storage, 4 decoding workers): the stage profile
   (decode, resize, host->device, VAE, model, pooling, device->host, write; share of wall), end-to-end img/s
   over model-only img/s (VAE + hooked forward over pixels already on the device) in the same run, the
   sequential path for comparison, channels-last weights, and the projected DomainNet (586,575 images) wall
   time per GPU from the end-to-end rate.
4. The CLI end to end (``python -m core extract --profile``, cold cache): images/s including process start and
   model load, and its projection.
Writes ``gpu.json`` and ``gpu.md`` (and ``profiles.txt``) into ``--out``; each row is flushed as it is
measured. The whole script is sized to run in under 8 minutes on one H100 (``--skip-cli`` saves ~2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

DOMAINNET = 586_575


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def vae_config(tiny: bool) -> dict:
    if tiny:
        return dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                    layers_per_block=1, sample_size=32)
    return dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)


def build_sd21(folder: Path, tiny: bool) -> Path:
    """SD-2.1-base in its Hub layout with random weights (tokenizer: the embedded model's, a small vocabulary)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from core.testing import sd_sized_unet_config

    torch.manual_seed(0)
    res = 64 if tiny else 512
    ucfg = sd_sized_unet_config(res)
    if tiny:
        ucfg.update(block_out_channels=(32, 32, 64, 64), attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32,
                    norm_num_groups=8, sample_size=res // 2)
    UNet2DConditionModel(**ucfg).save_pretrained(folder / "unet", safe_serialization=True)
    AutoencoderKL(**vae_config(tiny)).save_pretrained(folder / "vae", safe_serialization=True)
    tok_src = Path(__file__).resolve().parents[1] / "models" / "domainlens-tiny" / "tokenizer"
    tok = CLIPTokenizer.from_pretrained(tok_src)
    tok.save_pretrained(folder / "tokenizer")
    width = ucfg["cross_attention_dim"]
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width,
                                      num_hidden_layers=2 if tiny else 23, num_attention_heads=2 if tiny else 16,
                                      max_position_embeddings=tok.model_max_length, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1))
    te.save_pretrained(folder / "text_encoder", safe_serialization=True)
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"]}, indent=1))
    return folder


def build_dit_xl(folder: Path, tiny: bool) -> Path:
    """DiT-XL/2-512 in its Hub layout with random weights (legacy Transformer2DModel config, as on the Hub)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(1)
    kw = (dict(num_attention_heads=2, attention_head_dim=8, num_layers=4, sample_size=16, norm_num_groups=8)
          if tiny else dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=64))
    DiTTransformer2DModel(in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000,
                          **kw).save_pretrained(folder / "transformer", safe_serialization=True)
    p = folder / "transformer" / "config.json"
    cfg = json.loads(p.read_text())
    cfg["_class_name"] = "Transformer2DModel"
    p.write_text(json.dumps(cfg, indent=1))
    AutoencoderKL(**vae_config(tiny)).save_pretrained(folder / "vae", safe_serialization=True)
    DDIMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"], "id2label": {str(i): f"class {i}" for i in range(1000)}},
        indent=1))
    return folder


def model_rows(name: str, folder: Path, device: str, dtype: str, batch_sizes, reps: int, peak: float) -> list[dict]:
    """Hooked forward throughput through the public loader: all layers vs the default layer (early exit)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.backbones.base import Request
    from core.backbones.registry import load_backbone

    bb = load_backbone(str(folder), device, dtype)
    rows = []
    g = torch.Generator().manual_seed(0)
    for bs in batch_sizes:
        pixels = torch.rand(bs, 3, bb.resolution, bb.resolution, generator=g) * 2 - 1
        x0 = bb.encode(pixels)
        ids = [f"img{i:05d}" for i in range(bs)]
        req = Request(timestep=50, prompts=[""] * bs)
        for label, layers in (("all layers", list(bb.layers)), (f"{bb.default_layer} (early exit)",
                                                                 [bb.default_layer])):
            run = lambda: (bb.forward_features(x0, ids, layers, req), _sync())  # noqa: E731
            with FlopCounterMode(display=False) as fc:
                run()
            flops = fc.get_total_flops() / bs
            for _ in range(2):
                run()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
            ips = bs / median(ts)
            rows.append({"metric": f"[{name}, {device} {dtype}] {bb.resolution} px, {label}, batch {bs}",
                         "value": round(ips, 1), "unit": "img/s",
                         "note": f"{flops * ips / peak:.0%} of the measured matmul peak ({peak / 1e12:.0f} TFLOP/s); "
                                 f"{flops / 1e9:.0f} GFLOP per image"})
    del bb
    load_backbone.cache_clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def pipeline_rows(name: str, folder: Path, device: str, dtype: str, out: Path, n_per_domain: int, batch: int,
                  workers: int, channels_last: bool = True) -> list[dict]:
    """The extraction pipeline in process: profile, end to end / model only, sequential, channels-last."""
    from types import SimpleNamespace

    from bench.pipeline import pipeline_case
    from core.backbones.registry import load_backbone
    from core.engine import speedups

    bb = load_backbone(str(folder), device, dtype)
    texts = []
    ctx = SimpleNamespace(work=out / f"pipe-{bb.identity[:8]}", log=lambda m: (print(m, flush=True), texts.append(m)))
    label = f"{name}, {device} {dtype}, {n_per_domain * 4} images, {bb.resolution} px, {workers} workers"
    rows, d = pipeline_case(ctx, label, bb, "synthetic-pacs", n_per_domain, "all", 1, sequential=True,
                            batch_size=batch, workers=workers)
    for r in rows:
        r.pop("target", None), r.pop("met", None)
    rate = d["end_to_end_img_s"]
    rows.append({"metric": f"[{name}] projected DomainNet wall time per GPU (model loaded, all layers, end to end)",
                 "value": round(DOMAINNET / rate / 60, 1), "unit": "min",
                 "note": f"{DOMAINNET:,} images / {rate:.1f} img/s; model only {d['model_only_img_s']:.1f} img/s "
                         f"would be {DOMAINNET / d['model_only_img_s'] / 60:.0f} min (goal 20 min)"})
    if channels_last and torch_cuda():
        speedups.channels_last(bb)
        r2, d2 = pipeline_case(ctx, f"{label}, channels-last", bb, "synthetic-pacs", n_per_domain, "all", 1,
                               batch_size=batch, workers=workers)
        for r in r2:
            r.pop("target", None), r.pop("met", None)
        rows += r2[:1]
        rows.append({"metric": f"[{name}] channels-last / default, end to end img/s",
                     "value": round(d2["end_to_end_img_s"] / rate, 3), "unit": "x",
                     "note": f"{d2['end_to_end_img_s']:.1f} vs {rate:.1f} img/s; model only "
                             f"{d2['model_only_img_s']:.1f} vs {d['model_only_img_s']:.1f} img/s"})
    with (out / "profiles.txt").open("a") as f:
        f.write(f"== {label}\n" + "\n".join(texts) + "\n")
    del bb
    load_backbone.cache_clear()
    if torch_cuda():
        import torch

        torch.cuda.empty_cache()
    return rows


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cli_rows(name: str, folder: Path, device: str, out: Path, n_per_domain: int, resolution: int,
             batch: int) -> list[dict]:
    """`python -m core extract --profile` end to end (decode, VAE, model, fp16 cache writes), cold cache."""
    cache = out / f"cache-{name}"
    cmd = [sys.executable, "-m", "core", "extract", "--dataset", "synthetic-pacs", "--model", str(folder),
           "--blocks", "all", "--timesteps", "50", "--max-per-domain", str(n_per_domain), "--resolution",
           str(resolution), "--batch-size", str(batch), "--device", device, "--cache-dir", str(cache),
           "--no-progress"]
    helptext = subprocess.run([sys.executable, "-m", "core", "extract", "--help"], capture_output=True, text=True).stdout
    storage = ["--storage-dtype", "float16"] if "storage-dtype" in helptext else []
    storage += ["--profile"] if "--profile" in helptext else []
    rows = []
    for label in ("cold",):
        t0 = time.perf_counter()
        p = subprocess.run(cmd + storage, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(p.stdout[-2000:], p.stderr[-2000:], flush=True)
        with (out / "profiles.txt").open("a") as f:
            f.write(f"== CLI {name} ({label})\n{p.stdout[-3000:]}\n")
        if p.returncode != 0:
            rows.append({"metric": f"[{name}] CLI extract {label}", "value": "failed", "unit": "",
                         "note": (p.stderr or p.stdout).strip().splitlines()[-1][:200]})
            continue
        n = 4 * n_per_domain
        note = f"{n} images, {resolution} px, all layers, wall clock incl. process start and model load"
        rows.append({"metric": f"[{name}] CLI extract {label}", "value": round(wall, 1), "unit": "s", "note": note})
        if label == "cold":
            rows.append({"metric": f"[{name}] CLI extract, images/s (cold, end to end)", "value": round(n / wall, 1),
                         "unit": "img/s", "note": note})
    return rows


def flush(out: Path, info: dict, rows: list[dict], dtype: str, echo: bool = False) -> None:
    """Write what has been measured so far (a run cut short still leaves its rows)."""
    (out / "gpu.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    lines = [f"GPU rows: {info['device']}, torch {info['torch']}, {dtype}, measured dense matmul peak "
             f"{info['peak_matmul_tflops']} TFLOP/s", "", "| metric | value | unit | note |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']} | {r['unit']} | {r['note']} |" for r in rows]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (runs anywhere; for the tests)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=4, help="decoding worker processes of the pipeline rows")
    ap.add_argument("--skip-cli", action="store_true", help="leave out the CLI rows (process start + load)")
    args = ap.parse_args(argv)
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "domainlens-gpu-bench"
    shutil.rmtree(work, ignore_errors=True)
    dev = torch.device(args.device)
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    from bench.extraction import matmul_flops

    peak = matmul_flops(dev, getattr(torch, dtype), 512 if args.tiny else 8192)
    info = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "dtype": dtype, "peak_matmul_tflops": round(peak / 1e12, 1), "tiny": args.tiny}
    print(json.dumps(info), flush=True)
    rows: list[dict] = []
    bs = (1, 2) if args.tiny else (1, 8, 32)
    reps = 2 if args.tiny else 5
    t0 = time.perf_counter()
    sd = build_sd21(work / "sd21-base-random", args.tiny)
    dit = build_dit_xl(work / "dit-xl-2-512-random", args.tiny)
    rows.append({"metric": "build + save both real-size folders", "value": round(time.perf_counter() - t0, 1),
                 "unit": "s", "note": "random weights, safetensors, Hub layouts"})
    for name, folder in (("SD-2.1-base-sized", sd), ("DiT-XL/2-512-sized", dit)):
        try:
            rows += model_rows(name, folder, args.device, dtype, bs, reps, peak)
        except Exception as e:  # noqa: BLE001 - report and go on with the next model
            rows.append({"metric": f"[{name}] forward throughput", "value": "failed", "unit": "", "note": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
        flush(out, info, rows, dtype)
    n_pd = 4 if args.tiny else 256
    for name, folder in (("SD-2.1-base-sized", sd), ("DiT-XL/2-512-sized", dit)):
        try:
            rows += pipeline_rows(name, folder, args.device, dtype, work, n_pd, 2 if args.tiny else 32,
                                  0 if args.tiny else args.workers)
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append({"metric": f"[{name}] extraction pipeline", "value": "failed", "unit": "", "note": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
        flush(out, info, rows, dtype)
        if (work / "profiles.txt").is_file():
            shutil.copy(work / "profiles.txt", out / "profiles.txt")
    for name, folder in (("SD-2.1-base-sized", sd), ("DiT-XL/2-512-sized", dit)):
        if args.skip_cli:
            break
        got = cli_rows(name, folder, args.device, work, n_pd, 64 if args.tiny else 512, 2 if args.tiny else 32)
        rows += got
        rate = next((r["value"] for r in got if r["unit"] == "img/s"), None)
        if isinstance(rate, float) and rate > 0:
            rows.append({"metric": f"[{name}] projected DomainNet wall time per GPU (all layers, end to end)",
                         "value": round(DOMAINNET / rate / 3600, 2), "unit": "h",
                         "note": f"{DOMAINNET:,} images / {rate} img/s"})
        print(json.dumps(rows[-1]), flush=True)
        flush(out, info, rows, dtype)
        if (work / "profiles.txt").is_file():
            shutil.copy(work / "profiles.txt", out / "profiles.txt")
    flush(out, info, rows, dtype, echo=True)
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
