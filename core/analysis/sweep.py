"""Sweeps: domain / class NMI over blocks x timesteps x prompts, reusing the feature cache.

Scores are cached too (keyed by the features' cache key, the block and the scoring settings), so a
repeated sweep runs neither the UNet nor k-means.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.engine.cache import FeatureCache, stable_hash
from core.engine.extract import ExtractionConfig, FeatureSet, get_features
from core.engine.prompts import PromptSpec
from core.analysis.metrics import Scores, score_features
from core.backbones.base import Backbone
from core.backbones.registry import load_backbone
from core.analysis.scorable import defined_scores

logger = logging.getLogger(__name__)

COLUMNS = ["block", "timestep", "prompt", "domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std",
           "domain_probe_acc", "n_images"]


@defined_scores  # too few images per domain: a clear error first; one class (domain): its NMI is nan, not 0
def cached_scores(fs: FeatureSet, block: str, n_seeds: int = 5, probe: bool = True,
                  cache: FeatureCache | None = None) -> Scores:
    """:func:`core.analysis.metrics.score_features` for one block of a feature set, cached on disk."""
    cache = cache or FeatureCache()
    key = stable_hash({"features": fs.cache_key, "block": block, "n_seeds": n_seeds, "probe": probe,
                       "n": len(fs.ids), "v": 3}, 32)  # the key fixes the images (selection + content)
    hit = cache.load_result("scores", key)
    if hit is not None:
        return Scores(**{k: (int(v) if k in ("n_images", "kmeans_fit_points", "probe_points") else float(v))
                         for k, v in hit.items()})
    s = score_features(fs.features[block], fs.domain_labels, fs.class_labels, n_seeds=n_seeds, probe=probe)
    cache.save_result("scores", key, {k: np.array(v) for k, v in s.to_dict().items()})
    return s


def run_sweep(
    base: ExtractionConfig,
    blocks: Sequence[str] | str | None,
    timesteps: Sequence[int],
    prompts: Sequence[PromptSpec] | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    n_seeds: int = 5,
    probe: bool = True,
    progress: Callable[[int, int], None] | None = None,
    model: Backbone | None = None,
    on_features: Callable[[ExtractionConfig, FeatureSet], None] | None = None,
) -> pd.DataFrame:
    """One row per (block, timestep, prompt) with the columns in :data:`COLUMNS` (plus silhouette).

    Models without a timestep (baselines) give one row per block with an empty timestep.
    """
    model = model or load_backbone(base.model, device, dtype)
    prompts = list(prompts) if prompts else [base.prompt]
    if not timesteps:
        raise ValueError("give at least one timestep")
    ts = list(dict.fromkeys(int(t) for t in timesteps)) if model.uses_timestep else [None]
    ps = prompts if model.uses_prompt else [PromptSpec()]
    settings = [(t, p) for p in ps for t in ts]
    cache = FeatureCache(cache_dir)
    rows = []
    for i, (t, p) in enumerate(settings):
        cfg = replace(base, timestep=base.timestep if t is None else t, prompt=p)
        step = (lambda d, n, i=i: progress(i * n + d, len(settings) * n)) if progress else None
        fs = get_features(cfg, blocks, device=device, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                          progress=step, model=model)
        if on_features:
            on_features(cfg, fs)
        for b in fs.features:
            s = cached_scores(fs, b, n_seeds, probe, cache)
            rows.append({"block": b, "timestep": t, "prompt": p.label, "domain_nmi": s.domain_nmi,
                         "domain_nmi_std": s.domain_nmi_std, "class_nmi": s.class_nmi,
                         "class_nmi_std": s.class_nmi_std, "domain_probe_acc": s.domain_probe_acc,
                         "n_images": s.n_images, "domain_silhouette": s.domain_silhouette})
    df = pd.DataFrame(rows, columns=COLUMNS + ["domain_silhouette"])
    df["timestep"] = df["timestep"].astype("Int64")
    return df


def best_setting(df: pd.DataFrame) -> pd.Series:
    """The row with the highest domain NMI."""
    return df.loc[df["domain_nmi"].idxmax()]
