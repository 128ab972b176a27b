"""The paper's tables as one command: a self-contained HTML report, its markdown twin and LaTeX tables.

:func:`build_report` runs (or reads from the cache) a sweep per dataset and model, fixes each model's layer
and timestep, and gathers: the dataset x model table of domain and class NMI and AMI with 95 % intervals,
chance marks and a best-of-row star backed by a paired test, the paper's reference numbers beside ours
where a dataset is recognised by its DomainBed domain names, per model the block x timestep heatmaps, a
t-SNE panel per dataset coloured by domain, the stability over noise seeds, and a reproducibility footer.
:mod:`core.figures.report` turns it into files (:func:`~core.figures.report.render_html`,
:func:`~core.figures.report.render_markdown`, :func:`~core.figures.report.render_latex`, :func:`~core.figures.report.write_report`).

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
import logging
import platform
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
from core.analysis.stats import (N_BOOT, ChanceFloor, KMeansScores, chance_floor, cluster_scores,
                                 paired_score_difference, score_intervals)
from core.analysis.sweep import cached_scores
from core.data import builtin
from core.data.datasets import Dataset, ImageRecord, load_dataset
from core.engine.cache import FeatureCache, stable_hash
from core.engine.extract import ExtractionConfig, FeatureSet, get_features, select_images

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


def short_name(name: str) -> str:
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
        raise ValueError(f"{short_name(name)}: {len(counts)} domain(s) among the selected images "
                         f"({', '.join(map(repr, sorted(counts))) or 'none'}); domain NMI needs at least 2 domains. "
                         "Point the report at a dataset with two or more domain folders.")
    low = sorted((d, n) for d, n in counts.items() if n < minimum)
    if low:
        listed = ", ".join(f"{d!r} ({n} image{'s' if n != 1 else ''})" for d, n in low)
        raise ValueError(f"{short_name(name)}: too few images per domain: domain(s) {listed} have fewer than "
                         f"{minimum} selected images; {why}. Add images to those domains, raise --max-per-domain "
                         f"(at least --max-per-domain {minimum}), or leave the domains out.")


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


def cell_at(df: pd.DataFrame, block: str, t: int | None) -> pd.Series:
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
                        raise ValueError(f"{short_name(d)}: {len(missing)} image(s) unreadable in the noise draw with "
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
