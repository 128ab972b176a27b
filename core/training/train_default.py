"""Train DomainLens' embedded default model from scratch on CPU, in diffusers Stable Diffusion format.

The result is a tiny latent text-to-image diffusion model (VAE 64x64x3 -> 16x16x4, a small CLIP text
encoder with a word-level tokenizer, a cross-attention UNet, a DDIM scheduler) saved with
``StableDiffusionPipeline.save_pretrained`` so that ``StableDiffusionPipeline.from_pretrained(DIR)`` loads
it offline, exactly like a real SD checkpoint. It is trained on the TRAIN splits of the two built-in data
sets only (``synthetic-pacs:train`` and ``rotated-digits:train``); their held-out splits are never seen.

Usage::

    python -m core.training.train_default --out models/domainlens-tiny [--vae-steps N] [--unet-steps N]
                                 [--seed S] [--batch-size B]

Phases (each a public function, so tests can run them with a few steps):

1. :func:`train_vae` - AutoencoderKL, loss = MSE + L1 reconstruction + 1e-6 KL.
2. :func:`encode_latents` / :func:`latent_scaling_factor` - latent *modes* of the training set,
   ``scaling_factor = 1 / std`` stored in the VAE config.
3. :func:`train_unet` - UNet2DConditionModel + CLIPTextModel trained jointly with the epsilon-prediction
   objective on ``mode * scaling_factor``, t ~ U{0..999}, SD's scaled-linear betas (0.00085-0.012).
4. :func:`evaluate` - held-out VAE reconstruction MSE and held-out denoising loss at t=100/500 for the
   trained UNet vs. a freshly initialised UNet of the same architecture.

Everything is seeded: the same seed and step counts give bit-identical weights (single process,
deterministic algorithms, fixed thread count; a different thread count may change float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

# Under CPU contention, spinning OpenMP workers stall each other badly (measured 3-4x slower steps);
# passive waiting avoids that. Only effective when set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

from core.training.captions import (  # noqa: E402,F401
    CLASS_TEMPLATE, DIGIT_TEMPLATES, PACS_TEMPLATES, canonical_caption, sample_caption,
)
from core.training.data import HELDOUT_SETS, IMAGE_SIZE, TRAIN_SETS, ImageSet, load_images  # noqa: E402,F401
from core.training.loop import _lr_lambda, _Order, _say, deterministic, n_params  # noqa: E402,F401
from core.training.tokenizer import build_tokenizer  # noqa: E402,F401


# ------------------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """All hyper-parameters; stored verbatim in ``training_log.json``."""

    seed: int = 0
    batch_size: int = 32
    vae_steps: int = 1600
    unet_steps: int = 2000
    # VAE
    vae_block_out_channels: tuple = (32, 64, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    vae_lr: float = 2e-3
    vae_crop: int = 32  # first part of VAE training on random crops (4x cheaper per image) ...
    vae_full_frac: float = 0.25  # ... the last quarter of the steps on full 64 px images at half the batch
    vae_kl_weight: float = 1e-6
    vae_l1_weight: float = 1.0
    vae_warmup: int = 100
    # text encoder
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_intermediate_size: int = 128
    text_max_length: int = 32
    # UNet
    unet_block_out_channels: tuple = (32, 64, 64)
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 4
    unet_lr: float = 1e-3
    unet_warmup: int = 200
    grad_clip: float = 1.0
    # scheduler (SD 1.x/2.x betas)
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    # captions
    p_empty_caption: float = 0.10
    p_class_template: float = 0.25
    # evaluation
    eval_timesteps: tuple = (100, 500)
    eval_max_images: int | None = None  # None = all held-out images
    eval_denoise_stride: int = 2  # denoising losses on every 2nd held-out image (8 UNet passes each)
    log_every: int = 100


# ------------------------------------------------------------------------------------------ models


def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_block_out_channels), layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels, norm_num_groups=32, sample_size=IMAGE_SIZE, scaling_factor=1.0,
    )


def build_text_encoder(cfg: TrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size,
        intermediate_size=cfg.text_intermediate_size, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.text_max_length,
        projection_dim=cfg.text_hidden_size, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(tc)


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2 ** (len(cfg.vae_block_out_channels) - 1),
        in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(cfg.unet_block_out_channels), layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden_size, attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=32,
    )


def build_schedulers(cfg: TrainConfig):
    """(DDPMScheduler for training, DDIMScheduler to save) with SD's betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
              beta_schedule=cfg.beta_schedule, prediction_type="epsilon", clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


def build_components(cfg: TrainConfig):
    """Tokenizer, VAE, text encoder, UNet (each seeded from ``cfg.seed``) and the (training, DDIM) schedulers:
    the untrained model that :func:`train_default` starts from."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp, cfg.text_max_length)
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg)
    torch.manual_seed(cfg.seed + 1)
    text_encoder = build_text_encoder(cfg, tokenizer)
    torch.manual_seed(cfg.seed + 2)
    unet = build_unet(cfg)
    noise_scheduler, ddim = build_schedulers(cfg)
    return tokenizer, vae, text_encoder, unet, noise_scheduler, ddim


# ---------------------------------------------------------------------------------------- training


def train_vae(vae, data: ImageSet, cfg: TrainConfig, steps: int | None = None, log: Callable | None = print
              ) -> dict:
    """Train the AutoencoderKL in place. Returns loss statistics."""
    steps = cfg.vae_steps if steps is None else steps
    g = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    order = _Order(len(data), g)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(cfg.vae_warmup, max(1, steps // 10))))
    vae.train()
    hist, t0, last = [], time.time(), {}
    with deterministic():
        for step in range(steps):
            full = step >= steps - round(cfg.vae_full_frac * steps) or cfg.vae_crop >= IMAGE_SIZE
            x = data.batch(order.next(cfg.batch_size if not full else max(1, cfg.batch_size // 2)))
            if not full:  # one random crop position per batch
                i, j = torch.randint(0, IMAGE_SIZE - cfg.vae_crop + 1, (2,), generator=g).tolist()
                x = x[:, :, i:i + cfg.vae_crop, j:j + cfg.vae_crop]
            post = vae.encode(x).latent_dist
            z = post.sample(generator=g)
            rec = vae.decode(z).sample
            mse = F.mse_loss(rec, x)
            l1 = F.l1_loss(rec, x)
            kl = post.kl().mean()
            loss = mse + cfg.vae_l1_weight * l1 + cfg.vae_kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            hist.append((mse.item(), l1.item(), kl.item()))
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                k = min(cfg.log_every, len(hist))
                m = np.mean(hist[-k:], axis=0)
                last = {"mse": float(m[0]), "l1": float(m[1]), "kl": float(m[2])}
                _say(log, f"[vae] step {step + 1}/{steps} mse {m[0]:.5f} l1 {m[1]:.4f} kl {m[2]:.1f} "
                          f"lr {sched.get_last_lr()[0]:.2e} {(step + 1) / (time.time() - t0):.2f} step/s")
    vae.eval()
    return {"steps": steps, "final_train": last, "steps_per_s": steps / max(1e-9, time.time() - t0)}


@torch.no_grad()
def encode_latents(vae, data: ImageSet, batch_size: int = 64) -> torch.Tensor:
    """Latent modes (unscaled) of every image, (N, C, h, w)."""
    vae.eval()
    out = []
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        out.append(vae.encode(data.batch(idx)).latent_dist.mode())
    return torch.cat(out)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    return float(1.0 / latents.float().std())


@torch.no_grad()
def vae_recon_mse(vae, data: ImageSet, batch_size: int = 64) -> dict:
    """Per-pixel MSE in [-1, 1] units of mode-decoded reconstructions, overall and per dataset."""
    vae.eval()
    err = []
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        x = data.batch(idx)
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        err.append(((rec - x) ** 2).mean(dim=(1, 2, 3)))
    err = torch.cat(err)
    out = {"all": float(err.mean())}
    for name in sorted(set(data.dataset)):
        mask = torch.tensor([d == name for d in data.dataset])
        out[name] = float(err[mask].mean())
    return out


def encode_text(text_encoder, tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Exactly what StableDiffusionPipeline does: pad to model_max_length, no attention mask, last hidden."""
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(unet, text_encoder, tokenizer, latents: torch.Tensor, data: ImageSet, cfg: TrainConfig,
               noise_scheduler, steps: int | None = None, log: Callable | None = print) -> dict:
    """Train UNet + text encoder jointly (epsilon prediction) on scaled latents. Returns loss statistics."""
    steps = cfg.unet_steps if steps is None else steps
    g = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    rng = random.Random(cfg.seed * 1000 + 3)
    order = _Order(len(data), g)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, betas=(0.9, 0.999), weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps, min(cfg.unet_warmup, max(1, steps // 10))))
    unet.train()
    text_encoder.train()
    hist, t0, last = [], time.time(), None
    with deterministic():
        for step in range(steps):
            idx = order.next(cfg.batch_size)
            x0 = latents[idx]
            captions = [sample_caption(data.dataset[i], data.domain[i], data.cls[i], rng, cfg) for i in idx.tolist()]
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=g)
            xt = noise_scheduler.add_noise(x0, noise, t)
            cond = encode_text(text_encoder, tokenizer, captions)
            pred = unet(xt, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            hist.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                k = min(cfg.log_every, len(hist))
                last = float(np.mean(hist[-k:]))
                _say(log, f"[unet] step {step + 1}/{steps} loss {last:.4f} lr {sched.get_last_lr()[0]:.2e} "
                          f"{(step + 1) / (time.time() - t0):.2f} step/s")
    unet.eval()
    text_encoder.eval()
    return {"steps": steps, "final_train_loss": last, "steps_per_s": steps / max(1e-9, time.time() - t0)}


@torch.no_grad()
def denoising_loss(unet, text_encoder, tokenizer, latents: torch.Tensor, data: ImageSet, noise_scheduler,
                   t: int, empty_prompt: bool, seed: int = 1234, batch_size: int = 64) -> float:
    """Mean epsilon-MSE at a fixed timestep with seeded noise (the same noise for every model)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g)
    tot, n = 0.0, 0
    for i in range(0, len(data), batch_size):
        sl = slice(i, min(i + batch_size, len(data)))
        x0 = latents[sl]
        caps = [""] * x0.shape[0] if empty_prompt else [
            canonical_caption(data.dataset[j], data.domain[j], data.cls[j]) for j in range(sl.start, sl.stop)]
        tt = torch.full((x0.shape[0],), t, dtype=torch.long)
        xt = noise_scheduler.add_noise(x0, noise[sl], tt)
        pred = unet(xt, tt, encoder_hidden_states=encode_text(text_encoder, tokenizer, caps)).sample
        tot += float(F.mse_loss(pred, noise[sl], reduction="sum"))
        n += pred.numel()
    return tot / n


def evaluate(vae, unet, text_encoder, tokenizer, noise_scheduler, cfg: TrainConfig, heldout: ImageSet,
             log: Callable | None = print) -> dict:
    """Held-out VAE MSE and trained-vs-fresh UNet denoising losses (text encoder: the trained one)."""
    out = {"heldout_images": len(heldout), "vae_recon_mse": vae_recon_mse(vae, heldout)}
    _say(log, f"[eval] held-out VAE recon MSE {out['vae_recon_mse']}")
    sub = torch.arange(0, len(heldout), max(1, cfg.eval_denoise_stride))
    heldout = ImageSet(heldout.images[sub], [heldout.dataset[i] for i in sub], [heldout.domain[i] for i in sub],
                       [heldout.cls[i] for i in sub], heldout.sources)
    out["denoise_images"] = len(heldout)
    lat = encode_latents(vae, heldout) * vae.config.scaling_factor
    torch.manual_seed(cfg.seed + 777)
    fresh = build_unet(cfg).eval()
    res = {}
    for t in cfg.eval_timesteps:
        for empty in (False, True):
            key = f"t{t}_{'empty' if empty else 'caption'}"
            res[key] = {
                "trained": denoising_loss(unet, text_encoder, tokenizer, lat, heldout, noise_scheduler, t, empty),
                "fresh": denoising_loss(fresh, text_encoder, tokenizer, lat, heldout, noise_scheduler, t, empty),
            }
            _say(log, f"[eval] denoising loss {key}: trained {res[key]['trained']:.4f} fresh {res[key]['fresh']:.4f}")
    out["denoising_loss"] = res
    return out


# ------------------------------------------------------------------------------------------- driver


def train_default(out: str | os.PathLike, cfg: TrainConfig | None = None, data_dir: str | os.PathLike | None = None,
                  max_per_dataset: int | None = None, log: Callable | None = print) -> dict:
    """Train all parts and save a StableDiffusionPipeline folder + training_log.json into ``out``."""
    from diffusers import StableDiffusionPipeline

    cfg = cfg or TrainConfig()
    out = Path(out)
    t_start = time.time()
    timings = {}

    t0 = time.time()
    train = load_images(TRAIN_SETS, data_dir, max_per_dataset, seed=cfg.seed)
    heldout = load_images(HELDOUT_SETS, data_dir, cfg.eval_max_images, seed=cfg.seed)
    timings["load_data_s"] = time.time() - t0
    _say(log, f"[data] {len(train)} train images, {len(heldout)} held-out images ({timings['load_data_s']:.1f} s)")

    tokenizer, vae, text_encoder, unet, noise_scheduler, ddim = build_components(cfg)
    params = {"vae": n_params(vae), "text_encoder": n_params(text_encoder), "unet": n_params(unet)}
    _say(log, f"[model] params {params}; vocab {len(tokenizer)}")

    t0 = time.time()
    vae_stats = train_vae(vae, train, cfg, log=log)
    timings["vae_s"] = time.time() - t0

    t0 = time.time()
    lat = encode_latents(vae, train)
    sf = latent_scaling_factor(lat)
    vae.register_to_config(scaling_factor=sf)
    lat = lat * sf
    timings["latents_s"] = time.time() - t0
    _say(log, f"[latents] {tuple(lat.shape)} scaling_factor {sf:.5f} ({timings['latents_s']:.1f} s)")

    t0 = time.time()
    unet_stats = train_unet(unet, text_encoder, tokenizer, lat, train, cfg, noise_scheduler, log=log)
    timings["unet_s"] = time.time() - t0

    t0 = time.time()
    ev = evaluate(vae, unet, text_encoder, tokenizer, noise_scheduler, cfg, heldout, log=log)
    timings["eval_s"] = time.time() - t0

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=ddim, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    timings["total_s"] = time.time() - t_start

    import diffusers
    import transformers

    record = {
        "config": asdict(cfg),
        "seed": cfg.seed,
        "steps": {"vae": vae_stats["steps"], "unet": unet_stats["steps"]},
        "params": params,
        "vocab_size": len(tokenizer),
        "train_data": train.sources,
        "train_images": len(train),
        "heldout_data": heldout.sources,
        "scaling_factor": sf,
        "wall_time_s": timings,
        "steps_per_s": {"vae": vae_stats["steps_per_s"], "unet": unet_stats["steps_per_s"]},
        "final_losses": {"vae": vae_stats["final_train"], "unet": unet_stats["final_train_loss"]},
        "eval": ev,
        "captions": {"pacs_templates": PACS_TEMPLATES, "digit_templates": DIGIT_TEMPLATES,
                     "class_template": CLASS_TEMPLATE, "p_empty": cfg.p_empty_caption,
                     "p_class_template": cfg.p_class_template},
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                        "python": platform.python_version()},
    }
    (out / "training_log.json").write_text(json.dumps(record, indent=2, default=list) + "\n")
    _say(log, f"[done] saved to {out} in {timings['total_s'] / 60:.1f} min")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.training.train_default", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (StableDiffusionPipeline format)")
    ap.add_argument("--vae-steps", type=int, default=TrainConfig.vae_steps)
    ap.add_argument("--unet-steps", type=int, default=TrainConfig.unet_steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on this shared 2-core CPU, 2 threads measured up to 7x slower "
                         "per step under contention; the thread count changes float rounding, so use the same "
                         "value to reproduce weights bit for bit)")
    ap.add_argument("--data-dir", default=None, help="where built-in datasets live (default $DOMAINLENS_DATA_HOME)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = TrainConfig(seed=a.seed, batch_size=a.batch_size, vae_steps=a.vae_steps, unet_steps=a.unet_steps)
    train_default(a.out, cfg, data_dir=a.data_dir, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
