"""Rendering of a :class:`core.analysis.report.Report`: the self-contained HTML page (plotly.js inlined), its
markdown twin and the LaTeX tables; :func:`write_report` writes them. Every number comes from the report
object that :func:`core.analysis.report.build_report` gathers; nothing here computes a statistic."""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from core.analysis import paper as paper_ref
from core.analysis.report import FORMAT_SUFFIX, FORMATS, LABELS, Report, cell_at, short_name
from core.analysis.stats import Interval
from core.data import builtin
from core.figures.offline import UNPACK_JS, plotly_js as _plotly_js

logger = logging.getLogger(__name__)


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
        row = {"dataset": short_name(d)}
        for m in rep.config.models:
            r = rep.row(d, m)
            star = f" {STAR}" if r["best"] and stat == "nmi" else ""  # the paired test is on domain NMI
            row[short_name(m)] = f"{_iv(r, 'domain', stat)} / {_iv(r, 'class', stat)}{star}"
        if stat == "nmi":
            row[paper_ref.PAPER_LABEL] = (f"{rep.paper[d]}: " + _paper_cell(rep.paper[d])) if d in rep.paper else "—"
        out.append(row)
    return pd.DataFrame(out)


def comparison_frame(rep: Report) -> pd.DataFrame:
    """Per dataset: the best domain NMI against the runner-up, the paired 95 % interval of the difference and
    the verdict (★ only when the interval excludes 0)."""
    out = []
    for _, c in rep.comparisons.iterrows():
        out.append({"dataset": short_name(c["dataset"]), "best": short_name(c["best"]), "runner-up": short_name(c["runner_up"]),
                    "domain NMI difference [95 % paired interval]": _diff_text(c),
                    "verdict": (f"{STAR} {short_name(c['best'])} higher (interval excludes 0)" if c["star"]
                                else "no clear winner (interval contains 0)")})
    return pd.DataFrame(out, columns=["dataset", "best", "runner-up", "domain NMI difference [95 % paired interval]",
                                      "verdict"])


def chance_frame(rep: Report) -> pd.DataFrame:
    """Per (dataset, model): the images reported, the chance floor of domain and class NMI (mean ± sd of the
    permutation null) and whether the score is within it."""
    out = []
    for _, r in rep.table.iterrows():
        row = {"dataset": short_name(r["dataset"]), "model": short_name(r["model"]),
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
    return builtin.canonical_name(name) if builtin.is_builtin(name) else short_name(name)


def selection_frame(rep: Report) -> pd.DataFrame:
    out = []
    for d in rep.config.datasets:
        sp = rep.splits[d]
        info = next(x for x in rep.datasets if x["dataset"] == d)
        out.append({"dataset": short_name(d),
                    "setting chosen on": "— (no selection)" if sp.select_on is None else
                    (short_name(sp.select_on) + (" fold A" if sp.select_ids is not None else "")),
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
        "dataset": [short_name(x) for x in s["dataset"]], "model": [short_name(x) for x in s["model"]],
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
    return pd.DataFrame([{"model": short_name(m), "layer @ timestep": _setting(b, t), "chosen by": how}
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
                       f"{short_name(d)}: {rep.splits[d].how}" for d in c.datasets) + ".")
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
            rows.append({"dataset": f"{short_name(d)} (= {name})",
                         **{m: f"{nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS}})
        out += [_md_table(pd.DataFrame(rows)), ""]
    out += ["## Per model: domain NMI over blocks x timesteps", "", _md_escape(_grid_note(rep)), ""]
    for m in c.models:
        for d in c.datasets:
            out += [f"### {_md_escape(short_name(m))} on {_md_escape(short_name(d))}", "",
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
           " & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{tex_escape(short_name(m))}}}" for m in c.models) + " \\\\",
           " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(n)),
           "Dataset & " + " & ".join("domain $\\uparrow$ & class $\\downarrow$" for _ in c.models) + " \\\\",
           "\\midrule"]
    for d in c.datasets:
        cells = [tex_escape(short_name(d))]
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
    settings = "; ".join(f"{tex_escape(short_name(m))}: {tex_escape(_setting(b, t))}" for m, (b, t) in rep.chosen.items())
    if c.select == "best":
        sel = ("Layer and timestep chosen on the data (best mean domain NMI; a deviation from the paper) on images "
               "disjoint from those reported: " + "; ".join(
                   f"{tex_escape(short_name(d))}: {tex_escape(rep.splits[d].how)}" for d in c.datasets) + ".")
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
            out.append(" & ".join([tex_escape(short_name(cp["dataset"])), tex_escape(short_name(cp["best"])),
                                   tex_escape(short_name(cp["runner_up"])), diff.replace("-", "$-$").replace("+", "$+$"),
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
                fig = figures.heatmap(df, "domain_nmi", block_order=rep.block_orders[m], best=cell_at(df, b, t),
                                      title=f"{short_name(m)} on {short_name(d)}: domain NMI", height=None)
                fig.update_layout(font=dict(size=12), height=max(260, 60 + 34 * df["block"].nunique()))
                out.append((f"heatmap:{m}", f"{short_name(m)} on {short_name(d)}", fig))
        for d in rep.config.datasets:
            if (d, m) not in rep.layouts:  # tsne_points=0
                continue
            lay = rep.layouts[(d, m)]
            fig = figures.scatter(lay.embedding, lay.domains, categories=lay.domain_names,
                                  hover=[f"{a} · {c}" for a, c in zip(lay.domains, lay.classes)],
                                  title=f"t-SNE, {short_name(m)} ({_setting(*rep.chosen[m])}) on {short_name(d)}",
                                  height=380, webgl=False)
            fig.update_layout(font=dict(size=12), legend=dict(font=dict(size=12)))
            out.append((f"tsne:{m}", f"{short_name(m)} on {short_name(d)}", fig))
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
                classes[(i, short_name(r["model"]))] = "best"
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
            rows.append({"dataset": f"{short_name(d)} (= {name})",
                         **{m: f"{nums[m][0]:.2f} / {nums[m][1]:.2f}" for m in paper_ref.PAPER_MODELS}})
        parts += ["<h2>Reference: the paper's numbers (not measured here)</h2>",
                  f"<p class='note'>From {e(paper_ref.PAPER_CITATION)}, on the full datasets with the paper's "
                  "models (domain NMI / class NMI).</p>",
                  _html_table(pd.DataFrame(rows), {("col", m): "paper" for m in paper_ref.PAPER_MODELS})]
    figs = report_figures(rep)
    scripts = []
    where = "the selection images" if c.select == "best" else "every selected image"
    for m in c.models:
        parts.append(f"<h2>{e(short_name(m))}: layer {e(_setting(*rep.chosen[m]))}</h2>")
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
                parts += [f"<h4>{e(short_name(m))} on {e(short_name(d))}</h4>",
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
