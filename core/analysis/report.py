"""The paper's tables as one command: a self-contained HTML report, its markdown twin and LaTeX tables.

:func:`build_report` runs (or reads from the cache) a sweep per dataset and model, fixes each model's layer
and timestep, and gathers: the dataset x model table of domain and class NMI and AMI with 95 % intervals,
chance marks and a best-of-row star backed by a paired test, the paper's reference numbers beside ours
where a dataset is recognised by its DomainBed domain names, per model the block x timestep heatmaps, a
t-SNE panel per dataset coloured by domain, the stability over noise seeds, and a reproducibility footer.
:func:`render_html` / :func:`render_markdown` / :func:`render_latex` turn it into files.

Statistics (stated for citation in docs/METHODS.md, "Report: selection and reporting"):

* Setting. ``select="default"`` (the default: the paper's protocol) puts every model at its default layer
  (the paper's ``up_blocks.1`` for SD-2.1) and t = 50 (or the first timestep given when 50 is not among
  them); nothing is chosen on the data and every selected image is reported. ``select="best"`` (a deviation,
  labelled in every output) picks the (block, timestep) with the highest mean domain NMI over the datasets
  on *selection images* and reports *disjoint* images: a built-in ``name:heldout`` is chosen on
  ``name:train``; any other dataset (a folder, a manifest, a built-in ``:train``) on a seeded half of its
  selected images (stratified by domain and class, :func:`split_folds`) and reported on the other half.
* Each reported number is the mean over k-means seeds (and, for models that add diffusion noise, over the
  noise seeds ``seed, *noise_seeds``, each a new noise draw on the SAME images) of NMI or AMI of k-means
  with K = number of labels on the full features, with the 95 % interval of the hierarchical bootstrap over
  noise seeds, k-means seeds and images (:func:`core.analysis.stats.score_interval`).
* Chance: the permutation floor of the same clusters (:func:`core.analysis.stats.chance_floor`); a number at
  or below its mean + 2 sd is "within chance" and marked †.
* ★ marks the highest domain NMI of a row only when the paired bootstrap interval (same images, same noise
  draws) of it minus the runner-up's excludes 0 (:func:`core.analysis.stats.paired_score_difference`); the
  interval is printed either way.
* With a single class (or domain) among the reported images the NMI is undefined and shown as such.

Every feature comes from the feature cache (:func:`core.engine.extract.get_features`), every sweep score
from :func:`core.analysis.sweep.cached_scores` and every k-means of the table from the result cache; a
second identical report runs no model (:attr:`Report.n_model_images` counts the images that went through a
model).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import platform
import re
import shlex
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.analysis import paper as paper_ref
from core.analysis.metrics import DEFAULT_N_INIT
from core.analysis.reduce import ReductionConfig, cached_reduce
from core.analysis.stats import (N_BOOT, ChanceFloor, Interval, KMeansScores, chance_floor, cluster_scores,
                                 paired_score_difference, score_intervals)
from core.analysis.sweep import cached_scores
from core.data import builtin
from core.data.datasets import Dataset, ImageRecord, load_dataset
from core.engine.cache import FeatureCache, stable_hash
from core.engine.extract import ExtractionConfig, FeatureSet, get_features, select_images
from core.figures.offline import UNPACK_JS, plotly_js as _plotly_js

logger = logging.getLogger(__name__)

SELECT_MODES = ("default", "best")
FORMATS = ("html", "md", "latex", "both", "all")  # both: html + md; all: html + md + latex
FORMAT_SUFFIX = {"html": ".html", "md": ".md", "latex": ".tex"}
MIN_PER_DOMAIN = 2  # reported images per domain (and selection images per domain with --select best)
REPO_ROOT = Path(__file__).resolve().parents[2]
LABELS = ("domain", "class")


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ReportConfig:
    """What a report covers. ``blocks=None`` (or ``("all",)``): every block of each model; a model that has
    none of the given blocks (a baseline) uses all of its own. Timesteps apply to models with a timestep."""

    datasets: tuple[str, ...]
    models: tuple[str, ...]
    blocks: tuple[str, ...] | None = None
    timesteps: tuple[int, ...] = (50,)
    max_per_domain: int | None = None
    seed: int = 0  # image sample, diffusion noise of the first noise draw, held-out fold, bootstrap, t-SNE
    n_seeds: int = 5  # k-means seeds per score
    noise_seeds: tuple[int, ...] = (1, 2)  # further diffusion-noise draws on the same images (in the intervals)
    select: str = "default"  # "default": each model's default layer (the paper's); "best": see the module doc
    tsne_points: int = 300  # per t-SNE panel (a seeded, domain-stratified sample); 0: no t-SNE panels
    batch_size: int = 32
    n_boot: int = N_BOOT  # bootstrap draws behind every interval

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("give at least one dataset (--datasets A[,B...])")
        if not self.models:
            raise ValueError("give at least one model (--models M[,N...])")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a model is named twice in --models {','.join(self.models)}; name each once")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"a dataset is named twice in --datasets {','.join(self.datasets)}; name each once")
        if not self.timesteps:
            raise ValueError("give at least one timestep (--timesteps 50[,200...])")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds (k-means seeds) must be >= 1, got {self.n_seeds}")
        if self.max_per_domain is not None and self.max_per_domain < MIN_PER_DOMAIN:
            raise ValueError(f"max_per_domain must be >= {MIN_PER_DOMAIN}, got {self.max_per_domain}")
        if self.tsne_points and self.tsne_points < 10:
            raise ValueError(f"tsne_points must be 0 (no t-SNE panels) or >= 10, got {self.tsne_points}")
        if self.n_boot < 20:
            raise ValueError(f"n_boot (bootstrap draws) must be >= 20 for a 95 % interval, got {self.n_boot}")

    @property
    def extraction_seeds(self) -> list[int]:
        """The noise draws of a model with diffusion noise: ``seed`` first, then ``noise_seeds`` (deduplicated)."""
        return list(dict.fromkeys([int(self.seed), *(int(s) for s in self.noise_seeds)]))

    def command(self, out: str = "report.html", fmt: str | None = None) -> str:
        """The ``python -m core report`` command that builds this report."""
        parts = ["python", "-m", "core", "report", "--datasets", ",".join(self.datasets),
                 "--models", ",".join(self.models)]
        if self.blocks and list(self.blocks) != ["all"]:
            parts += ["--blocks", ",".join(self.blocks)]
        parts += ["--timesteps", ",".join(str(int(t)) for t in self.timesteps)]
        if self.max_per_domain:
            parts += ["--max-per-domain", str(self.max_per_domain)]
        defaults = ReportConfig(("x",), ("x",))
        if self.seed != defaults.seed:
            parts += ["--seed", str(self.seed)]
        if self.n_seeds != defaults.n_seeds:
            parts += ["--n-seeds", str(self.n_seeds)]
        if self.noise_seeds != defaults.noise_seeds:
            parts += ["--noise-seeds", ",".join(map(str, self.noise_seeds)) or "none"]
        if self.select != defaults.select:
            parts += ["--select", self.select]
        if self.tsne_points != defaults.tsne_points:
            parts += ["--tsne-points", str(self.tsne_points)]
        if self.n_boot != defaults.n_boot:
            parts += ["--n-boot", str(self.n_boot)]
        parts += ["--out", out]
        if fmt:
            parts += ["--format", fmt]
        return shlex.join(parts)


# ------------------------------------------------------------------------------------------ result


@dataclass
class Layout:
    embedding: np.ndarray  # (n, 2)
    domains: list[str]
    classes: list[str]
    domain_names: list[str]


@dataclass
class Split:
    """Which images choose the setting and which report it, for one dataset (see the module doc)."""

    dataset: str
    select_on: str | None  # the dataset the setting is chosen on (None: nothing is chosen on the data)
    select_ids: list[str] | None  # ids (within ``select_on``'s selection) it is chosen on; None: all of them
    report_ids: list[str] | None  # ids (within the dataset's selection) that are reported; None: all of them
    how: str  # one sentence for the outputs


@dataclass
class Report:
    config: ReportConfig
    table: pd.DataFrame  # one row per (dataset, model) at the model's chosen setting, on the report images
    sweeps: dict[tuple[str, str], pd.DataFrame]  # (dataset, model) -> sweep rows on the images the setting is chosen on
    chosen: dict[str, tuple[str, int | None]]  # model -> (block, timestep or None)
    stability: pd.DataFrame
    layouts: dict[tuple[str, str], Layout]
    paper: dict[str, str]  # dataset -> recognised DomainBed name
    datasets: list[dict]
    models: list[dict]
    versions: dict[str, str]
    command: str
    n_model_images: int  # images that went through a model while building this report (0: all cached)
    created: str = ""
    block_orders: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, Split] = field(default_factory=dict)
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)  # per dataset: best vs runner-up
    selection_images: dict[str, list[str]] = field(default_factory=dict)  # dataset -> paths the choice saw
    report_images: dict[str, list[str]] = field(default_factory=dict)  # dataset -> paths behind the table

    def value(self, dataset: str, model: str, column: str) -> float:
        row = self.table[(self.table["dataset"] == dataset) & (self.table["model"] == model)]
        return float(row[column].iloc[0])

    def row(self, dataset: str, model: str) -> pd.Series:
        return self.table[(self.table["dataset"] == dataset) & (self.table["model"] == model)].iloc[0]


def _short(name: str) -> str:
    """A dataset or model as shown in tables: built-in names and registered names as they are, paths by
    their last part."""
    p = Path(name)
    return p.name if ("/" in name or "\\" in name) else name


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "torch", "diffusers", "transformers", "scikit-learn", "openTSNE", "pandas", "plotly"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5)
        out["domainlens (git)"] = rev.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["domainlens (git)"] = "unknown"
    return out


def _stratified_sample(domains: Sequence[str], n: int, seed: int) -> np.ndarray:
    """Up to ``n`` row indices, the same share from every domain, seeded; sorted."""
    d = np.asarray(domains)
    if len(d) <= n:
        return np.arange(len(d))
    rng = np.random.default_rng(seed)
    names = sorted(set(d.tolist()))
    per = max(1, n // len(names))
    idx = []
    for name in names:
        rows = np.flatnonzero(d == name)
        idx.extend(rng.choice(rows, min(per, len(rows)), replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


def _model_blocks(model, blocks: Sequence[str] | None) -> list[str]:
    if not blocks or list(blocks) == ["all"]:
        return list(model.blocks)
    mine = [b for b in blocks if b in model.blocks]
    return mine or list(model.blocks)


def check_blocks(blocks: Sequence[str] | None, models: dict) -> None:
    """Every requested block must belong to at least one of the models (a typo is an error, not a silent
    fallback); a model with none of them (a baseline) uses its own blocks."""
    if not blocks or list(blocks) == ["all"]:
        return
    known = {b for m in models.values() for b in m.blocks}
    unknown = [b for b in blocks if b not in known]
    if unknown:
        have = "; ".join(f"{n}: {', '.join(m.blocks)}" for n, m in models.items())
        raise ValueError(f"unknown block(s) {unknown}: no model has them ({have}); pass 'all' or some of these")


# ------------------------------------------------------------------------------ selection without leakage


def split_folds(records: Sequence[ImageRecord], seed: int) -> tuple[list[str], list[str]]:
    """Two disjoint halves of ``records`` as id lists (fold A chooses, fold B reports), stratified: within each
    domain the images are grouped by class, shuffled within the class (seeded) and dealt alternately from a
    seeded start, so every domain (and each of its classes) is split as evenly as possible."""
    rng = np.random.default_rng([int(seed), 0x5E1EC7])
    a: list[str] = []
    b: list[str] = []
    by_domain: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_domain[r.domain][r.cls].append(r.id)
    for dom in sorted(by_domain):
        order = []
        for cls in sorted(by_domain[dom]):
            ids = sorted(by_domain[dom][cls])
            order += [ids[i] for i in rng.permutation(len(ids))]
        start = int(rng.integers(2))
        for i, x in enumerate(order):
            (a if (i + start) % 2 == 0 else b).append(x)
    return sorted(a), sorted(b)


def _check_counts(name: str, records: Sequence[ImageRecord], minimum: int, why: str) -> None:
    """At least 2 domains and ``minimum`` images in every domain, else a ValueError that says what to do."""
    counts = Counter(r.domain for r in records)
    if len(counts) < 2:
        raise ValueError(f"{_short(name)}: {len(counts)} domain(s) among the selected images "
                         f"({', '.join(map(repr, sorted(counts))) or 'none'}); domain NMI needs at least 2 domains. "
                         "Point the report at a dataset with two or more domain folders.")
    low = sorted((d, n) for d, n in counts.items() if n < minimum)
    if low:
        listed = ", ".join(f"{d!r} ({n} image{'s' if n != 1 else ''})" for d, n in low)
        raise ValueError(f"{_short(name)}: domain(s) {listed} have fewer than {minimum} selected images; {why}. "
                         "Add images to those domains, raise --max-per-domain, or leave the domains out.")


def plan_split(name: str, records: Sequence[ImageRecord], select: str, seed: int) -> Split:
    """Where dataset ``name`` (its selected ``records``) is chosen on and reported on; checks the counts."""
    if select == "default":
        _check_counts(name, records, MIN_PER_DOMAIN, "k-means needs at least 2 images per domain")
        return Split(name, None, None, None, "no selection on the data: each model at its default layer "
                     "(the paper's protocol); every selected image is reported")
    if builtin.is_builtin(name) and builtin.parse_name(name)[1] == "heldout":
        _check_counts(name, records, MIN_PER_DOMAIN, "k-means needs at least 2 images per domain")
        base = builtin.parse_name(name)[0]
        return Split(name, f"{base}:train", None, None,
                     f"chosen on {base}:train, reported on {base}:heldout (disjoint images)")
    _check_counts(name, records, 2 * MIN_PER_DOMAIN,
                  "--select best on a dataset without a train split chooses on one half of the images and reports "
                  f"on the other, so every domain needs {2 * MIN_PER_DOMAIN}; --select default reports all of them")
    a, b = split_folds(records, seed)
    return Split(name, name, a, b, f"chosen on fold A ({len(a)} images: a seeded half of every domain and class, "
                 f"seed {seed}), reported on the disjoint fold B ({len(b)} images)")


def _choose(model, dfs: list[pd.DataFrame], select: str, timesteps: Sequence[int]) -> tuple[str, int | None]:
    if select == "default":
        block = model.default_block if any(model.default_block in set(d["block"]) for d in dfs) \
            else dfs[0]["block"].iloc[0]
        t = None
        if model.uses_timestep:
            t = 50 if 50 in timesteps else int(timesteps[0])
        return block, t
    allrows = pd.concat(dfs, ignore_index=True)
    allrows["t"] = allrows["timestep"].astype("float")
    mean = allrows.groupby(["block", "t"], dropna=False, sort=False)["domain_nmi"].mean()
    block, t = mean.idxmax()
    return str(block), (None if pd.isna(t) else int(t))


def _at(df: pd.DataFrame, block: str, t: int | None) -> pd.Series:
    m = df["block"] == block
    m &= df["timestep"].isna() if t is None else (df["timestep"] == t)
    return df[m].iloc[0]


def _take(fs: FeatureSet, ids: Sequence[str] | None, blocks: Sequence[str] | None = None) -> FeatureSet:
    """The rows of ``fs`` whose id is in ``ids`` (in ``fs`` order), as a feature set with its own cache key."""
    if ids is None:
        return fs
    keep = set(ids)
    rows = np.array([i for i, x in enumerate(fs.ids) if x in keep], dtype=np.int64)
    sub_ids = [fs.ids[i] for i in rows]
    blocks = list(fs.features) if blocks is None else list(blocks)
    return replace(fs, ids=sub_ids, paths=[fs.paths[i] for i in rows], domains=[fs.domains[i] for i in rows],
                   classes=[fs.classes[i] for i in rows], features={b: fs.features[b][rows] for b in blocks},
                   cache_key=stable_hash({"of": fs.cache_key, "rows": stable_hash(sub_ids, 32)}, 32))


def _kmeans(fs: FeatureSet, block: str, labels: Sequence[str], n_seeds: int, cache: FeatureCache) -> KMeansScores:
    """:func:`core.analysis.stats.cluster_scores` of one block against ``labels``, kept in the result cache."""
    y = np.asarray(labels)
    key = stable_hash({"features": fs.cache_key, "block": block, "ids": stable_hash(list(fs.ids), 32),
                       "labels": stable_hash([str(v) for v in y], 32), "n_seeds": n_seeds,
                       "n_init": DEFAULT_N_INIT, "v": 2}, 32)
    hit = cache.load_result("kmeans", key)
    if hit is not None:
        return KMeansScores.from_arrays(hit)
    s = cluster_scores(fs.features[block], y, n_seeds=n_seeds, n_init=DEFAULT_N_INIT)
    cache.save_result("kmeans", key, s.to_arrays())
    return s


@dataclass
class _Runs:
    """The reported images of one (dataset, model) at its chosen setting, one k-means per noise draw."""

    ids: list[str]
    paths: list[str]
    seeds: list[int]
    domain: list[KMeansScores]
    cls: list[KMeansScores]
    n_domains: int
    n_classes: int
    fs: FeatureSet  # the first draw's features of the reported images


# ------------------------------------------------------------------------------------------- build


def build_report(
    config: ReportConfig,
    *,
    device: str = "auto",
    dtype: str = "auto",
    cache_dir: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
    models: dict | None = None,
) -> Report:
    """Everything the report shows. ``progress(done, total)`` counts image passes (a cached setting
    counts as done at once); ``models`` maps names to already loaded models (else they are loaded)."""
    from core.backbones.registry import load_backbone as load_model

    cache = FeatureCache(cache_dir)
    loaded = dict(models or {})
    for m in config.models:
        if m not in loaded:
            loaded[m] = load_model(m, device, dtype)
    check_blocks(config.blocks, loaded)
    dsets = {d: load_dataset(d) for d in config.datasets}

    def records(name: str, ds: Dataset) -> list[ImageRecord]:
        return select_images(ExtractionConfig(dataset=name, max_per_domain=config.max_per_domain,
                                              seed=config.seed), ds)[1]

    sel = {d: records(d, dsets[d]) for d in config.datasets}
    splits = {d: plan_split(d, sel[d], config.select, config.seed) for d in config.datasets}
    grid_ds: dict[str, tuple[str, Dataset]] = {}  # dataset -> (name, dataset) the sweep runs on
    for d, sp in splits.items():
        if sp.select_on is None or sp.select_on == d:
            grid_ds[d] = (d, dsets[d])
        else:
            other = load_dataset(sp.select_on)
            _check_counts(sp.select_on, records(sp.select_on, other), MIN_PER_DOMAIN,
                          "k-means needs at least 2 images per domain")
            grid_ds[d] = (sp.select_on, other)
    n_grid = {d: len(records(*grid_ds[d])) for d in config.datasets}
    n_rep = {d: len(sel[d]) if splits[d].report_ids is None else len(splits[d].report_ids) for d in config.datasets}
    ts = [int(t) for t in dict.fromkeys(config.timesteps)]

    def n_settings(model) -> int:
        return len(ts) if model.uses_timestep else 1

    def n_draws(model) -> int:
        return len(config.extraction_seeds) if model.uses_timestep else 1

    total = sum(n_grid[d] * n_settings(loaded[m]) + n_rep[d] * (n_draws(loaded[m]) - 1)
                + (n_rep[d] if grid_ds[d][0] != d else 0) for d in config.datasets for m in config.models)
    done = [0]
    counted = [0]

    def step(offset: int):
        if not progress:
            return None
        return lambda k, _n: progress(min(total, offset + k), total)

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            progress(min(done[0], total), total)

    def features(name: str, ds: Dataset, model_name: str, t: int | None, blocks, seed: int | None = None,
                 **kw) -> FeatureSet:
        cfg = ExtractionConfig(dataset=name, model=model_name, timestep=ts[0] if t is None else t,
                               seed=config.seed if seed is None else seed, max_per_domain=config.max_per_domain)
        cfg = replace(cfg, **kw)
        fs = get_features(cfg, blocks, device=device, dtype=dtype, batch_size=config.batch_size,
                          cache_dir=cache_dir, progress=step(done[0]), model=loaded[model_name], dataset=ds)
        counted[0] += fs.n_unet_images
        return fs

    # 1. the sweep on the images each setting is chosen on (all selected images with select="default")
    sweeps: dict[tuple[str, str], pd.DataFrame] = {}
    for d in config.datasets:
        name, ds = grid_ds[d]
        ids = splits[d].select_ids
        for m in config.models:
            model = loaded[m]
            rows = []
            for t in (ts if model.uses_timestep else [None]):
                fs = _take(features(name, ds, m, t, _model_blocks(model, config.blocks)), ids)
                for b in fs.features:
                    s = cached_scores(fs, b, config.n_seeds, False, cache)
                    rows.append({"block": b, "timestep": t, "domain_nmi": s.domain_nmi,
                                 "domain_nmi_std": s.domain_nmi_std, "domain_nmi_lo": s.domain_nmi_lo,
                                 "domain_nmi_hi": s.domain_nmi_hi, "domain_ami": s.domain_ami,
                                 "domain_nmi_chance": s.domain_nmi_chance,
                                 "domain_nmi_chance_std": s.domain_nmi_chance_std, "class_nmi": s.class_nmi,
                                 "class_nmi_std": s.class_nmi_std, "n_images": s.n_images})
                advance(n_grid[d])
            df = pd.DataFrame(rows)
            df["timestep"] = df["timestep"].astype("Int64")
            sweeps[(d, m)] = df

    chosen = {m: _choose(loaded[m], [sweeps[(d, m)] for d in config.datasets], config.select, ts)
              for m in config.models}

    # 2. the chosen setting on the reported images: one k-means per noise draw, same images
    runs: dict[tuple[str, str], _Runs] = {}
    for d in config.datasets:
        ds = dsets[d]
        for m in config.models:
            model = loaded[m]
            block, t = chosen[m]
            fs = _take(features(d, ds, m, t, [block]), splits[d].report_ids, [block])
            if grid_ds[d][0] != d:
                advance(n_rep[d])
            seeds = config.extraction_seeds if model.uses_timestep else [config.seed]
            dom = [_kmeans(fs, block, fs.domains, config.n_seeds, cache)]
            cls = [_kmeans(fs, block, fs.classes, config.n_seeds, cache)]
            if len(seeds) > 1:
                # the same images (this selection, nothing subsampled) with another noise draw
                rec = {r.id: r for r in sel[d]}
                same = replace(ds, records=[rec[i] for i in fs.ids])
                for s in seeds[1:]:
                    fs_s = features(d, same, m, t, [block], seed=s, max_per_domain=None, max_per_class=None)
                    pos = {x: i for i, x in enumerate(fs_s.ids)}
                    missing = [x for x in fs.ids if x not in pos]
                    if missing:
                        raise ValueError(f"{_short(d)}: {len(missing)} image(s) unreadable in the noise draw with "
                                         f"seed {s} (e.g. {missing[0]!r}); fix or remove them and build again")
                    fs_s = _take(fs_s, fs.ids, [block])
                    dom.append(_kmeans(fs_s, block, fs_s.domains, config.n_seeds, cache))
                    cls.append(_kmeans(fs_s, block, fs_s.classes, config.n_seeds, cache))
                    advance(n_rep[d])
            runs[(d, m)] = _Runs(list(fs.ids), list(fs.paths), seeds, dom, cls, len(set(fs.domains)),
                                 len(set(fs.classes)), fs)

    # 3. numbers, intervals, chance floors
    rows, stab = [], []
    for d in config.datasets:
        for m in config.models:
            r = runs[(d, m)]
            block, t = chosen[m]
            row = {"dataset": d, "model": m, "block": block, "timestep": t, "n_images": len(r.ids),
                   "n_domains": r.n_domains, "n_classes": r.n_classes, "noise_draws": len(r.seeds)}
            for lab, rr, k in (("domain", r.domain, r.n_domains), ("class", r.cls, r.n_classes)):
                row[f"{lab}_defined"] = k >= 2
                if k < 2:
                    for col in ("nmi", "nmi_lo", "nmi_hi", "nmi_std", "ami", "ami_lo", "ami_hi", "chance",
                                "chance_sd", "chance_ami_sd"):
                        row[f"{lab}_{col}"] = float("nan")
                    row[f"{lab}_within_chance"] = False
                    continue
                ivs = score_intervals(rr, config.n_boot, config.seed)
                ni, ai = ivs["nmi"], ivs["ami"]
                fl: ChanceFloor = chance_floor(rr[0], seed=config.seed)
                row.update({f"{lab}_nmi": ni.estimate, f"{lab}_nmi_lo": ni.lo, f"{lab}_nmi_hi": ni.hi,
                            f"{lab}_nmi_std": float(np.mean([x.nmi_std for x in rr])),
                            f"{lab}_ami": ai.estimate, f"{lab}_ami_lo": ai.lo, f"{lab}_ami_hi": ai.hi,
                            f"{lab}_chance": fl.nmi_mean, f"{lab}_chance_sd": fl.nmi_std,
                            f"{lab}_chance_ami_sd": fl.ami_std, f"{lab}_within_chance": fl.within(ni.estimate)})
            rows.append(row)
            per_draw = [x.nmi_mean for x in r.domain]
            stab.append({"dataset": d, "model": m, "seeds": ",".join(map(str, r.seeds)),
                         "kmeans_domain_std": row["domain_nmi_std"], "kmeans_class_std": row["class_nmi_std"],
                         "draw_domain_nmi": ", ".join(f"{v:.3f}" for v in per_draw),
                         "draw_domain_std": float(np.std(per_draw)),
                         "draw_class_nmi": ", ".join(f"{x.nmi_mean:.3f}" for x in r.cls) if r.n_classes >= 2 else "",
                         "seed_noise": bool(loaded[m].uses_timestep)})
    table = pd.DataFrame(rows)
    table["timestep"] = table["timestep"].astype("Int64")

    # 4. the star: best vs runner-up of each row, paired over images (and noise draws)
    table["best"] = False
    comps = []
    for d in config.datasets:
        sub = table[table["dataset"] == d].sort_values("domain_nmi", ascending=False, kind="stable")
        if len(sub) < 2 or not bool(sub["domain_defined"].iloc[0]):
            continue
        a, b = sub.iloc[0], sub.iloc[1]
        ra, rb = runs[(d, a["model"])], runs[(d, b["model"])]
        if ra.ids != rb.ids:  # every model reports the same selection; a mismatch would unpair the test
            raise RuntimeError(f"{d}: {a['model']} and {b['model']} were scored on different images")
        diff = paired_score_difference(ra.domain, rb.domain, "nmi", config.n_boot, config.seed)
        star = bool(diff.lo > 0)
        table.loc[sub.index[0], "best"] = star
        comps.append({"dataset": d, "best": a["model"], "runner_up": b["model"], "diff": diff.estimate,
                      "diff_lo": diff.lo, "diff_hi": diff.hi, "star": star,
                      "paired_noise": len(ra.seeds) == len(rb.seeds) and len(ra.seeds) > 1})

    # 5. t-SNE panels of the reported images (for looking, not for the numbers)
    layouts = {}
    for d in (config.datasets if config.tsne_points else ()):
        for m in config.models:
            fs, block = runs[(d, m)].fs, chosen[m][0]
            idx = _stratified_sample(fs.domains, config.tsne_points, config.seed)
            emb = cached_reduce(fs.features[block][idx], ReductionConfig(method="tsne", random_state=config.seed),
                                cache)
            layouts[(d, m)] = Layout(emb, [fs.domains[i] for i in idx], [fs.classes[i] for i in idx],
                                     list(fs.domain_names))

    def grid_paths(d: str) -> list[str]:
        name, ds = grid_ds[d]
        recs = records(name, ds)
        keep = None if splits[d].select_ids is None else set(splits[d].select_ids)
        return [r.path for r in recs if keep is None or r.id in keep]

    recognised = {d: paper_ref.recognise(ds.domains) for d, ds in dsets.items()}
    return Report(
        config=config, table=table, sweeps=sweeps, chosen=chosen, stability=pd.DataFrame(stab), layouts=layouts,
        paper={d: n for d, n in recognised.items() if n},
        datasets=[{"dataset": d, "name": dsets[d].name, "root": str(dsets[d].root),
                   "fingerprint": dsets[d].fingerprint, "domains": list(dsets[d].domains),
                   "n_classes": len(dsets[d].classes), "n_images": len(dsets[d]), "n_selected": len(sel[d]),
                   "n_reported": n_rep[d], "chosen_on": splits[d].select_on or "",
                   "n_chosen_on": n_grid[d] if splits[d].select_ids is None else len(splits[d].select_ids)}
                  for d in config.datasets],
        models=[{"model": m, "identity": str(getattr(loaded[m], "identity", "")),
                 "blocks": len(loaded[m].blocks), "timestep": bool(loaded[m].uses_timestep),
                 "prompt": bool(loaded[m].uses_prompt)} for m in config.models],
        versions=package_versions(), command=command or config.command(),
        n_model_images=int(counted[0]),
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        block_orders={m: list(loaded[m].blocks) for m in config.models},
        splits=splits, comparisons=pd.DataFrame(comps, columns=["dataset", "best", "runner_up", "diff", "diff_lo",
                                                                 "diff_hi", "star", "paired_noise"]),
        selection_images={d: grid_paths(d) for d in config.datasets if splits[d].select_on is not None},
        report_images={d: runs[(d, config.models[0])].paths for d in config.datasets},
    )


# -------------------------------------------------------------------------------------- rendering

STAR = "★"
CHANCE_MARK = "†"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _setting(block: str, t) -> str:
    return block if t is None or pd.isna(t) else f"{block} @ t={int(t)}"


def _paper_cell(name: str) -> str:
    nums = paper_ref.paper_numbers(name)
    return " · ".join(f"{m} {nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS)


def _undefined(r: pd.Series, lab: str) -> str:
    k = int(r["n_domains"] if lab == "domain" else r["n_classes"])
    noun = {"domain": ("domain", "domains"), "class": ("class", "classes")}[lab][k != 1]
    return f"undefined ({k} {noun})"


def _iv(r: pd.Series, lab: str, stat: str = "nmi", digits: int = 3) -> str:
    """``"0.793 [0.771, 0.812]"`` (``†`` appended when within chance), or why the score is undefined."""
    if not bool(r[f"{lab}_defined"]):
        return _undefined(r, lab)
    iv = Interval(float(r[f"{lab}_{stat}"]), float(r[f"{lab}_{stat}_lo"]), float(r[f"{lab}_{stat}_hi"]))
    return iv.format(digits) + (f" {CHANCE_MARK}" if bool(r[f"{lab}_within_chance"]) else "")


def _diff_text(c: pd.Series, digits: int = 3) -> str:
    return Interval(float(c["diff"]), float(c["diff_lo"]), float(c["diff_hi"])).format(digits, signed=True)


def headline_frame(rep: Report, stat: str = "nmi") -> pd.DataFrame:
    """The paper's table shape: one row per dataset, per model a "domain / class" cell (``stat``: NMI or AMI,
    each with its 95 % interval; ★ (NMI table) = best domain NMI of the row, backed by the paired test; † = within
    chance), then the paper's numbers (NMI only)."""
    out = []
    for d in rep.config.datasets:
        row = {"dataset": _short(d)}
        for m in rep.config.models:
            r = rep.row(d, m)
            star = f" {STAR}" if r["best"] and stat == "nmi" else ""  # the paired test is on domain NMI
            row[_short(m)] = f"{_iv(r, 'domain', stat)} / {_iv(r, 'class', stat)}{star}"
        if stat == "nmi":
            row[paper_ref.PAPER_LABEL] = (f"{rep.paper[d]}: " + _paper_cell(rep.paper[d])) if d in rep.paper else "—"
        out.append(row)
    return pd.DataFrame(out)


def comparison_frame(rep: Report) -> pd.DataFrame:
    """Per dataset: the best domain NMI against the runner-up, the paired 95 % interval of the difference and
    the verdict (★ only when the interval excludes 0)."""
    out = []
    for _, c in rep.comparisons.iterrows():
        out.append({"dataset": _short(c["dataset"]), "best": _short(c["best"]), "runner-up": _short(c["runner_up"]),
                    "domain NMI difference [95 % paired interval]": _diff_text(c),
                    "verdict": (f"{STAR} {_short(c['best'])} higher (interval excludes 0)" if c["star"]
                                else "no clear winner (interval contains 0)")})
    return pd.DataFrame(out, columns=["dataset", "best", "runner-up", "domain NMI difference [95 % paired interval]",
                                      "verdict"])


def chance_frame(rep: Report) -> pd.DataFrame:
    """Per (dataset, model): the images reported, the chance floor of domain and class NMI (mean ± sd of the
    permutation null) and whether the score is within it."""
    out = []
    for _, r in rep.table.iterrows():
        row = {"dataset": _short(r["dataset"]), "model": _short(r["model"]),
               "setting": _setting(r["block"], r["timestep"]), "images": int(r["n_images"]),
               "noise draws": int(r["noise_draws"])}
        for lab in LABELS:
            if not bool(r[f"{lab}_defined"]):
                row[f"{lab} NMI chance floor"] = _undefined(r, lab)
                continue
            row[f"{lab} NMI chance floor"] = (_pm(r[f"{lab}_chance"], r[f"{lab}_chance_sd"])
                                              + (f" (score within chance {CHANCE_MARK})" if r[f"{lab}_within_chance"]
                                                 else ""))
        out.append(row)
    return pd.DataFrame(out)


def _shown(name: str) -> str:
    """A dataset with its split spelled out (built-ins), else as in tables."""
    return builtin.canonical_name(name) if builtin.is_builtin(name) else _short(name)


def selection_frame(rep: Report) -> pd.DataFrame:
    out = []
    for d in rep.config.datasets:
        sp = rep.splits[d]
        info = next(x for x in rep.datasets if x["dataset"] == d)
        out.append({"dataset": _short(d),
                    "setting chosen on": "— (no selection)" if sp.select_on is None else
                    (_short(sp.select_on) + (" fold A" if sp.select_ids is not None else "")),
                    "images chosen on": "—" if sp.select_on is None else info["n_chosen_on"],
                    "reported on": _shown(d) + (" fold B" if sp.report_ids is not None else ""),
                    "images reported": info["n_reported"], "how": sp.how})
    return pd.DataFrame(out)


def _md_escape(v) -> str:
    """A markdown table cell or text run that renders as the literal text: HTML special characters escaped
    (markdown passes raw HTML through), the pipe, backticks and link syntax ``](`` neutralised."""
    s = html.escape(str(v), quote=False)
    return s.replace("|", "\\|").replace("`", "\\`").replace("](", "]\\(").replace("\n", " ")


def _md_table(df: pd.DataFrame) -> str:
    cols = [_md_escape(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_md_escape(v) for v in r.tolist()) + " |")
    return "\n".join(lines)


def _md_fence(text: str, lang: str = "") -> list[str]:
    """A fenced code block that ``text`` cannot close (the fence is longer than any backtick run in it)."""
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, run + 1)
    return [fence + lang, text, fence]


def _grid_cell(r: pd.Series) -> str:
    """A sweep cell: domain NMI with its interval (k-means seeds x images, one noise draw), † within chance,
    and the AMI."""
    iv = Interval(float(r["domain_nmi"]), float(r["domain_nmi_lo"]), float(r["domain_nmi_hi"]))
    chance = r["domain_nmi"] <= r["domain_nmi_chance"] + 2 * r["domain_nmi_chance_std"]
    return f"{iv.format(3)}{' ' + CHANCE_MARK if chance else ''} · AMI {r['domain_ami']:.3f}"


def grid_frame(df: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """The sweep of one (dataset, model) as a block x timestep table of :func:`_grid_cell` strings."""
    d = df.copy()
    d["cell"] = [_grid_cell(r) for _, r in d.iterrows()]
    d["t"] = ["n/a" if pd.isna(v) else str(int(v)) for v in d["timestep"]]
    blocks = [b for b in order if b in set(d["block"])]
    tcols = sorted(d["t"].unique(), key=lambda s: (s == "n/a", int(s) if s != "n/a" else 0))
    g = d.pivot(index="block", columns="t", values="cell").reindex(index=blocks, columns=tcols).fillna("")
    g.insert(0, "block \\ t", g.index)
    return g.reset_index(drop=True)


def _stability_frame(rep: Report) -> pd.DataFrame:
    s = rep.stability
    return pd.DataFrame({
        "dataset": [_short(x) for x in s["dataset"]], "model": [_short(x) for x in s["model"]],
        "domain NMI std over k-means seeds": s["kmeans_domain_std"].map("{:.3f}".format),
        "class NMI std over k-means seeds": s["kmeans_class_std"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}"),
        "noise seeds": s["seeds"],
        "domain NMI per noise draw": s["draw_domain_nmi"],
        "std over noise draws": s["draw_domain_std"].map("{:.3f}".format),
        "class NMI per noise draw": [v or "—" for v in s["draw_class_nmi"]],
        "what changes": ["diffusion noise (same images)" if n else "nothing: no noise (one draw)"
                         for n in s["seed_noise"]],
    })


def _chosen_frame(rep: Report) -> pd.DataFrame:
    how = ("highest mean domain NMI over the datasets on the selection images" if rep.config.select == "best"
           else "the model's default layer (the paper's protocol)")
    return pd.DataFrame([{"model": _short(m), "layer @ timestep": _setting(b, t), "chosen by": how}
                         for m, (b, t) in rep.chosen.items()])


def _repro_frames(rep: Report) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    versions = pd.DataFrame([{"package": k, "version": v} for k, v in rep.versions.items()])
    models = pd.DataFrame([{"model": m["model"], "identity (weights hash)": m["identity"]} for m in rep.models])
    dsets = pd.DataFrame([{"dataset": d["dataset"], "fingerprint": d["fingerprint"],
                           "domains": ", ".join(d["domains"]), "classes": d["n_classes"],
                           "images": d["n_images"], "used": d["n_selected"], "reported": d["n_reported"]}
                          for d in rep.datasets])
    return versions, models, dsets


def _seeds_text(rep: Report) -> str:
    c = rep.config
    return (f"image sample seed {c.seed}; diffusion-noise draws {', '.join(map(str, c.extraction_seeds))} (models "
            f"with a timestep; on the same images); k-means seeds 0..{c.n_seeds - 1} (one k-means each); "
            f"bootstrap: {c.n_boot} draws, seed {c.seed}; t-SNE seed {c.seed} (openTSNE, PCA-50, up to "
            f"{c.tsne_points} points per panel); selection: {c.select}; max per domain: {c.max_per_domain or 'all'}")


def _legend(rep: Report) -> list[str]:
    """The sentences every format prints under the headline table."""
    c = rep.config
    draws = len(c.extraction_seeds)
    out = [f"Per cell: domain NMI (higher: the features separate domains) / class NMI (lower: purer domain signal) "
           f"of k-means with K = number of labels on the full features, at each model's layer and timestep; "
           f"mean over {c.n_seeds} k-means seeds"
           + (f" and {draws} diffusion-noise draws on the same images" if draws > 1 else "")
           + f". [lo, hi]: 95 % interval of a hierarchical bootstrap ({c.n_boot} draws) over "
           + ("noise draws, " if draws > 1 else "")
           + "k-means seeds and images" + (" (models without noise: k-means seeds and images)." if draws > 1 else "."),
           f"{STAR}: the highest domain NMI of the row, only where the paired bootstrap interval (same images, same "
           "noise draws) of it minus the runner-up's excludes 0 (see the comparison below).",
           f"{CHANCE_MARK}: within chance, i.e. at or below the mean + 2 sd of the NMI the same clusters reach "
           "against permuted labels. AMI is NMI corrected for chance (0 = chance, 1 = perfect).",
           "Undefined: one class (or domain) among the reported images leaves nothing to cluster by; no number "
           "is shown."]
    if c.select == "best":
        out.append("Deviation from the paper: the layer and timestep are chosen on the data (best mean domain NMI), "
                   "on images disjoint from the ones reported: " + "; ".join(
                       f"{_short(d)}: {rep.splits[d].how}" for d in c.datasets) + ".")
    else:
        out.append("Setting: each model's default layer (the paper's protocol, nothing chosen on the data); "
                   "every selected image is reported.")
    return out


def _grid_note(rep: Report) -> str:
    where = "the selection images (disjoint from the reported ones)" if rep.config.select == "best" \
        else "every selected image"
    return (f"On {where}, first noise draw: domain NMI, mean over {rep.config.n_seeds} k-means seeds, with its 95 % "
            f"interval over k-means seeds and images; {CHANCE_MARK} within chance; AMI beside it.")


def render_markdown(rep: Report) -> str:
    c = rep.config
    out = ["# DomainLens report", "", "Built with:", "", *_md_fence(rep.command, "bash"), "",
           f"Generated {rep.created}. The figures (heatmaps, t-SNE) are in the HTML twin.", "",
           "## Domain NMI / class NMI", "", _md_table(headline_frame(rep)), ""]
    out += [_md_escape(s) + "  " for s in _legend(rep)] + [""]
    out += ["## Domain AMI / class AMI (chance-corrected)", "", _md_table(headline_frame(rep, "ami")), "",
            "## Best against runner-up (paired bootstrap over images)", ""]
    comp = comparison_frame(rep)
    out += [_md_table(comp) if len(comp) else "One model per dataset: nothing to compare.", "",
            "## Chance floors", "", _md_table(chance_frame(rep)), "",
            "## Selection", "", _md_table(selection_frame(rep)), "",
            "Chosen setting per model:", "", _md_table(_chosen_frame(rep)), ""]
    if rep.paper:
        out += ["## Reference: the paper's numbers (not measured here)", "",
                _md_escape(f"From {paper_ref.PAPER_CITATION}, on the full datasets with the paper's models. Shown for "
                           "the datasets recognised by their DomainBed domain names."), ""]
        rows = []
        for d, name in rep.paper.items():
            nums = paper_ref.paper_numbers(name)
            rows.append({"dataset": f"{_short(d)} (= {name})",
                         **{m: f"{nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS}})
        out += [_md_table(pd.DataFrame(rows)), ""]
    out += ["## Per model: domain NMI over blocks x timesteps", "", _md_escape(_grid_note(rep)), ""]
    for m in c.models:
        for d in c.datasets:
            out += [f"### {_md_escape(_short(m))} on {_md_escape(_short(d))}", "",
                    _md_table(grid_frame(rep.sweeps[(d, m)], rep.block_orders[m])), ""]
    out += ["## Stability over noise draws", "", _md_table(_stability_frame(rep)), ""]
    versions, models, dsets = _repro_frames(rep)
    out += ["## Reproducibility", "", "Command:", "", *_md_fence(rep.command, "bash"), "",
            f"Seeds: {_md_escape(_seeds_text(rep))}.", "",
            _md_table(models), "", _md_table(dsets), "", _md_table(versions), "",
            f"Images that went through a model while building this report: {rep.n_model_images} "
            "(0 = every feature came from the cache).", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- LaTeX

_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}"}


def tex_escape(s) -> str:
    """Text set literally by LaTeX: every special character escaped, other non-ASCII characters dropped to
    ``?`` (pdflatex without extra packages)."""
    return "".join(_TEX.get(ch, ch if ch.isascii() else "?") for ch in str(s))


def _tex_iv(r: pd.Series, lab: str, stat: str, star: bool = False) -> str:
    if not bool(r[f"{lab}_defined"]):
        return "n/a"
    iv = Interval(float(r[f"{lab}_{stat}"]), float(r[f"{lab}_{stat}_lo"]), float(r[f"{lab}_{stat}_hi"]))
    body = f"{iv.estimate:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]".replace("-", "$-$")
    marks = ("\\star" if star else "") + ("\\dagger" if bool(r[f"{lab}_within_chance"]) else "")
    return body + (f"$^{{{marks}}}$" if marks else "")


def _tex_table(rep: Report, stat: str, label: str, caption: str) -> list[str]:
    c = rep.config
    n = len(c.models)
    out = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}", f"\\label{{{label}}}",
           "\\begin{tabular}{l" + " cc" * n + "}", "\\toprule",
           " & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{tex_escape(_short(m))}}}" for m in c.models) + " \\\\",
           " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)),
           "Dataset & " + " & ".join("domain $\\uparrow$ & class $\\downarrow$" for _ in c.models) + " \\\\",
           "\\midrule"]
    for d in c.datasets:
        cells = [tex_escape(_short(d))]
        for m in c.models:
            r = rep.row(d, m)
            cells += [_tex_iv(r, "domain", stat, star=bool(r["best"]) and stat == "nmi"), _tex_iv(r, "class", stat)]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return out


def render_latex(rep: Report) -> str:
    """The headline tables for a paper (booktabs): NMI and AMI, one row per dataset, per model a domain and a
    class column, every number with its 95 % interval; then the paired comparisons. ``\\input`` it in a
    document that loads ``booktabs``."""
    c = rep.config
    draws = len(c.extraction_seeds)
    spread = (f"mean over {c.n_seeds} k-means seeds" + (f" and {draws} diffusion-noise draws" if draws > 1 else "")
              + f"; [lo, hi]: 95\\,\\% interval of a hierarchical bootstrap ({c.n_boot} draws) over "
              + ("noise draws, " if draws > 1 else "") + "k-means seeds and images")
    settings = "; ".join(f"{tex_escape(_short(m))}: {tex_escape(_setting(b, t))}" for m, (b, t) in rep.chosen.items())
    if c.select == "best":
        sel = ("Layer and timestep chosen on the data (best mean domain NMI; a deviation from the paper) on images "
               "disjoint from those reported: " + "; ".join(
                   f"{tex_escape(_short(d))}: {tex_escape(rep.splits[d].how)}" for d in c.datasets) + ".")
    else:
        sel = "Each model at its default layer (the paper's protocol); nothing chosen on the data."
    marks = ("$^\\star$: best domain NMI of the row where the paired bootstrap interval of the difference to the "
             "runner-up excludes 0 (Table~\\ref{tab:domainlens-paired}). $^\\dagger$: within chance (at or below "
             "the mean + 2 sd of the permutation null). n/a: one class (or domain) among the reported images, "
             "NMI undefined.")
    out = ["% DomainLens report: the headline tables. Needs \\usepackage{booktabs}.",
           "% " + " ".join(rep.command.split()), f"% Generated {rep.created}.", ""]
    out += _tex_table(rep, "nmi", "tab:domainlens-nmi",
                      f"Domain NMI ($\\uparrow$) and class NMI ($\\downarrow$) of k-means with $K$ = number of labels "
                      f"on the full features; {spread}. Settings: {settings}. {sel} {marks}")
    out.append("")
    out += _tex_table(rep, "ami", "tab:domainlens-ami",
                      "Domain and class AMI (NMI corrected for chance: 0 = chance, 1 = perfect), same features, "
                      f"clusters and images as Table~\\ref{{tab:domainlens-nmi}}; {spread}.")
    out += ["", "\\begin{table}[t]", "\\centering", "\\small",
            "\\caption{Best against runner-up per dataset: difference of domain NMI with its 95\\,\\% paired "
            "bootstrap interval (the same resampled images and noise draws for both). A winner is called only "
            "when the interval excludes 0.}", "\\label{tab:domainlens-paired}",
            "\\begin{tabular}{lllcl}", "\\toprule",
            "Dataset & best & runner-up & $\\Delta$ domain NMI [95\\,\\%] & verdict \\\\", "\\midrule"]
    if len(rep.comparisons):
        for _, cp in rep.comparisons.iterrows():
            diff = Interval(float(cp["diff"]), float(cp["diff_lo"]), float(cp["diff_hi"])).format(3, signed=True)
            out.append(" & ".join([tex_escape(_short(cp["dataset"])), tex_escape(_short(cp["best"])),
                                   tex_escape(_short(cp["runner_up"])), diff.replace("-", "$-$").replace("+", "$+$"),
                                   "higher" if cp["star"] else "no clear winner"]) + " \\\\")
    else:
        out.append("\\multicolumn{5}{l}{one model per dataset: nothing to compare} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- HTML


_LOADER = """<script>
%s
(async function () {
  await dlUnpackPlotly();
  for (const el of document.querySelectorAll('script.dl-fig')) {
    const fig = JSON.parse(el.textContent);
    Plotly.newPlot(el.dataset.target, fig.data, fig.layout, {displaylogo: false, responsive: true});
  }
})().catch(function (e) {
  document.querySelectorAll('.fig').forEach(d => { d.textContent = 'Figures need a browser with '
    + 'DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+): ' + e; });
});
</script>""" % UNPACK_JS

_CSS = """<style>
body{font-family:Inter,'Source Sans Pro',Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1300px;
padding:0 1rem;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8} td.best{background:#fff3d6;font-weight:600}
td.paper,th.paper{background:#eef3fb;color:#334;font-style:italic;font-size:12px;max-width:420px}
code,pre{background:#f6f8fa;padding:2px 4px;border-radius:4px} pre{padding:8px;overflow-x:auto;white-space:pre-wrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.fig{min-height:320px;border:1px solid #eee} .note{color:#555;font-size:13px}
</style>"""


def _html_table(df: pd.DataFrame, classes: dict | None = None) -> str:
    classes = classes or {}
    head = "".join(f'<th class="{classes.get(("h", c), "")}">{html.escape(str(c))}</th>' for c in df.columns)
    body = []
    for i, (_, r) in enumerate(df.iterrows()):
        cells = "".join(f'<td class="{classes.get((i, c), classes.get(("col", c), ""))}">{html.escape(str(v))}</td>'
                        for c, v in r.items())
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def report_figures(rep: Report) -> list[tuple[str, str, object]]:
    """(section, title, plotly figure) for the HTML: heatmaps per model and dataset, t-SNE panels."""
    from core import figures

    out = []
    for m in rep.config.models:
        for d in rep.config.datasets:
            df = rep.sweeps[(d, m)]
            b, t = rep.chosen[m]
            if len(df) > 1:
                fig = figures.heatmap(df, "domain_nmi", block_order=rep.block_orders[m], best=_at(df, b, t),
                                      title=f"{_short(m)} on {_short(d)}: domain NMI", height=None)
                fig.update_layout(font=dict(size=12), height=max(260, 60 + 34 * df["block"].nunique()))
                out.append((f"heatmap:{m}", f"{_short(m)} on {_short(d)}", fig))
        for d in rep.config.datasets:
            if (d, m) not in rep.layouts:  # tsne_points=0
                continue
            lay = rep.layouts[(d, m)]
            fig = figures.scatter(lay.embedding, lay.domains, categories=lay.domain_names,
                                  hover=[f"{a} · {c}" for a, c in zip(lay.domains, lay.classes)],
                                  title=f"t-SNE, {_short(m)} ({_setting(*rep.chosen[m])}) on {_short(d)}",
                                  height=380, webgl=False)
            fig.update_layout(font=dict(size=12), legend=dict(font=dict(size=12)))
            out.append((f"tsne:{m}", f"{_short(m)} on {_short(d)}", fig))
    return out


def render_html(rep: Report, plotly_js: str = "gzip") -> str:
    """One self-contained page: no network needed to open it. ``plotly_js``: ``gzip`` (plotly.js inlined
    gzip-compressed, ~2 MB, unpacked by the browser's DecompressionStream) or ``inline`` (plain, ~4.8 MB)."""
    if plotly_js not in ("gzip", "inline"):
        raise ValueError(f"plotly_js must be 'gzip' or 'inline', got {plotly_js!r}")
    c = rep.config
    e = html.escape
    classes = {("h", paper_ref.PAPER_LABEL): "paper", ("col", paper_ref.PAPER_LABEL): "paper"}
    for i, d in enumerate(c.datasets):
        sub = rep.table[rep.table["dataset"] == d]
        for _, r in sub.iterrows():
            if r["best"]:
                classes[(i, _short(r["model"]))] = "best"
    comp = comparison_frame(rep)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>DomainLens report</title>", _CSS,
             "</head><body>", "<h1>DomainLens report</h1>",
             f"<p class='note'>Generated {e(rep.created)} by</p><pre>{e(rep.command)}</pre>",
             "<h2>Domain NMI / class NMI</h2>", _html_table(headline_frame(rep), classes),
             "<ul class='note'>" + "".join(f"<li>{e(s)}</li>" for s in _legend(rep)) + "</ul>",
             "<p class='note'>The last column, in italics, holds the <b>paper's</b> numbers (domain / class NMI of "
             "its models), shown only for datasets recognised by their DomainBed domain names; they were not "
             "measured here.</p>",
             "<h2>Domain AMI / class AMI (chance-corrected)</h2>",
             _html_table(headline_frame(rep, "ami")),
             "<h2>Best against runner-up (paired bootstrap over images)</h2>",
             _html_table(comp) if len(comp) else "<p class='note'>One model per dataset: nothing to compare.</p>",
             "<h2>Chance floors</h2>", _html_table(chance_frame(rep)),
             "<h2>Selection</h2>", _html_table(selection_frame(rep)),
             "<p>Chosen setting per model:</p>", _html_table(_chosen_frame(rep))]
    if rep.paper:
        rows = []
        for d, name in rep.paper.items():
            nums = paper_ref.paper_numbers(name)
            rows.append({"dataset": f"{_short(d)} (= {name})",
                         **{m: f"{nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS}})
        parts += ["<h2>Reference: the paper's numbers (not measured here)</h2>",
                  f"<p class='note'>From {e(paper_ref.PAPER_CITATION)}, on the full datasets with the paper's "
                  "models (domain NMI / class NMI).</p>",
                  _html_table(pd.DataFrame(rows), {("col", m): "paper" for m in paper_ref.PAPER_MODELS})]
    figs = report_figures(rep)
    scripts = []
    where = "the selection images" if c.select == "best" else "every selected image"
    for m in c.models:
        parts.append(f"<h2>{e(_short(m))}: layer {e(_setting(*rep.chosen[m]))}</h2>")
        heat = [(t, f) for s, t, f in figs if s == f"heatmap:{m}"]
        if heat:
            parts.append(f"<h3>Domain NMI over blocks × timesteps on {where}, first noise draw (outlined: the chosen "
                         "setting)</h3>"
                         "<div class='grid'>")
        else:
            parts.append("<p class='note'>One layer and no timestep: no block × timestep heatmap.</p><div>")
        for t, f in heat:
            scripts.append(f)
            parts.append(f"<div class='fig' id='fig{len(scripts)}'></div>")
        if heat:
            parts.append("</div><details><summary>The same as tables, with intervals and AMI</summary>"
                         f"<p class='note'>{e(_grid_note(rep))}</p>")
            for d in c.datasets:
                parts += [f"<h4>{e(_short(m))} on {e(_short(d))}</h4>",
                          _html_table(grid_frame(rep.sweeps[(d, m)], rep.block_orders[m]))]
            parts.append("</details><div>")
        parts.append("</div><h3>t-SNE of the reported images per dataset, coloured by domain (for looking, not for "
                     "the numbers)</h3><div class='grid'>" if c.tsne_points else
                     "</div><p class='note'>No t-SNE panels (--tsne-points 0).</p><div>")
        for s, t, f in figs:
            if s == f"tsne:{m}":
                scripts.append(f)
                parts.append(f"<div class='fig' id='fig{len(scripts)}'></div>")
        parts.append("</div>")
    parts += ["<h2>Stability over noise draws</h2>",
              "<p class='note'>The spread behind the intervals: k-means seeds, and the diffusion-noise draws on the "
              "same images (baselines add no noise).</p>",
              _html_table(_stability_frame(rep))]
    versions, models, dsets = _repro_frames(rep)
    parts += ["<h2>Reproducibility</h2>", "<p>Command:</p>", f"<pre>{e(rep.command)}</pre>",
              f"<p>Seeds: {e(_seeds_text(rep))}.</p>", _html_table(models), _html_table(dsets), _html_table(versions),
              f"<p class='note'>Images that went through a model while building this report: {rep.n_model_images} "
              "(0 = every feature came from the cache).</p>"]
    for i, f in enumerate(scripts, 1):
        spec = json.dumps(json.loads(f.to_json()), separators=(",", ":")).replace("</", "<\\/")
        parts.append(f'<script type="application/json" class="dl-fig" data-target="fig{i}">{spec}</script>')
    parts += [_plotly_js(plotly_js), _LOADER, "</body></html>"]
    return "\n".join(parts)


def write_report(rep: Report, out: str | Path, fmt: str = "html", plotly_js: str = "gzip") -> list[Path]:
    """Write ``out`` as HTML (``fmt="html"``), markdown (``"md"``), LaTeX tables (``"latex"``), HTML and
    markdown (``"both"``: ``out`` with ``.html`` and ``.md`` suffixes) or all three (``"all"``, plus ``.tex``).
    Returns the written paths."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kinds = {"both": ["html", "md"], "all": ["html", "md", "latex"]}.get(fmt, [fmt])
    render = {"html": lambda: render_html(rep, plotly_js), "md": lambda: render_markdown(rep),
              "latex": lambda: render_latex(rep)}
    written = []
    for k in kinds:
        p = out if len(kinds) == 1 else out.with_suffix(FORMAT_SUFFIX[k])
        p.write_text(render[k](), encoding="utf-8")
        written.append(p)
    return written
