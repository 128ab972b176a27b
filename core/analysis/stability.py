"""How much does a domain NMI depend on chance? Its spread over the random choices behind it.

Sources of chance, each varied alone around one setting (block, timestep, prompt), on the same images:

* noise seed - the diffusion noise draw (``ExtractionConfig.seed``; the image sample is held fixed);
* ensemble size - 1, 2, 4, 8 noise draws averaged per image (the paper uses a single draw);
* k-means seed - the clustering's initialisation, features fixed;
* image subsample - bootstrap resamples of the images, features fixed.

Every NMI here is k-means (K = number of domains) against the domain labels, as everywhere in DomainLens;
noise seeds, ensemble sizes and bootstraps use the mean over ``n_seeds`` k-means seeds, so they vary only
their own source. The paper's protocol is one noise draw, one run: the reference value is the setting as
given (its seed, ensemble 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from core.engine.extract import ExtractionConfig, get_features

SOURCES = ("noise seed", "ensemble size", "k-means seed", "bootstrap")
SUMMARY_COLUMNS = ["source", "n", "mean", "std", "min", "max", "spread"]


@dataclass
class Stability:
    draws: pd.DataFrame  # source, setting, domain_nmi (one row per draw)
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per source
    reference: float  # the paper's single-draw protocol: this setting, its seed, one noise draw
    block: str
    config: ExtractionConfig

    @property
    def widest(self) -> pd.Series:
        """The summary row with the largest spread."""
        return self.summary.loc[self.summary["spread"].idxmax()]


def summarize(draws: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for src in [s for s in SOURCES if s in set(draws["source"])] + sorted(set(draws["source"]) - set(SOURCES)):
        v = draws.loc[draws["source"] == src, "domain_nmi"].to_numpy(float)
        rows.append({"source": src, "n": len(v), "mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max(),
                     "spread": v.max() - v.min()})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def spread_sentence(summary: pd.DataFrame, difference: float) -> str:
    """An honest sentence on whether a difference in domain NMI the user looks at is larger than chance.

    ``summary`` as :func:`summarize` returns; compares ``|difference|`` with the widest spread (max - min).
    """
    if summary.empty:
        raise ValueError("no stability draws to compare with")
    row = summary.loc[summary["spread"].idxmax()]
    d, spread = abs(float(difference)), float(row["spread"])
    what = f"over {row['source']}s ({int(row['n'])} draws)"
    if d <= spread:
        return (f"Careful: the difference you are looking at ({d:.3f}) is not wider than what chance alone moves "
                f"this domain NMI by ({spread:.3f}, {what}). It may not be real: compare averages over several "
                f"draws, or more images, before reading anything into it.")
    return (f"The difference you are looking at ({d:.3f}) is wider than the largest spread from chance here "
            f"({spread:.3f}, {what}), so chance alone is unlikely to explain it (for these images; other "
            f"datasets can vary more).")


def _nmi(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    from core.analysis.metrics import kmeans_labels

    return float(normalized_mutual_info_score(y, kmeans_labels(X, len(np.unique(y)), seed)[0]))


def stability(config: ExtractionConfig, block: str, *, noise_seeds: int = 5,
              ensembles: Sequence[int] = (1, 2, 4, 8), kmeans_seeds: int = 10, bootstraps: int = 20,
              n_seeds: int = 5, model=None, device: str = "auto", batch_size: int = 32,
              cache_dir: str | None = None, progress: Callable[[int, int], None] | None = None,
              dataset=None) -> Stability:
    """Domain NMI of ``block`` under each source of chance (see the module doc). Features are cached, so
    the noise seed ``config.seed`` and ensemble 1 are the Explore page's features."""
    from core.analysis.metrics import nmi
    from core.data.datasets import load_dataset

    if noise_seeds < 1 or kmeans_seeds < 1 or bootstraps < 0 or not ensembles or min(ensembles) < 1:
        raise ValueError("noise_seeds and kmeans_seeds must be >= 1, bootstraps >= 0 and ensemble sizes >= 1")
    from core.engine.limits import check_size

    for name, value in (("noise_seeds", noise_seeds), ("kmeans_seeds", kmeans_seeds), ("bootstraps", bootstraps),
                        *(("ensemble", e) for e in ensembles)):
        check_size(name, value)  # bounded with the reason (each is more model passes or refits), before any work
    if model is None:
        from core.analysis.prompt_audit import load

        model = load(config.model, device)
    if block not in model.blocks:
        raise ValueError(f"unknown block {block!r}; this model has {list(model.blocks)}")
    ds = dataset or load_dataset(config.dataset)
    # hold the image sample fixed while the noise seed varies: the selection of config.seed, as a dataset
    records = ds.subsample(config.max_per_domain, config.max_per_class, config.seed)
    fixed = replace(ds, records=list(records))
    base = replace(config, max_per_domain=None, max_per_class=None, ensemble=1)
    noisy = model.uses_timestep
    settings = [("noise seed", s, replace(base, seed=config.seed + s)) for s in range(noise_seeds if noisy else 1)]
    settings += [("ensemble size", e, replace(base, ensemble=int(e))) for e in (ensembles if noisy else [])]
    total = sum(c.ensemble for _, _, c in settings)
    done, rows, ref_fs = 0, [], None
    for src, value, cfg in settings:
        step = (lambda d, n, done=done, w=cfg.ensemble: progress(done * n + d * w, total * n)) if progress else None
        fs = get_features(cfg, "all", device=device, batch_size=batch_size, cache_dir=cache_dir, progress=step,
                          model=model, dataset=fixed)
        done += cfg.ensemble
        if ref_fs is None:
            ref_fs = fs
        if noisy:  # a baseline has no noise: only k-means and bootstrap vary
            rows.append({"source": src, "setting": value,
                         "domain_nmi": nmi(fs.features[block], fs.domain_labels, n_seeds)[0]})
    X, y = ref_fs.features[block], ref_fs.domain_labels
    rows += [{"source": "k-means seed", "setting": s, "domain_nmi": _nmi(X, y, s)} for s in range(kmeans_seeds)]
    rng = np.random.default_rng(config.seed)
    for b in range(bootstraps):
        idx = rng.integers(0, len(X), len(X))
        rows.append({"source": "bootstrap", "setting": b, "domain_nmi": nmi(X[idx], y[idx], n_seeds)[0]})
    draws = pd.DataFrame(rows, columns=["source", "setting", "domain_nmi"])
    reference = _nmi(X, y, 0)  # one noise draw (this seed), one k-means run: the paper's protocol
    return Stability(draws=draws, summary=summarize(draws), reference=reference, block=block, config=config)
