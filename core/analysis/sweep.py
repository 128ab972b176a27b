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
from core.analysis.metrics import DEFAULT_N_INIT, Scores, score_features
from core.backbones.base import Backbone
from core.backbones.registry import load_backbone

logger = logging.getLogger(__name__)

COLUMNS = ["block", "timestep", "prompt", "domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std",
           "domain_probe_acc", "n_images"]
# chance-corrected scores, chance floors and intervals (core.analysis.stats), after COLUMNS in every table / CSV
STAT_COLUMNS = ["domain_nmi_lo", "domain_nmi_hi", "domain_ami", "domain_ami_std", "domain_ami_lo", "domain_ami_hi",
                "domain_nmi_chance", "domain_within_chance", "class_ami", "class_ami_std", "class_nmi_chance",
                "class_within_chance", "n_init"]


def cached_scores(fs: FeatureSet, block: str, n_seeds: int = 5, probe: bool = True,
                  cache: FeatureCache | None = None, n_init: int = DEFAULT_N_INIT, n_boot: int | None = None
                  ) -> Scores:
    """:func:`core.analysis.metrics.score_features` for one block of a feature set, cached on disk.

    The key holds ``n_init`` and the bootstrap size (version 4: scores before it used 3 k-means runs per seed
    and had no AMI, chance floor or interval, so they are never reused)."""
    from core.analysis import stats

    cache = cache or FeatureCache()
    n_boot = stats.N_BOOT if n_boot is None else int(n_boot)
    key = stable_hash({"features": fs.cache_key, "block": block, "n_seeds": n_seeds, "probe": probe,
                       "n": len(fs.ids), "n_init": int(n_init), "n_boot": n_boot, "n_perm": stats.N_PERM,
                       "v": 4}, 32)  # the key fixes the images (selection + content)
    hit = cache.load_result("scores", key)
    if hit is not None:
        return Scores.from_dict(hit)
    kept: dict = {}
    s = score_features(fs.features[block], fs.domain_labels, fs.class_labels, n_seeds=n_seeds, probe=probe,
                       n_init=n_init, n_boot=n_boot, keep=kept)
    cache.save_result("scores", key, {k: np.array(v) for k, v in s.to_dict().items()})
    if "domain" in kept:  # the domain clusters, for paired comparisons / noise-seed intervals without k-means
        cache.save_result("kmeans", _kmeans_key(fs, block, "domain", n_seeds, n_init), kept["domain"].to_arrays())
    return s


def _kmeans_key(fs: FeatureSet, block: str, which: str, n_seeds: int, n_init: int) -> str:
    return stable_hash({"features": fs.cache_key, "block": block, "n": len(fs.ids), "labels": which,
                        "n_seeds": int(n_seeds), "n_init": int(n_init), "v": 1}, 32)


def cached_kmeans(fs: FeatureSet, block: str, which: str = "domain", n_seeds: int = 5,
                  n_init: int = DEFAULT_N_INIT, cache: FeatureCache | None = None):
    """:func:`core.analysis.stats.cluster_scores` of one block against the ``which`` ("domain" or "class")
    labels, cached (the clusters of every k-means seed, so bootstraps and paired comparisons never re-cluster).
    The same seeds as :func:`cached_scores`, which stores the domain clusters as it computes them."""
    from core.analysis import stats

    if which not in ("domain", "class"):
        raise ValueError(f"which must be 'domain' or 'class', got {which!r}")
    cache = cache or FeatureCache()
    key = _kmeans_key(fs, block, which, n_seeds, n_init)
    hit = cache.load_result("kmeans", key)
    if hit is not None:
        return stats.KMeansScores.from_arrays(hit)
    labels = fs.domain_labels if which == "domain" else fs.class_labels
    ks = stats.cluster_scores(fs.features[block], labels, n_seeds=n_seeds, n_init=n_init)
    cache.save_result("kmeans", key, ks.to_arrays())
    return ks


def score_row(s: Scores) -> dict:
    """The :data:`COLUMNS` / :data:`STAT_COLUMNS` values of one cell's scores (plus silhouette)."""
    r = s.row()
    return {c: r[c] for c in COLUMNS + STAT_COLUMNS + ["domain_silhouette"] if c in r}


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
    n_init: int = DEFAULT_N_INIT,
    n_boot: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    model: Backbone | None = None,
    on_features: Callable[[ExtractionConfig, FeatureSet], None] | None = None,
) -> pd.DataFrame:
    """One row per (block, timestep, prompt) with the columns in :data:`COLUMNS`, then :data:`STAT_COLUMNS`
    (AMI, chance floor, within-chance flags, 95 % intervals over k-means seeds x a bootstrap over images;
    see :mod:`core.analysis.stats`), plus silhouette. ``n_init``: k-means runs per seed (1: one k-means).

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
            s = cached_scores(fs, b, n_seeds, probe, cache, n_init=n_init, n_boot=n_boot)
            rows.append({**score_row(s), "block": b, "timestep": t, "prompt": p.label})
    df = pd.DataFrame(rows, columns=COLUMNS + STAT_COLUMNS + ["domain_silhouette"])
    df["timestep"] = df["timestep"].astype("Int64")
    return df


def best_setting(df: pd.DataFrame) -> pd.Series:
    """The row with the highest domain NMI."""
    return df.loc[df["domain_nmi"].idxmax()]


def tied_with_best(df: pd.DataFrame) -> pd.Series:
    """Boolean per row: its domain-NMI interval overlaps the best row's (``domain_nmi_lo`` / ``_hi``), so the
    ranking cannot tell it from the best. Overlap is a screen, not a test: a paired bootstrap
    (:func:`core.analysis.stats.paired_score_difference`) decides a pair. Without intervals: only the best."""
    best = best_setting(df)
    if "domain_nmi_lo" not in df or pd.isna(best.get("domain_nmi_lo")):
        return df.index == best.name
    return (df["domain_nmi_hi"] >= best["domain_nmi_lo"]) & (df["domain_nmi_lo"] <= best["domain_nmi_hi"])
