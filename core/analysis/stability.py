"""How much does a domain NMI depend on chance? Its spread over the random choices behind it.

Sources of chance, each varied alone around one setting (block, timestep, prompt), on the same images:

* noise seed - the diffusion noise draw (``ExtractionConfig.seed``; the image sample is held fixed);
* ensemble size - 1, 2, 4, 8 noise draws averaged per image (the paper uses a single draw);
* k-means seed - the clustering's initialisation, features fixed;
* image subsample - bootstrap resamples of the images, features fixed.

Every NMI here is k-means (K = number of domains) against the domain labels, as everywhere in DomainLens;
noise seeds, ensemble sizes and bootstraps use the mean over ``n_seeds`` k-means seeds, so they vary only
their own source. The paper's protocol is one noise draw, one run: the reference value is the setting as
given (its seed, ensemble 1, one k-means run).

Summaries and verdicts use standard deviations, never max - min ranges: a range grows with the number of
draws (20 bootstraps show a wider range than 5 noise seeds of the same spread). Ensemble size is a choice of
method, not chance: it is summarised as a systematic effect (the NMI change from the smallest to the largest
ensemble) and never counted in the chance band. The chance band of a difference between two settings is
``1.96 * sqrt(2) * sigma``, ``sigma = sqrt(sum of the chance sources' variances)`` (noise seed, k-means seed
divided by ``n_seeds`` since scores average that many, bootstrap), treating the sources as independent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import normalized_mutual_info_score

from core.engine.extract import ExtractionConfig, get_features

SOURCES = ("noise seed", "ensemble size", "k-means seed", "bootstrap")
SYSTEMATIC = ("ensemble size",)  # a choice of method: its effect is shown, never counted as chance
SUMMARY_COLUMNS = ["source", "kind", "n", "mean", "std", "min", "max", "effect"]
Z95 = 1.959963984540054


@dataclass
class Stability:
    draws: pd.DataFrame  # source, setting, domain_nmi (one row per draw)
    summary: pd.DataFrame  # SUMMARY_COLUMNS, one row per source
    reference: float  # the paper's single-draw protocol: this setting, its seed, one noise draw
    block: str
    config: ExtractionConfig
    n_seeds: int = 5  # k-means seeds behind every score but the k-means-seed draws themselves

    @property
    def largest(self) -> pd.Series:
        """The chance source (not ensemble size) with the largest standard deviation."""
        chance = self.summary[self.summary["kind"] == "chance"]
        return chance.loc[chance["std"].idxmax()] if len(chance) else self.summary.iloc[0]

    widest = largest  # the old name (was max - min; now the largest std)

    @property
    def chance_std(self) -> float:
        """Combined std of one score from the chance sources (module doc)."""
        return chance_std(self.summary, self.n_seeds)

    @property
    def band(self) -> float:
        """Half-width of the 95 % chance band of a difference between two settings (module doc)."""
        return difference_band(self.summary, self.n_seeds)


def summarize(draws: pd.DataFrame) -> pd.DataFrame:
    """One row per source: ``kind`` ("chance" or "systematic"), n, mean, std (ddof 1: an estimate of the
    source's spread), min, max; ``effect`` for a systematic source: the NMI at its largest setting minus at
    its smallest (nan for chance sources)."""
    rows = []
    for src in [s for s in SOURCES if s in set(draws["source"])] + sorted(set(draws["source"]) - set(SOURCES)):
        d = draws.loc[draws["source"] == src]
        v = d["domain_nmi"].to_numpy(float)
        kind = "systematic" if src in SYSTEMATIC else "chance"
        effect = float("nan")
        if kind == "systematic" and len(v) > 1:
            order = np.argsort(d["setting"].to_numpy(float))
            effect = float(v[order[-1]] - v[order[0]])
        rows.append({"source": src, "kind": kind, "n": len(v), "mean": v.mean(),
                     "std": v.std(ddof=1) if len(v) > 1 else 0.0, "min": v.min(), "max": v.max(), "effect": effect})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def chance_std(summary: pd.DataFrame, n_seeds: int = 5) -> float:
    """``sqrt(sum var)`` over the chance sources; the k-means-seed variance (of single k-means runs) is
    divided by ``n_seeds``, as each score averages that many seeds."""
    var = 0.0
    for _, r in summary[summary["kind"] == "chance"].iterrows():
        v = float(r["std"]) ** 2
        var += v / max(1, n_seeds) if r["source"] == "k-means seed" else v
    return float(np.sqrt(var))


def difference_band(summary: pd.DataFrame, n_seeds: int = 5) -> float:
    """``1.96 * sqrt(2) * chance_std``: a difference between two settings, each moved independently by the same
    chance, stays inside +- this 95 % of the time."""
    return float(Z95 * np.sqrt(2) * chance_std(summary, n_seeds))


def spread_sentence(summary: pd.DataFrame, difference: float, n_seeds: int = 5) -> str:
    """An honest sentence on whether a difference in domain NMI the user looks at is larger than chance.

    ``summary`` as :func:`summarize` returns; compares ``|difference|`` with :func:`difference_band` (standard
    deviations of the chance sources, never ranges); ensemble size is reported as a systematic effect.
    For two settings scored on the same images, Compare's paired bootstrap interval is the sharper test.
    """
    if summary.empty:
        raise ValueError("no stability draws to compare with")
    chance = summary[summary["kind"] == "chance"]
    if chance.empty:
        raise ValueError("no chance source among the stability draws (only systematic ones)")
    d, band, sd = abs(float(difference)), difference_band(summary, n_seeds), chance_std(summary, n_seeds)
    top = chance.loc[chance["std"].idxmax()]
    what = (f"chance std {sd:.3f} per score from {', '.join(f'{r.source}s' for r in chance.itertuples())}; "
            f"largest: {top['source']}s, std {float(top['std']):.3f} over {int(top['n'])} draws")
    if d <= band:
        out = (f"Careful: the difference you are looking at ({d:.3f}) is inside the 95 % chance band of a "
               f"difference between two settings (±{band:.3f}; {what}). It may not be real: compare averages over "
               f"several draws, or a paired interval on the same images (Compare), before reading anything into it.")
    else:
        out = (f"The difference you are looking at ({d:.3f}) is outside the 95 % chance band of a difference "
               f"between two settings (±{band:.3f}; {what}), so chance alone is unlikely to explain it (for these "
               f"images; other datasets can vary more).")
    for r in summary[summary["kind"] == "systematic"].itertuples():
        if not np.isnan(r.effect):
            out += (f" {r.source.capitalize()} is a choice of method, not chance: from its smallest to its largest "
                    f"setting it moves this NMI by {r.effect:+.3f} (not counted in the band).")
    return out


def _nmi(X: np.ndarray, y: np.ndarray, seed: int, n_init: int = 1) -> float:
    from core.analysis.metrics import kmeans_labels

    return float(normalized_mutual_info_score(y, kmeans_labels(X, len(np.unique(y)), seed, n_init=n_init)[0]))


def stability(config: ExtractionConfig, block: str, *, noise_seeds: int = 5,
              ensembles: Sequence[int] = (1, 2, 4, 8), kmeans_seeds: int = 10, bootstraps: int = 20,
              n_seeds: int = 5, n_init: int | None = None, model=None, device: str = "auto", batch_size: int = 32,
              cache_dir: str | None = None, progress: Callable[[int, int], None] | None = None,
              dataset=None) -> Stability:
    """Domain NMI of ``block`` under each source of chance (see the module doc). Features are cached, so
    the noise seed ``config.seed`` and ensemble 1 are the Explore page's features. ``n_init``: k-means runs
    per seed (best kept) for every draw; default :data:`core.analysis.metrics.DEFAULT_N_INIT` (one run)."""
    from core.analysis.metrics import DEFAULT_N_INIT, nmi
    from core.data.datasets import load_dataset

    n_init = DEFAULT_N_INIT if n_init is None else int(n_init)
    if noise_seeds < 1 or kmeans_seeds < 1 or bootstraps < 0 or not ensembles or min(ensembles) < 1:
        raise ValueError("noise_seeds and kmeans_seeds must be >= 1, bootstraps >= 0 and ensemble sizes >= 1")
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
                         "domain_nmi": nmi(fs.features[block], fs.domain_labels, n_seeds, n_init=n_init)[0]})
    X, y = ref_fs.features[block], ref_fs.domain_labels
    rows += [{"source": "k-means seed", "setting": s, "domain_nmi": _nmi(X, y, s, n_init)}
             for s in range(kmeans_seeds)]
    rng = np.random.default_rng(config.seed)
    for b in range(bootstraps):
        idx = rng.integers(0, len(X), len(X))
        rows.append({"source": "bootstrap", "setting": b,
                     "domain_nmi": nmi(X[idx], y[idx], n_seeds, n_init=n_init)[0]})
    draws = pd.DataFrame(rows, columns=["source", "setting", "domain_nmi"])
    reference = _nmi(X, y, 0)  # one noise draw (this seed), one k-means run: the paper's protocol
    return Stability(draws=draws, summary=summarize(draws), reference=reference, block=block, config=config,
                     n_seeds=n_seeds)
