"""What the Explore view needs for one setting: features -> layout + scores, all cached.

The dashboard page and ``bench/`` call :func:`explore_view`; a warm call (features, layout and scores
cached) is what a slider move costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.engine.cache import FeatureCache, stable_hash
from core.data.datasets import Dataset
from core.engine.extract import ExtractionConfig, FeatureSet, NotCached, get_features
from core.analysis.metrics import Scores
from core.backbones.base import Backbone
from core.analysis.reduce import ReductionConfig, layout_at_scale
from core.analysis.stats import Interval
from core.analysis.sweep import cached_scores


@dataclass
class ExploreResult:
    features: FeatureSet
    block: str
    embedding: np.ndarray  # (n_images, n_components); NaN rows: outside the layout's sample
    scores: Scores
    layout_points: int = 0  # points the layout was fitted on (a stratified sample above LAYOUT_SAMPLE)
    layout_note: str = ""  # why the layout covers only a sample (reduce.layout_note), empty when it covers all


def explore_view(
    config: ExtractionConfig,
    block: str,
    reduction: ReductionConfig = ReductionConfig(),
    *,
    all_blocks: bool = True,
    model: Backbone | None = None,
    device: str = "auto",
    batch_size: int = 32,
    cache_dir: str | None = None,
    n_seeds: int = 5,
    n_init: int | None = None,
    progress=None,
    dataset: Dataset | None = None,
) -> ExploreResult:
    """Features of ``block`` (extracting every block in the same pass when ``all_blocks``, so a later
    block change is a cache hit), their 2-D layout and their scores.

    Scores: :func:`core.analysis.sweep.cached_scores` with ``n_init`` k-means runs per seed (default one).
    Pass the scanned ``dataset`` (``load_dataset(config.dataset)``, kept by the caller) to skip rescanning
    the folder on every call: on a warm call that scan is the largest cost (bench/ measures it).
    """
    kw = dict(device=device, batch_size=batch_size, cache_dir=cache_dir, progress=progress, model=model,
              dataset=dataset)
    try:  # warm: only this block's chunk headers are looked at, no other layer is touched
        fs = get_features(config, [block], only_cached=True, **kw)
    except NotCached:
        fs = get_features(config, "all" if all_blocks else [block], **kw)
    if block not in fs.features:
        raise ValueError(f"unknown block {block!r}; this model has {list(fs.features)}")
    cache = FeatureCache(cache_dir)
    emb, fitted = cached_layout(fs, block, reduction, cache)
    from core.analysis.metrics import DEFAULT_N_INIT

    scores = cached_scores(fs, block, n_seeds=n_seeds, cache=cache,
                           n_init=DEFAULT_N_INIT if n_init is None else int(n_init))
    from core.analysis.reduce import layout_note

    return ExploreResult(fs, block, emb, scores, fitted, layout_note(reduction.method, len(fs.ids), fitted))


def cached_layout(fs: FeatureSet, block: str, reduction: ReductionConfig, cache: FeatureCache,
                  max_points: int | None = None) -> tuple[np.ndarray, int]:
    """:func:`core.analysis.reduce.layout_at_scale` of one block, cached under the features' cache key (which
    fixes the images and their content), so a warm call reads no features at all."""
    from core.analysis import reduce as layouts

    if max_points is None:  # LAYOUT_SAMPLE, or t-SNE's smaller sample above TSNE_SAMPLE points (the key says which)
        max_points = layouts.layout_sample(reduction.method, len(fs.ids))
    key = stable_hash({"features": fs.cache_key, "block": block, "n": len(fs.ids), "max_points": max_points,
                       **reduction.params(), "v": 1}, 32)
    hit = cache.load_result("layouts", key)
    if hit is not None and hit["embedding"].shape == (len(fs.ids), reduction.n_components):
        return hit["embedding"], int(hit["fitted"])
    emb, fitted = layout_at_scale(fs.features[block], fs.domain_labels, reduction, max_points)
    cache.save_result("layouts", key, {"embedding": emb, "fitted": np.array(fitted)})
    return emb, fitted


def explore_faithfulness(fs: FeatureSet, block: str, embedding: np.ndarray, k: int | None = None,
                         random_state: int = 0, cache: FeatureCache | None = None):
    """:func:`core.analysis.faithfulness.layout_faithfulness` of a block's layout (coloured by domain), cached
    under the features' cache key (which fixes the images, their domains and the feature values) and the
    layout's digest, so a warm call reads no features (``cached_faithfulness`` hashes the whole feature array:
    a full layer read on every slider move). Fewer than ``MIN_POINTS`` (6) placed images: not judged
    (:func:`core.analysis.faithfulness.not_judged`: NaN, ``k = 0``), never an error."""
    from core.analysis.faithfulness import DEFAULT_K, KNN_MAX_POINTS, TRUST_MAX_POINTS, from_arrays, layout_faithfulness
    from core.analysis.reduce import features_digest

    from core.analysis.faithfulness import MIN_POINTS, not_judged

    placed = int(np.isfinite(np.asarray(embedding, dtype=np.float64)).all(axis=1).sum())
    if placed < MIN_POINTS:  # a tiny dataset: the layout is shown, its faithfulness is not judged (k = 0)
        return not_judged(placed)
    k = DEFAULT_K if k is None else k
    cache = cache or FeatureCache()
    key = stable_hash({"features": fs.cache_key, "block": block, "n": len(fs.ids), "layout": features_digest(embedding),
                       "k": int(k), "seed": int(random_state), "max": TRUST_MAX_POINTS, "knn_max": KNN_MAX_POINTS,
                       "v": 2}, 32)
    hit = cache.load_result("faithfulness", key)
    if hit is not None:
        return from_arrays(hit)
    out = layout_faithfulness(fs.features[block], embedding, fs.domains, k, random_state)
    cache.save_result("faithfulness", key, {f: np.array(v) for f, v in out.to_dict().items()})
    return out


@dataclass
class PairedComparison:
    """B minus A on the same images: domain NMI and AMI differences with paired-bootstrap 95 % intervals
    (:func:`core.analysis.stats.paired_score_differences`: the same image resample for A and B in every draw,
    k-means seeds resampled within each side)."""

    nmi: Interval  # B - A domain NMI
    ami: Interval  # B - A domain AMI
    n_common: int  # images both settings share (the paired sample)
    n_seeds: int
    n_init: int
    n_boot: int

    def verdict(self, names: tuple[str, str] = ("A", "B")) -> str:
        """One sentence: which setting separates domains better, only when the NMI interval excludes 0."""
        a, b = names
        d = self.nmi
        what = (f"domain NMI {b} − {a} = {d.format(signed=True)} (95 % paired bootstrap over {self.n_common:,} "
                f"shared images and {self.n_seeds} k-means seeds each, {self.n_boot} draws)")
        if not d.excludes_zero:
            return f"No difference shown: {what}; the interval includes 0."
        better, worse = (b, a) if d.estimate > 0 else (a, b)
        return f"{better} separates the domains better than {worse}: {what}; the interval excludes 0."

    def to_frame(self):
        """One row per score (domain NMI, AMI): estimate, lo, hi, whether the interval excludes 0."""
        import pandas as pd

        return pd.DataFrame([{"score": f"domain {s.upper()} (B − A)", "estimate": iv.estimate, "lo": iv.lo,
                              "hi": iv.hi, "excludes_0": iv.excludes_zero, "n_common": self.n_common,
                              "n_boot": iv.n_boot} for s, iv in (("nmi", self.nmi), ("ami", self.ami))])


def compare_settings(fs_a: FeatureSet, block_a: str, fs_b: FeatureSet, block_b: str, *, n_seeds: int = 5,
                     n_init: int | None = None, n_boot: int | None = None, seed: int = 0,
                     cache: FeatureCache | None = None) -> PairedComparison:
    """Paired comparison of two settings' domain scores on the images both share (rows matched by image id;
    each id must have the same domain on both sides). The k-means clusters are :func:`cached_kmeans`'s (the
    ones behind the shown scores); the result is cached too."""
    from core.analysis import stats
    from core.analysis.metrics import DEFAULT_N_INIT
    from core.analysis.sweep import cached_kmeans

    n_init = DEFAULT_N_INIT if n_init is None else int(n_init)
    n_boot = stats.N_BOOT if n_boot is None else int(n_boot)
    cache = cache or FeatureCache()
    pos_b = {i: k for k, i in enumerate(fs_b.ids)}
    rows_a = [k for k, i in enumerate(fs_a.ids) if i in pos_b]
    rows_b = [pos_b[fs_a.ids[k]] for k in rows_a]
    if len(rows_a) < 2 * max(2, len(fs_a.domain_names)):
        raise ValueError(f"A and B share {len(rows_a)} images: too few for a paired comparison; pick settings "
                         "over the same dataset and sample")
    if [fs_a.domains[k] for k in rows_a] != [fs_b.domains[k] for k in rows_b]:
        raise ValueError("A and B give the same image different domains: compare settings over the same dataset")
    key = stable_hash({"a": fs_a.cache_key, "block_a": block_a, "b": fs_b.cache_key, "block_b": block_b,
                       "n_a": len(fs_a.ids), "n_b": len(fs_b.ids), "n_seeds": n_seeds, "n_init": n_init,
                       "n_boot": n_boot, "seed": seed, "v": 1}, 32)
    hit = cache.load_result("paired", key)
    if hit is None:
        ka = cached_kmeans(fs_a, block_a, "domain", n_seeds, n_init, cache)
        kb = cached_kmeans(fs_b, block_b, "domain", n_seeds, n_init, cache)
        ka, kb = ka.take(np.asarray(rows_a)), kb.take(np.asarray(rows_b))
        kb.y = ka.y  # same domains (checked above); codes may differ only if a domain is missing on one side
        d = stats.paired_score_differences(kb, ka, n_boot=n_boot, seed=seed)
        hit = {f"{s}_{f}": np.array(getattr(d[s], f)) for s in ("nmi", "ami")
               for f in ("estimate", "lo", "hi", "level", "n_boot", "method", "bias")}
        cache.save_result("paired", key, hit)
    iv = {s: Interval(float(hit[f"{s}_estimate"]), float(hit[f"{s}_lo"]), float(hit[f"{s}_hi"]),
                      float(hit[f"{s}_level"]), int(hit[f"{s}_n_boot"]), str(hit[f"{s}_method"]),
                      float(hit[f"{s}_bias"])) for s in ("nmi", "ami")}
    return PairedComparison(iv["nmi"], iv["ami"], len(rows_a), n_seeds, n_init, n_boot)
