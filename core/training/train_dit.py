"""Train DomainLens' second embedded model, ``domainlens-tiny-dit``: a tiny class-conditional DiT, from scratch on CPU.

The result is a diffusers DiT folder laid out like facebook/DiT-XL-2-256: ``model_index.json``
(``_class_name: DiTPipeline`` plus ``id2label``), ``transformer/`` (``DiTTransformer2DModel``, adaLN-zero,
patch size 2), ``vae/`` (a byte-for-byte copy of domainlens-tiny's AutoencoderKL, 64x64x3 -> 16x16x4) and
``scheduler/`` (a ``DDPMScheduler`` with domainlens-tiny's betas). It is trained on the TRAIN splits of the
two built-in data sets only (``synthetic-pacs:train`` and ``rotated-digits:train``), like domainlens-tiny.

Class conditioning: the labels are the joint class list of both datasets (``rotated-digits/0`` ...
``synthetic-pacs/triangle``, 16 classes, the same list as domainlens-cnn); ``num_embeds_ada_norm = 16`` so
the null (unconditional) class is index 16, learnt by replacing the label with it for ``p_uncond`` (10 %) of
the training images (seeded here, not by diffusers' internal, per-block and unseeded label dropout).

Usage::

    python -m core.training.train_dit --out models/domainlens-tiny-dit [--steps N] [--seed S] [--batch-size B]

Phases (public functions, so tests can run them with a few steps): :func:`load_vae` +
:func:`core.training.train_default.encode_latents` (latent modes of the training set, computed once,
times the VAE's scaling factor), :func:`train_dit` (epsilon prediction, t ~ U{0..999}), :func:`evaluate`
(held-out denoising loss at t = 100 / 500, with the true label and with the null class, trained vs. a
freshly initialised transformer of the same architecture).

Everything is seeded: the same seed, step count and thread count give bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.training.data import HELDOUT_SETS, TRAIN_SETS, ImageSet, load_images  # noqa: E402
from core.training.loop import _lr_lambda, _Order, _say, deterministic, n_params  # noqa: E402
from core.training.train_default import encode_latents  # noqa: E402
from core.training.train_baseline import joint_labels  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VAE = REPO_ROOT / "models" / "domainlens-tiny" / "vae"
DEFAULT_SCHEDULER = REPO_ROOT / "models" / "domainlens-tiny" / "scheduler"


@dataclass
class DiTConfig:
    """All hyper-parameters; stored verbatim in ``training_log.json``."""

    seed: int = 0
    batch_size: int = 32
    steps: int = 1000
    # transformer (DiT-XL/2 is 28 blocks, 16 heads x 72, patch 2; this is a scaled-down DiT-?/2)
    num_layers: int = 12
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    patch_size: int = 2
    dit_init: bool = True  # the DiT paper's init: xavier linears, zero adaLN modulation and final layer
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    p_uncond: float = 0.10
    # scheduler (domainlens-tiny's betas)
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # evaluation
    eval_timesteps: tuple = (100, 500)
    eval_max_images: int | None = None  # None = all held-out images
    eval_stride: int = 2
    log_every: int = 100


# ------------------------------------------------------------------------------------------ models


def load_vae(vae_dir: str | os.PathLike = DEFAULT_VAE):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(vae_dir), use_safetensors=True).eval()


def build_scheduler(cfg: DiTConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule, prediction_type="epsilon",
                         clip_sample=False)


def build_transformer(cfg: DiTConfig, num_classes: int, latent_channels: int = 4, sample_size: int = 16):
    """A DiTTransformer2DModel seeded from ``cfg.seed`` (DiT init if ``cfg.dit_init``)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(cfg.seed)
    tr = DiTTransformer2DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        in_channels=latent_channels, out_channels=latent_channels, num_layers=cfg.num_layers,
        sample_size=sample_size, patch_size=cfg.patch_size, num_embeds_ada_norm=num_classes,
        norm_type="ada_norm_zero",
    )
    if cfg.dit_init:
        dit_initialize(tr)
    return tr


@torch.no_grad()
def dit_initialize(tr) -> None:
    """The initialisation of the DiT paper (facebookresearch/DiT models.py ``initialize_weights``)."""
    g = torch.Generator().manual_seed(12345)

    def xavier(w):
        fan_out, fan_in = w.shape[0], int(np.prod(w.shape[1:]))
        a = float(np.sqrt(6.0 / (fan_in + fan_out)))
        w.copy_((torch.rand(w.shape, generator=g) * 2 - 1) * a)

    for m in tr.modules():
        if isinstance(m, torch.nn.Linear):
            xavier(m.weight)
            if m.bias is not None:
                m.bias.zero_()
    xavier(tr.pos_embed.proj.weight)
    tr.pos_embed.proj.bias.zero_()
    for block in tr.transformer_blocks:
        emb = block.norm1.emb
        emb.class_embedder.embedding_table.weight.copy_(
            torch.randn(emb.class_embedder.embedding_table.weight.shape, generator=g) * 0.02)
        for lin in (emb.timestep_embedder.linear_1, emb.timestep_embedder.linear_2):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.02)
        block.norm1.linear.weight.zero_()
        block.norm1.linear.bias.zero_()
    for lin in (tr.proj_out_1, tr.proj_out_2):
        lin.weight.zero_()
        lin.bias.zero_()


# ------------------------------------------------------------------------------------------ training


def train_dit(tr, latents: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: DiTConfig,
              noise_scheduler, steps: int | None = None, log: Callable | None = print) -> dict:
    """Train the transformer in place (epsilon prediction on scaled latents, seeded label dropout)."""
    steps = cfg.steps if steps is None else steps
    g = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    order = _Order(latents.shape[0], g)
    opt = torch.optim.AdamW(tr.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(cfg.warmup, max(1, steps // 10))))
    # eval mode on purpose: the only train/eval difference in DiTTransformer2DModel is diffusers' own label
    # dropout, which is unseeded and independent per block; we drop labels ourselves, seeded, for all blocks.
    tr.eval()
    hist, t0, last = [], time.time(), None
    with deterministic():
        for step in range(steps):
            idx = order.next(cfg.batch_size)
            x0 = latents[idx]
            y = labels[idx].clone()
            drop = torch.rand(y.shape, generator=g) < cfg.p_uncond
            y[drop] = num_classes
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=g)
            xt = noise_scheduler.add_noise(x0, noise, t)
            pred = tr(xt, timestep=t, class_labels=y).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tr.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            hist.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                k = min(cfg.log_every, len(hist))
                last = float(np.mean(hist[-k:]))
                _say(log, f"[dit] step {step + 1}/{steps} loss {last:.4f} lr {sched.get_last_lr()[0]:.2e} "
                          f"{(step + 1) / (time.time() - t0):.3f} step/s")
    tr.eval()
    return {"steps": steps, "final_train_loss": last, "steps_per_s": steps / max(1e-9, time.time() - t0)}


@torch.no_grad()
def denoising_loss(tr, latents: torch.Tensor, labels: torch.Tensor, noise_scheduler, t: int,
                   seed: int = 1234, batch_size: int = 128) -> float:
    """Mean epsilon-MSE at a fixed timestep with seeded noise (the same noise for every model)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g)
    tot, n = 0.0, 0
    for i in range(0, latents.shape[0], batch_size):
        sl = slice(i, min(i + batch_size, latents.shape[0]))
        tt = torch.full((latents[sl].shape[0],), t, dtype=torch.long)
        xt = noise_scheduler.add_noise(latents[sl], noise[sl], tt)
        pred = tr(xt, timestep=tt, class_labels=labels[sl]).sample
        tot += float(F.mse_loss(pred, noise[sl], reduction="sum"))
        n += pred.numel()
    return tot / n


def heldout_latents(vae, heldout: ImageSet, classes: Sequence[str], stride: int = 1):
    """(scaled latents, joint labels) of every ``stride``-th held-out image."""
    sub = torch.arange(0, len(heldout), max(1, stride))
    data = ImageSet(heldout.images[sub], [heldout.dataset[i] for i in sub], [heldout.domain[i] for i in sub],
                    [heldout.cls[i] for i in sub], heldout.sources)
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[f"{d}/{c}"] for d, c in zip(data.dataset, data.cls)], dtype=torch.long)
    return encode_latents(vae, data) * vae.config.scaling_factor, labels


def evaluate(tr, vae, classes: Sequence[str], noise_scheduler, cfg: DiTConfig, heldout: ImageSet,
             log: Callable | None = print) -> dict:
    """Held-out denoising loss of the trained vs. a freshly initialised (diffusers default init) transformer."""
    from diffusers import DiTTransformer2DModel

    lat, labels = heldout_latents(vae, heldout, classes, cfg.eval_stride)
    null = torch.full_like(labels, len(classes))
    torch.manual_seed(cfg.seed + 777)
    fresh = DiTTransformer2DModel.from_config(tr.config).eval()
    res = {}
    for t in cfg.eval_timesteps:
        for name, y in (("label", labels), ("null", null)):
            key = f"t{t}_{name}"
            res[key] = {"trained": denoising_loss(tr, lat, y, noise_scheduler, t),
                        "fresh": denoising_loss(fresh, lat, y, noise_scheduler, t)}
            _say(log, f"[eval] denoising loss {key}: trained {res[key]['trained']:.4f} "
                      f"fresh {res[key]['fresh']:.4f}")
    return {"heldout_images": len(heldout), "denoise_images": int(lat.shape[0]), "denoising_loss": res}


# ------------------------------------------------------------------------------------------ saving


def save_dit_folder(out: str | os.PathLike, tr, vae_dir: str | os.PathLike, noise_scheduler,
                    classes: Sequence[str]) -> None:
    """Write the DiTPipeline folder: transformer/ + scheduler/ via save_pretrained, vae/ copied byte for
    byte from ``vae_dir``, model_index.json with ``id2label`` (save_pretrained does not write it)."""
    from diffusers import DiTPipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae = load_vae(vae_dir)
    pipe = DiTPipeline(transformer=tr, vae=vae, scheduler=noise_scheduler)
    pipe.save_pretrained(str(out), safe_serialization=True)
    shutil.rmtree(out / "vae")
    shutil.copytree(vae_dir, out / "vae")
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(i): c for i, c in enumerate(classes)}
    index_path.write_text(json.dumps(index, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ driver


def train_default_dit(out: str | os.PathLike, cfg: DiTConfig | None = None,
                      data_dir: str | os.PathLike | None = None, max_per_dataset: int | None = None,
                      vae_dir: str | os.PathLike = DEFAULT_VAE, log: Callable | None = print) -> dict:
    """Train the DiT and save the DiTPipeline folder + training_log.json into ``out``."""
    cfg = cfg or DiTConfig()
    out = Path(out)
    t_start = time.time()
    timings = {}

    t0 = time.time()
    train = load_images(TRAIN_SETS, data_dir, max_per_dataset, seed=cfg.seed)
    heldout = load_images(HELDOUT_SETS, data_dir, cfg.eval_max_images, seed=cfg.seed)
    classes, labels = joint_labels(train)
    timings["load_data_s"] = time.time() - t0
    _say(log, f"[data] {len(train)} train images, {len(heldout)} held-out images, {len(classes)} classes "
              f"({timings['load_data_s']:.1f} s)")

    t0 = time.time()
    vae = load_vae(vae_dir)
    lat = encode_latents(vae, train) * vae.config.scaling_factor
    timings["latents_s"] = time.time() - t0
    _say(log, f"[latents] {tuple(lat.shape)} scaling_factor {vae.config.scaling_factor:.5f} "
              f"std {float(lat.std()):.3f} ({timings['latents_s']:.1f} s)")

    noise_scheduler = build_scheduler(cfg)
    tr = build_transformer(cfg, len(classes), lat.shape[1], lat.shape[-1])
    params = n_params(tr)
    _say(log, f"[model] DiT {cfg.num_layers} blocks x {cfg.num_attention_heads * cfg.attention_head_dim} wide, "
              f"patch {cfg.patch_size}: {params} params")

    t0 = time.time()
    stats = train_dit(tr, lat, labels, len(classes), cfg, noise_scheduler, log=log)
    timings["train_s"] = time.time() - t0

    t0 = time.time()
    ev = evaluate(tr, vae, classes, noise_scheduler, cfg, heldout, log=log)
    timings["eval_s"] = time.time() - t0

    save_dit_folder(out, tr, vae_dir, noise_scheduler, classes)
    timings["total_s"] = time.time() - t_start

    import diffusers

    record = {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "steps": {"transformer": stats["steps"]},
        "params": {"transformer": params, "vae (shared with domainlens-tiny, not trained here)": n_params(vae)},
        "classes": list(classes),
        "null_class": len(classes),
        "train_data": train.sources,
        "train_images": len(train),
        "heldout_data": heldout.sources,
        "scaling_factor": float(vae.config.scaling_factor),
        "wall_time_s": timings,
        "steps_per_s": {"transformer": stats["steps_per_s"]},
        "final_losses": {"transformer": stats["final_train_loss"]},
        "eval": ev,
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "threads": torch.get_num_threads(), "python": platform.python_version()},
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=2, default=list) + "\n")
    _say(log, f"[done] saved to {out} in {timings['total_s'] / 60:.1f} min")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.training.train_dit", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (DiTPipeline format)")
    ap.add_argument("--steps", type=int, default=DiTConfig.steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=DiTConfig.batch_size)
    ap.add_argument("--layers", type=int, default=DiTConfig.num_layers)
    ap.add_argument("--heads", type=int, default=DiTConfig.num_attention_heads)
    ap.add_argument("--head-dim", type=int, default=DiTConfig.attention_head_dim)
    ap.add_argument("--lr", type=float, default=DiTConfig.lr)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1; the thread count changes float rounding, so use the same "
                         "value to reproduce weights bit for bit)")
    ap.add_argument("--data-dir", default=None, help="where built-in datasets live (default $DOMAINLENS_DATA_HOME)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = DiTConfig(seed=a.seed, batch_size=a.batch_size, steps=a.steps, num_layers=a.layers,
                    num_attention_heads=a.heads, attention_head_dim=a.head_dim, lr=a.lr)
    train_default_dit(a.out, cfg, data_dir=a.data_dir, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
