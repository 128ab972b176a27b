"""The paper's tables as one command: a self-contained HTML report and its markdown twin.

:func:`build_report` runs (or reads from the cache) a sweep per dataset and model, picks each model's layer
and timestep, and gathers: the dataset x model table of domain and class NMI (mean +- std over k-means
seeds, best per row marked), the paper's reference numbers beside ours where a dataset is recognised by
its DomainBed domain names, per model the block x timestep heatmaps, a t-SNE panel per dataset coloured
by domain, the stability of the headline numbers (k-means seeds and extraction seeds), and a
reproducibility footer. :func:`render_html` / :func:`render_markdown` turn it into files.

Every number comes from the feature cache through :func:`core.analysis.sweep.run_sweep` and
:func:`core.analysis.sweep.cached_scores`; a second identical report runs no model
(:attr:`Report.n_model_images` counts the images that went through a model).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import platform
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.analysis import paper as paper_ref
from core.analysis.reduce import ReductionConfig, cached_reduce
from core.analysis.sweep import cached_scores, run_sweep
from core.data.datasets import load_dataset
from core.engine.cache import FeatureCache
from core.engine.extract import ExtractionConfig, get_features, select_images
from core.figures.offline import UNPACK_JS, plotly_js as _plotly_js

logger = logging.getLogger(__name__)

SELECT_MODES = ("best", "default")
REPO_ROOT = Path(__file__).resolve().parents[2]


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
    seed: int = 0  # image sample + diffusion noise of the headline numbers; t-SNE seed
    n_seeds: int = 5  # k-means seeds per NMI
    noise_seeds: tuple[int, ...] = (1, 2)  # extra extraction seeds for the stability table
    select: str = "best"  # "best": the (block, timestep) with the highest mean domain NMI over the datasets
    tsne_points: int = 300  # per t-SNE panel (a seeded, domain-stratified sample)
    batch_size: int = 32

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("give at least one dataset (--datasets A[,B...])")
        if not self.models:
            raise ValueError("give at least one model (--models M[,N...])")
        if not self.timesteps:
            raise ValueError("give at least one timestep (--timesteps 50[,200...])")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if self.n_seeds < 1:
            raise ValueError(f"n_seeds (k-means seeds) must be >= 1, got {self.n_seeds}")
        if self.max_per_domain is not None and self.max_per_domain < 2:
            raise ValueError(f"max_per_domain must be >= 2, got {self.max_per_domain}")
        if self.tsne_points < 10:
            raise ValueError(f"tsne_points must be >= 10, got {self.tsne_points}")

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
class Report:
    config: ReportConfig
    table: pd.DataFrame  # one row per (dataset, model) at the model's chosen setting
    sweeps: dict[tuple[str, str], pd.DataFrame]  # (dataset, model) -> run_sweep rows
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

    def value(self, dataset: str, model: str, column: str) -> float:
        row = self.table[(self.table["dataset"] == dataset) & (self.table["model"] == model)]
        return float(row[column].iloc[0])


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
    n_sel = {d: len(select_images(ExtractionConfig(dataset=d, max_per_domain=config.max_per_domain,
                                                   seed=config.seed), dsets[d])[1]) for d in config.datasets}
    ts = [int(t) for t in dict.fromkeys(config.timesteps)]

    def n_settings(model) -> int:
        return len(ts) if model.uses_timestep else 1

    total = sum(n_sel[d] * (n_settings(loaded[m]) + len(config.noise_seeds)) for d in config.datasets
                for m in config.models)
    done = [0]
    counted = [0]

    def step(offset: int):
        if not progress:
            return None
        return lambda k, _n: progress(min(total, offset + k), total)

    def on_features(_cfg, fs):
        counted[0] += fs.n_unet_images

    sweeps: dict[tuple[str, str], pd.DataFrame] = {}
    for d in config.datasets:
        for m in config.models:
            model = loaded[m]
            base = ExtractionConfig(dataset=d, model=m, timestep=ts[0], seed=config.seed,
                                    max_per_domain=config.max_per_domain)
            df = run_sweep(base, _model_blocks(model, config.blocks), ts, device=device, dtype=dtype,
                           batch_size=config.batch_size, cache_dir=cache_dir, n_seeds=config.n_seeds,
                           probe=False, progress=step(done[0]), model=model, on_features=on_features)
            sweeps[(d, m)] = df
            done[0] += n_sel[d] * n_settings(model)
            if progress:
                progress(done[0], total)

    chosen = {m: _choose(loaded[m], [sweeps[(d, m)] for d in config.datasets], config.select, ts)
              for m in config.models}

    rows, stab, layouts = [], [], {}
    for d in config.datasets:
        for m in config.models:
            model = loaded[m]
            block, t = chosen[m]
            r = _at(sweeps[(d, m)], block, t)
            rows.append({"dataset": d, "model": m, "block": block, "timestep": t,
                         "domain_nmi": float(r["domain_nmi"]), "domain_nmi_std": float(r["domain_nmi_std"]),
                         "class_nmi": float(r["class_nmi"]), "class_nmi_std": float(r["class_nmi_std"]),
                         "n_images": int(r["n_images"])})
            cfg = ExtractionConfig(dataset=d, model=m, timestep=ts[0] if t is None else t, seed=config.seed,
                                   max_per_domain=config.max_per_domain)
            fs = get_features(cfg, [block], device=device, dtype=dtype, batch_size=config.batch_size,
                              cache_dir=cache_dir, model=model, dataset=dsets[d])
            counted[0] += fs.n_unet_images
            idx = _stratified_sample(fs.domains, config.tsne_points, config.seed)
            emb = cached_reduce(fs.features[block][idx], ReductionConfig(method="tsne", random_state=config.seed),
                                cache)
            layouts[(d, m)] = Layout(emb, [fs.domains[i] for i in idx], [fs.classes[i] for i in idx],
                                     list(fs.domain_names))
            # stability: the same setting with other extraction seeds (noise and image sample)
            dn, cn = [float(r["domain_nmi"])], [float(r["class_nmi"])]
            for s in config.noise_seeds:
                fs_s = get_features(replace(cfg, seed=int(s)), [block], device=device, dtype=dtype,
                                    batch_size=config.batch_size, cache_dir=cache_dir, model=model,
                                    dataset=dsets[d], progress=step(done[0]))
                counted[0] += fs_s.n_unet_images
                sc = cached_scores(fs_s, block, config.n_seeds, False, cache)
                dn.append(sc.domain_nmi)
                cn.append(sc.class_nmi)
                done[0] += n_sel[d]
                if progress:
                    progress(done[0], total)
            stab.append({"dataset": d, "model": m, "kmeans_domain_std": float(r["domain_nmi_std"]),
                         "kmeans_class_std": float(r["class_nmi_std"]),
                         "seeds": ",".join(str(s) for s in [config.seed, *config.noise_seeds]),
                         "seed_domain_mean": float(np.mean(dn)), "seed_domain_std": float(np.std(dn)),
                         "seed_class_mean": float(np.mean(cn)), "seed_class_std": float(np.std(cn)),
                         "seed_noise": bool(model.uses_timestep)})
    table = pd.DataFrame(rows)
    table["timestep"] = table["timestep"].astype("Int64")
    table["best"] = False
    for d in config.datasets:
        sub = table[table["dataset"] == d]
        table.loc[sub["domain_nmi"].idxmax(), "best"] = True

    recognised = {d: paper_ref.recognise(ds.domains) for d, ds in dsets.items()}
    return Report(
        config=config, table=table, sweeps=sweeps, chosen=chosen, stability=pd.DataFrame(stab), layouts=layouts,
        paper={d: n for d, n in recognised.items() if n},
        datasets=[{"dataset": d, "name": dsets[d].name, "root": str(dsets[d].root),
                   "fingerprint": dsets[d].fingerprint, "domains": list(dsets[d].domains),
                   "n_classes": len(dsets[d].classes), "n_images": len(dsets[d]), "n_selected": n_sel[d]}
                  for d in config.datasets],
        models=[{"model": m, "identity": str(getattr(loaded[m], "identity", "")),
                 "blocks": len(loaded[m].blocks), "timestep": bool(loaded[m].uses_timestep),
                 "prompt": bool(loaded[m].uses_prompt)} for m in config.models],
        versions=package_versions(), command=command or config.command(),
        n_model_images=int(counted[0]),
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        block_orders={m: list(loaded[m].blocks) for m in config.models},
    )


# -------------------------------------------------------------------------------------- rendering


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def _setting(block: str, t) -> str:
    return block if t is None or pd.isna(t) else f"{block} @ t={int(t)}"


def _paper_cell(name: str) -> str:
    nums = paper_ref.paper_numbers(name)
    return " · ".join(f"{m} {nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS)


def headline_frame(rep: Report) -> pd.DataFrame:
    """The paper's table shape: one row per dataset, per model a "domain NMI / class NMI" cell
    (mean ± std over k-means seeds, ★ = best domain NMI of the row), then the paper's numbers."""
    out = []
    for d in rep.config.datasets:
        row = {"dataset": _short(d)}
        for m in rep.config.models:
            r = rep.table[(rep.table["dataset"] == d) & (rep.table["model"] == m)].iloc[0]
            star = " ★" if r["best"] else ""
            row[_short(m)] = f"{_pm(r['domain_nmi'], r['domain_nmi_std'])} / {_pm(r['class_nmi'], r['class_nmi_std'])}{star}"
        row[paper_ref.PAPER_LABEL] = (f"{rep.paper[d]}: " + _paper_cell(rep.paper[d])) if d in rep.paper else "—"
        out.append(row)
    return pd.DataFrame(out)


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in r.tolist()) + " |")
    return "\n".join(lines)


def _grid(df: pd.DataFrame, value: str, order: Sequence[str]) -> pd.DataFrame:
    d = df.copy()
    d["t"] = ["n/a" if pd.isna(v) else str(int(v)) for v in d["timestep"]]
    blocks = [b for b in order if b in set(d["block"])]
    tcols = sorted(d["t"].unique(), key=lambda s: (s == "n/a", int(s) if s != "n/a" else 0))
    g = d.pivot_table(index="block", columns="t", values=value, aggfunc="mean").reindex(index=blocks, columns=tcols)
    return g


def _stability_frame(rep: Report) -> pd.DataFrame:
    s = rep.stability
    return pd.DataFrame({
        "dataset": [_short(x) for x in s["dataset"]], "model": [_short(x) for x in s["model"]],
        "domain NMI std over k-means seeds": s["kmeans_domain_std"].map("{:.3f}".format),
        "class NMI std over k-means seeds": s["kmeans_class_std"].map("{:.3f}".format),
        "extraction seeds": s["seeds"],
        "domain NMI over extraction seeds": [_pm(a, b) for a, b in zip(s["seed_domain_mean"], s["seed_domain_std"])],
        "class NMI over extraction seeds": [_pm(a, b) for a, b in zip(s["seed_class_mean"], s["seed_class_std"])],
        "seed changes": ["noise + image sample" if n else "image sample" for n in s["seed_noise"]],
    })


def _chosen_frame(rep: Report) -> pd.DataFrame:
    return pd.DataFrame([{"model": _short(m), "layer @ timestep": _setting(b, t)} for m, (b, t) in rep.chosen.items()])


def _repro_frames(rep: Report) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    versions = pd.DataFrame([{"package": k, "version": v} for k, v in rep.versions.items()])
    models = pd.DataFrame([{"model": m["model"], "identity (weights hash)": m["identity"]} for m in rep.models])
    dsets = pd.DataFrame([{"dataset": d["dataset"], "fingerprint": d["fingerprint"],
                           "domains": ", ".join(d["domains"]), "classes": d["n_classes"],
                           "images": d["n_images"], "used": d["n_selected"]} for d in rep.datasets])
    return versions, models, dsets


def _seeds_text(rep: Report) -> str:
    c = rep.config
    return (f"image sample and diffusion noise seed {c.seed}; k-means seeds 0..{c.n_seeds - 1}; extraction "
            f"seeds for stability {', '.join(map(str, c.noise_seeds)) or 'none'}; t-SNE seed {c.seed} "
            f"(openTSNE, PCA-50, up to {c.tsne_points} points per panel); selection: {c.select}; "
            f"max per domain: {c.max_per_domain or 'all'}")


def render_markdown(rep: Report) -> str:
    c = rep.config
    out = [f"# DomainLens report", "",
           "Built with:", "", "```bash", rep.command, "```", "",
           f"Generated {rep.created}. Domain NMI (higher: the features separate domains) / class NMI (lower: "
           f"purer domain signal), mean ± std over {c.n_seeds} k-means seeds, at each model's chosen layer and "
           "timestep. ★ = highest domain NMI of the row. The figures (heatmaps, t-SNE) are in the HTML twin.", "",
           "## Domain NMI / class NMI", "", _md_table(headline_frame(rep)), "",
           "Chosen setting per model "
           + ("(highest mean domain NMI over the datasets):" if c.select == "best" else "(the model's default layer):"),
           "", _md_table(_chosen_frame(rep)), ""]
    if rep.paper:
        out += [f"## Reference: the paper's numbers (not measured here)", "",
                f"From {paper_ref.PAPER_CITATION}, on the full datasets with the paper's models. Shown for the "
                "datasets recognised by their DomainBed domain names.", ""]
        rows = []
        for d, name in rep.paper.items():
            nums = paper_ref.paper_numbers(name)
            rows.append({"dataset": f"{_short(d)} (= {name})",
                         **{m: f"{nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS}})
        out += [_md_table(pd.DataFrame(rows)), ""]
    out += ["## Per model: domain NMI over blocks x timesteps", ""]
    for m in c.models:
        for d in c.datasets:
            g = _grid(rep.sweeps[(d, m)], "domain_nmi", rep.block_orders[m])
            g = g.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
            g.insert(0, "block \\ t", g.index)
            out += [f"### {_short(m)} on {_short(d)}", "", _md_table(g.reset_index(drop=True)), ""]
    out += ["## Stability of the headline numbers", "", _md_table(_stability_frame(rep)), ""]
    versions, models, dsets = _repro_frames(rep)
    out += ["## Reproducibility", "", f"Command: `{rep.command}`", "", f"Seeds: {_seeds_text(rep)}.", "",
            _md_table(models), "", _md_table(dsets), "", _md_table(versions), "",
            f"Images that went through a model while building this report: {rep.n_model_images} "
            "(0 = every feature came from the cache).", ""]
    return "\n".join(out)


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
    head = headline_frame(rep)
    classes = {("h", paper_ref.PAPER_LABEL): "paper", ("col", paper_ref.PAPER_LABEL): "paper"}
    for i, d in enumerate(c.datasets):
        sub = rep.table[rep.table["dataset"] == d]
        for _, r in sub.iterrows():
            if r["best"]:
                classes[(i, _short(r["model"]))] = "best"
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>DomainLens report</title>", _CSS,
             "</head><body>", "<h1>DomainLens report</h1>",
             f"<p class='note'>Generated {e(rep.created)} by</p><pre>{e(rep.command)}</pre>",
             "<h2>Domain NMI / class NMI</h2>",
             f"<p>Per cell: domain NMI (higher: the features separate domains) / class NMI (lower: purer domain "
             f"signal), mean ± std over {c.n_seeds} k-means seeds, at each model's chosen layer and timestep. "
             f"★ and the shaded cell = highest domain NMI of the row. The last column, in italics, holds the "
             f"<b>paper's</b> numbers (domain / class NMI of its models), shown only for datasets recognised by "
             f"their DomainBed domain names; they were not measured here.</p>",
             _html_table(head, classes),
             "<p>Chosen setting per model "
             + e("(highest mean domain NMI over the datasets):" if c.select == "best" else "(the model's default layer):")
             + "</p>", _html_table(_chosen_frame(rep))]
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
    for m in c.models:
        parts.append(f"<h2>{e(_short(m))}: layer {e(_setting(*rep.chosen[m]))}</h2>")
        heat = [(t, f) for s, t, f in figs if s == f"heatmap:{m}"]
        if heat:
            parts.append("<h3>Domain NMI over blocks × timesteps (outlined: the chosen setting)</h3><div class='grid'>")
        else:
            parts.append("<p class='note'>One layer and no timestep: no block × timestep heatmap.</p><div>")
        for t, f in heat:
            scripts.append(f)
            parts.append(f"<div class='fig' id='fig{len(scripts)}'></div>")
        parts.append("</div><h3>t-SNE per dataset, coloured by domain (for looking, not for the numbers)</h3>"
                     "<div class='grid'>")
        for s, t, f in figs:
            if s == f"tsne:{m}":
                scripts.append(f)
                parts.append(f"<div class='fig' id='fig{len(scripts)}'></div>")
        parts.append("</div>")
    parts += ["<h2>Stability of the headline numbers</h2>",
              "<p class='note'>Spread of the table's numbers over k-means seeds (the ± above) and over extraction "
              "seeds (another draw of the diffusion noise and of the image sample; baselines have no noise).</p>",
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
    """Write ``out`` as HTML (``fmt="html"``), markdown (``"md"``) or both (``"both"``: ``out`` with
    ``.html`` and ``.md`` suffixes). Returns the written paths."""
    if fmt not in ("html", "md", "both"):
        raise ValueError(f"format must be html, md or both, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if fmt in ("html", "both"):
        p = out.with_suffix(".html") if fmt == "both" else out
        p.write_text(render_html(rep, plotly_js), encoding="utf-8")
        written.append(p)
    if fmt in ("md", "both"):
        p = out.with_suffix(".md") if fmt == "both" else out
        p.write_text(render_markdown(rep), encoding="utf-8")
        written.append(p)
    return written
