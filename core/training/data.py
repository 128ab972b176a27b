"""The training images of the embedded models: the built-in sets' train splits decoded into memory."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

TRAIN_SETS = ("synthetic-pacs:train", "rotated-digits:train")
HELDOUT_SETS = ("synthetic-pacs:heldout", "rotated-digits:heldout")
IMAGE_SIZE = 64



@dataclass
class ImageSet:
    """Images as uint8 (N, 3, 64, 64) plus per-image metadata."""

    images: torch.Tensor
    dataset: list[str]
    domain: list[str]
    cls: list[str]
    sources: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Float batch in [-1, 1]."""
        return self.images[idx].float().div(127.5).sub(1.0)


def load_images(names: Sequence[str] = TRAIN_SETS, data_dir: str | os.PathLike | None = None,
                max_per_dataset: int | None = None, seed: int = 0) -> ImageSet:
    """Decode the images of the given datasets (built-in names) into memory, in a fixed order.

    ``max_per_dataset`` takes a stratified, seeded subsample (for tests)."""
    from core.data.datasets import load_dataset, load_rgb

    arrays, dataset, domain, cls, sources = [], [], [], [], {}
    for name in names:
        ds = load_dataset(name, data_dir)
        recs = ds.records
        if max_per_dataset is not None:
            per_domain = max(1, math.ceil(max_per_dataset / len(ds.domains)))
            recs = ds.subsample(max_per_domain=per_domain, seed=seed)[:max_per_dataset]
        base = name.split(":")[0]
        for r in recs:
            im = load_rgb(r.path)
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE))
            arrays.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
            dataset.append(base)
            domain.append(r.domain)
            cls.append(r.cls)
        sources[name] = {"images": len(recs), "fingerprint": ds.fingerprint, "domains": ds.domains,
                         "classes": ds.classes}
    images = torch.from_numpy(np.stack(arrays)).contiguous()
    return ImageSet(images, dataset, domain, cls, sources)
