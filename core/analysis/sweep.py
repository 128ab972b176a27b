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


NOISE_COLUMNS = ["domain_nmi_noise_mean", "domain_nmi_noise_lo", "domain_nmi_noise_hi", "domain_ami_noise_mean",
                 "domain_ami_noise_lo", "domain_ami_noise_hi"]


def noise_interval(feature_sets: Sequence[FeatureSet], block: str, n_seeds: int = 5, n_init: int = DEFAULT_N_INIT,
                   n_boot: int | None = None, cache: FeatureCache | None = None) -> dict:
    """:data:`NOISE_COLUMNS` of one block over feature sets that differ only in the noise seed (same images):
    domain NMI / AMI averaged over noise seeds x k-means seeds, with the hierarchical-bootstrap interval
    (:func:`core.analysis.stats.score_intervals`). Rows are matched by image id (the first set's order)."""
    from core.analysis import stats

    cache = cache or FeatureCache()
    first = feature_sets[0]
    runs = []
    for fs in feature_sets:
        ks = cached_kmeans(fs, block, "domain", n_seeds, n_init, cache)
        if list(fs.ids) != list(first.ids):
            pos = {i: k for k, i in enumerate(fs.ids)}
            missing = [i for i in first.ids if i not in pos]
            if missing:
                raise ValueError(f"{len(missing)} image(s) of noise seed {first.config.seed} are missing under seed "
                                 f"{fs.config.seed} (unreadable?); the noise-seed interval needs the same images")
            ks = ks.take(np.array([pos[i] for i in first.ids]))
        runs.append(ks)
    ci = stats.score_intervals(runs, n_boot=stats.N_BOOT if n_boot is None else int(n_boot),
                               seed=int(first.config.seed))
    return {f"domain_{m}_noise{suffix}": v for m in ("nmi", "ami")
            for suffix, v in (("_mean", ci[m].estimate), ("_lo", ci[m].lo), ("_hi", ci[m].hi))}


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
    noise_seeds: int = 1,
    progress: Callable[[int, int], None] | None = None,
    model: Backbone | None = None,
    on_features: Callable[[ExtractionConfig, FeatureSet], None] | None = None,
) -> pd.DataFrame:
    """One row per (block, timestep, prompt) with the columns in :data:`COLUMNS`, then :data:`STAT_COLUMNS`
    (AMI, chance floor, within-chance flags, 95 % intervals over k-means seeds x a bootstrap over images;
    see :mod:`core.analysis.stats`), plus silhouette. ``n_init``: k-means runs per seed (1: one k-means).

    ``noise_seeds`` > 1 (diffusion models): each setting is also extracted with noise seeds ``seed + 1`` ..
    ``seed + noise_seeds - 1`` on the same images, and :data:`NOISE_COLUMNS` hold the domain NMI averaged over
    noise seeds x k-means seeds with its hierarchical-bootstrap interval over noise seeds, k-means seeds and
    images (:func:`core.analysis.stats.score_intervals`). The other columns stay the single noise draw of
    ``seed`` (the paper's protocol). Costs ``noise_seeds`` model passes per setting.

    Models without a timestep (baselines) give one row per block with an empty timestep.
    """
    model = model or load_backbone(base.model, device, dtype)
    if noise_seeds < 1:
        raise ValueError(f"noise_seeds must be >= 1, got {noise_seeds}")
    noisy = noise_seeds > 1 and model.uses_timestep
    fixed = None
    if noisy:  # hold the image sample of base.seed fixed while the noise seed varies (as the Stability view)
        from core.data.datasets import load_dataset

        ds = load_dataset(base.dataset)
        fixed = replace(ds, records=list(ds.subsample(base.max_per_domain, base.max_per_class, base.seed)))
    prompts = list(prompts) if prompts else [base.prompt]
    if not timesteps:
        raise ValueError("give at least one timestep")
    ts = list(dict.fromkeys(int(t) for t in timesteps)) if model.uses_timestep else [None]
    ps = prompts if model.uses_prompt else [PromptSpec()]
    settings = [(t, p) for p in ps for t in ts]
    cache = FeatureCache(cache_dir)
    rows = []
    passes = noise_seeds if noisy else 1
    for i, (t, p) in enumerate(settings):
        cfg = replace(base, timestep=base.timestep if t is None else t, prompt=p)
        step = (lambda d, n, i=i: progress(i * passes * n + d, len(settings) * passes * n)) if progress else None
        fs = get_features(cfg, blocks, device=device, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                          progress=step, model=model)
        if on_features:
            on_features(cfg, fs)
        extra = []
        for s_ in range(1, passes):
            step = (lambda d, n, i=i, s_=s_: progress((i * passes + s_) * n + d, len(settings) * passes * n)
                    ) if progress else None
            cfg_s = replace(cfg, seed=cfg.seed + s_, max_per_domain=None, max_per_class=None)
            extra.append(get_features(cfg_s, list(fs.features), device=device, dtype=dtype, batch_size=batch_size,
                                      cache_dir=cache_dir, progress=step, model=model, dataset=fixed))
        for b in fs.features:
            s = cached_scores(fs, b, n_seeds, probe, cache, n_init=n_init, n_boot=n_boot)
            row = {**score_row(s), "block": b, "timestep": t, "prompt": p.label, "noise_seeds": passes}
            if extra:
                row.update(noise_interval([fs, *extra], b, n_seeds, n_init, n_boot, cache))
            rows.append(row)
    cols = COLUMNS + STAT_COLUMNS + ["domain_silhouette", "noise_seeds"] + (NOISE_COLUMNS if passes > 1 else [])
    df = pd.DataFrame(rows, columns=cols)
    df["timestep"] = df["timestep"].astype("Int64")
    return df


def best_setting(df: pd.DataFrame) -> pd.Series:
    """The row with the highest domain NMI."""
    return df.loc[df["domain_nmi"].idxmax()]


def tied_with_best(df: pd.DataFrame) -> pd.Series:
    """Boolean per row: its domain-NMI interval overlaps that of the best row (:func:`best_setting`), so the
    ranking cannot tell it from the best. The noise-seed interval (``domain_nmi_noise_lo`` / ``_hi``) when the
    sweep has one, else ``domain_nmi_lo`` / ``_hi``. Overlap is a screen, not a test: a paired bootstrap
    (:func:`core.analysis.stats.paired_score_difference`) decides a pair. Without intervals: only the best."""
    noise = "domain_nmi_noise_lo" in df and df["domain_nmi_noise_lo"].notna().all()
    pre = "domain_nmi_noise" if noise else "domain_nmi"
    best = best_setting(df)
    if f"{pre}_lo" not in df or pd.isna(best.get(f"{pre}_lo")):
        return pd.Series(df.index == best.name, index=df.index)
    return (df[f"{pre}_hi"] >= best[f"{pre}_lo"]) & (df[f"{pre}_lo"] <= best[f"{pre}_hi"])
