"""What the Explore view needs for one setting: features -> layout + scores, all cached.

The dashboard page and ``bench/`` call :func:`explore_view`; a warm call (features, layout and scores
cached) is what a slider move costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.engine.cache import FeatureCache
from core.data.datasets import Dataset
from core.engine.extract import ExtractionConfig, FeatureSet, get_features
from core.analysis.metrics import Scores
from core.backbones.base import Backbone
from core.analysis.reduce import ReductionConfig, cached_reduce
from core.analysis.sweep import cached_scores


@dataclass
class ExploreResult:
    features: FeatureSet
    block: str
    embedding: np.ndarray  # (n_images, n_components)
    scores: Scores


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
    fs = get_features(config, "all" if all_blocks else [block], device=device, batch_size=batch_size,
                      cache_dir=cache_dir, progress=progress, model=model, dataset=dataset)
    if block not in fs.features:
        raise ValueError(f"unknown block {block!r}; this model has {list(fs.features)}")
    cache = FeatureCache(cache_dir)
    X = fs.features[block]
    emb = cached_reduce(X, reduction, cache)
    scores = cached_scores(fs, block, n_seeds=n_seeds, cache=cache)
    return ExploreResult(fs, block, emb, scores)
