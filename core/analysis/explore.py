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
    progress=None,
    dataset: Dataset | None = None,
) -> ExploreResult:
    """Features of ``block`` (extracting every block in the same pass when ``all_blocks``, so a later
    block change is a cache hit), their 2-D layout and their scores.

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
    scores = cached_scores(fs, block, n_seeds=n_seeds, cache=cache)
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
    a full layer read on every slider move)."""
    from core.analysis.faithfulness import DEFAULT_K, KNN_MAX_POINTS, TRUST_MAX_POINTS, from_arrays, layout_faithfulness
    from core.analysis.reduce import features_digest

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
