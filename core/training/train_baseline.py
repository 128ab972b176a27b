"""A small supervised CNN classifier: the discriminative baseline next to the diffusion features.

The paper contrasts diffusion features (which cluster by *domain*) with discriminative ones (ResNet-50,
which cluster by *class*). This is the project's built-in stand-in for the discriminative side: a 4-layer
CNN trained with class labels only (never domain labels) on the TRAIN splits of both built-in datasets.

* One joint 16-way head over the classes of both datasets (6 shapes of ``synthetic-pacs`` + 10 digits of
  ``rotated-digits``; labels are namespaced ``"synthetic-pacs/star"``, ``"rotated-digits/3"``), so a single
  network and a single feature space serve both datasets.
* Architecture: 4 x [conv3x3 -> BatchNorm -> ReLU -> maxpool 2] with 32, 64, 128, 128 channels,
  global average pool -> 128-d features (what :func:`cnn_features` returns) -> linear head.
* Saved as ``model.safetensors`` + ``config.json`` (no pickles).

Usage::

    python -m core.training.train_baseline --out models/domainlens-cnn [--steps N] [--seed S] [--batch-size B]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from core.backbones.baselines import DEFAULT_CHANNELS, BaselineCNN, cnn_features, load_baseline_cnn  # noqa: E402,F401
from core.training.data import HELDOUT_SETS, TRAIN_SETS, ImageSet, load_images  # noqa: E402
from core.training.loop import deterministic  # noqa: E402

def joint_labels(data: ImageSet) -> tuple[list[str], torch.Tensor]:
    """Namespaced class names (sorted; all classes of the source datasets, even if a subsample lacks some)
    and each image's index into them."""
    names = [f"{d}/{c}" for d, c in zip(data.dataset, data.cls)]
    classes = sorted(set(names) | {f"{src.split(':')[0]}/{c}" for src, info in data.sources.items()
                                   for c in info["classes"]})
    index = {c: i for i, c in enumerate(classes)}
    return classes, torch.tensor([index[n] for n in names], dtype=torch.long)


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, labels: torch.Tensor, batch_size: int = 128) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        correct += int((model(data.batch(idx)).argmax(1) == labels[idx]).sum())
    return correct / max(1, len(data))


def train_baseline(out: str | os.PathLike, steps: int = 600, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                   data_dir: str | os.PathLike | None = None, max_per_dataset: int | None = None,
                   channels: Sequence[int] = DEFAULT_CHANNELS, log: Callable | None = print) -> dict:
    """Train on the train splits (class labels only), evaluate on the held-out splits, save to ``out``."""
    from safetensors.torch import save_file

    t_start = time.time()
    train = load_images(TRAIN_SETS, data_dir, max_per_dataset, seed=seed)
    heldout = load_images(HELDOUT_SETS, data_dir, max_per_dataset, seed=seed)
    classes, y = joint_labels(train)
    index = {c: i for i, c in enumerate(classes)}
    y_ho = torch.tensor([index.get(f"{d}/{c}", -1) for d, c in zip(heldout.dataset, heldout.cls)])

    torch.manual_seed(seed)
    model = BaselineCNN(len(classes), channels)
    g = torch.Generator().manual_seed(seed * 1000 + 5)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, steps - warm))))
    model.train()
    hist, perm, pos = [], None, len(train)
    with deterministic():
        for step in range(steps):
            if pos + batch_size > len(train):
                perm, pos = torch.randperm(len(train), generator=g), 0
            idx = perm[pos:pos + batch_size]
            pos += batch_size
            x = train.batch(idx)
            # small random translation (+-4 px, per batch): a cheap augmentation that keeps labels valid
            dx, dy = (torch.randint(-4, 5, (2,), generator=g)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist.append(loss.item())
            if log and ((step + 1) % 100 == 0 or step + 1 == steps):
                log(f"[cnn] step {step + 1}/{steps} loss {np.mean(hist[-100:]):.4f} "
                    f"{(step + 1) / (time.time() - t_start):.2f} step/s")
    model.eval()
    train_s = time.time() - t_start
    acc_train, acc_ho = accuracy(model, train, y), accuracy(model, heldout, y_ho)
    if log:
        log(f"[cnn] accuracy train {acc_train:.4f} held-out {acc_ho:.4f}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    config = {
        "architecture": "BaselineCNN",
        "channels": list(channels),
        "in_channels": 3,
        "num_classes": len(classes),
        "classes": classes,
        "feature_dim": model.feature_dim,
        "input": "RGB 64x64 (any size works: global average pool), scaled to [-1, 1]",
        "head": "one joint head over the namespaced classes of both datasets; trained on class labels only",
        "train_data": list(TRAIN_SETS),
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
        "final_train_loss": float(np.mean(hist[-100:])) if hist else None,
        "train_accuracy": acc_train, "heldout_accuracy": acc_ho,
        "train_images": len(train), "heldout_images": len(heldout),
        "wall_time_s": train_s, "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m core.training.train_baseline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    train_baseline(a.out, a.steps, a.seed, a.batch_size, data_dir=a.data_dir, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
