"""Regenerate the block x timestep NMI tables of a model card with the core sweep.

``python -m core.training.model_card [--model domainlens-tiny]`` runs :func:`core.analysis.sweep.run_sweep` on the
held-out split of each built-in dataset, writes ``<model>/nmi_<dataset>.csv`` and replaces the text
between ``<!-- nmi-table:begin -->`` and ``<!-- nmi-table:end -->`` in ``<model>/README.md``.
The same numbers come from ``python -m core sweep --dataset synthetic-pacs:heldout --timesteps
10,50,200,500,900 --blocks all --max-per-domain 150``; tests re-check cells of the CSV.
``--compare-with MODEL`` also replaces the text between ``<!-- comparison:begin -->`` and
``<!-- comparison:end -->`` with a side-by-side summary of both models' card CSVs (the same images).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from core.engine.extract import ExtractionConfig
from core.backbones.registry import DEFAULT_MODEL, load_backbone, resolve_folder
from core.analysis.sweep import run_sweep

CARD_DATASETS = ("synthetic-pacs:heldout", "rotated-digits:heldout")
CARD_TIMESTEPS = (10, 50, 200, 500, 900)
CARD_MAX_PER_DOMAIN = 150
BEGIN, END = "<!-- nmi-table:begin -->", "<!-- nmi-table:end -->"
CMP_BEGIN, CMP_END = "<!-- comparison:begin -->", "<!-- comparison:end -->"


def card_config(dataset: str, model: str = DEFAULT_MODEL) -> ExtractionConfig:
    return ExtractionConfig(dataset=dataset, model=model, max_per_domain=CARD_MAX_PER_DOMAIN, seed=0)


def csv_path(folder: Path, dataset: str) -> Path:
    return folder / f"nmi_{dataset.split(':')[0]}.csv"


def markdown_table(df: pd.DataFrame, value: str) -> str:
    pivot = df.pivot(index="block", columns="timestep", values=value)
    order = list(dict.fromkeys(df["block"]))
    pivot = pivot.loc[order]
    head = "| block | " + " | ".join(f"t={t}" for t in pivot.columns) + " |"
    sep = "|---|" + "---|" * len(pivot.columns)
    rows = [f"| {b} | " + " | ".join(f"{v:.3f}" for v in pivot.loc[b]) + " |" for b in pivot.index]
    return "\n".join([head, sep, *rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compare-with", default=None, metavar="MODEL",
                    help="also write a side-by-side section against MODEL's card CSVs (same images)")
    args = ap.parse_args(argv)
    folder, _ = resolve_folder(args.model)
    if folder is None:
        raise SystemExit(f"{args.model} has no model folder to hold a card")
    model = load_backbone(args.model, args.device)
    parts = []
    for ds in CARD_DATASETS:
        df = run_sweep(card_config(ds, args.model), "all", CARD_TIMESTEPS, model=model, device=args.device)
        from core.csvsafe import to_csv

        to_csv(df, csv_path(folder, ds), index=False, float_format="%.4f")
        n = int(df["n_images"].iloc[0])
        parts.append(f"**{ds}** ({n} images, seed 0, k-means over 5 seeds) — domain NMI (higher = domains "
                     f"separate):\n\n{markdown_table(df, 'domain_nmi')}\n\nclass NMI:\n\n"
                     f"{markdown_table(df, 'class_nmi')}\n")
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    card = folder / "README.md"
    text = card.read_text() if card.exists() else f"{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n" + "\n".join(parts) + f"{END}"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    card.write_text(text)
    if args.compare_with:
        ref_folder = resolve_folder(args.compare_with)[0]
        ref_default = load_backbone(args.compare_with, args.device).default_block
        write_comparison(card, folder, args.model, model.default_block, ref_folder, args.compare_with, ref_default)
    print(f"updated {card}")
    return 0


def comparison_rows(df: pd.DataFrame, default_block: str) -> dict[str, str]:
    """Summary cells of one model's card table (one dataset), for :func:`comparison_markdown`."""
    best = df.loc[df["domain_nmi"].idxmax()]
    best_c = df.loc[df["class_nmi"].idxmax()]
    d = df[df["block"] == default_block].set_index("timestep")
    ts = list(d.index)
    return {
        "images": f"{int(df['n_images'].iloc[0])}",
        "default block": f"`{default_block}`",
        **{f"domain NMI, default block, t={t}": f"{d.loc[t, 'domain_nmi']:.3f}" for t in ts},
        "best domain NMI (block, t)": f"{best.domain_nmi:.3f} (`{best.block}`, {best.timestep})",
        "mean domain NMI, all blocks x timesteps": f"{df['domain_nmi'].mean():.3f}",
        "domain NMI at t=50 > t=900, share of blocks":
            f"{(df[df.timestep == 50].set_index('block').domain_nmi > df[df.timestep == 900].set_index('block').domain_nmi).mean():.0%}"
            if {50, 900} <= set(ts) else "n/a",
        "best class NMI (block, t)": f"{best_c.class_nmi:.3f} (`{best_c.block}`, {best_c.timestep})",
        "mean class NMI": f"{df['class_nmi'].mean():.3f}",
        "mean domain probe accuracy": f"{df['domain_probe_acc'].mean():.3f}" if "domain_probe_acc" in df else "n/a",
    }


def comparison_markdown(tables: dict[str, dict[str, pd.DataFrame]], defaults: dict[str, str]) -> str:
    """``tables[model][dataset]`` card DataFrames -> one side-by-side markdown table per dataset."""
    models = list(tables)
    out = []
    for ds in CARD_DATASETS:
        rows = {m: comparison_rows(tables[m][ds], defaults[m]) for m in models}
        keys = list(dict.fromkeys(k for m in models for k in rows[m]))
        lines = [f"**{ds}**", "", "| | " + " | ".join(f"`{m}`" for m in models) + " |",
                 "|---|" + "---|" * len(models)]
        lines += ["| " + k + " | " + " | ".join(rows[m].get(k, "") for m in models) + " |" for k in keys]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def write_comparison(card: Path, folder: Path, name: str, default_block: str, ref_folder: Path, ref_name: str,
                     ref_default: str) -> str:
    """Replace the text between the comparison markers of ``card`` with tables built from both models' card
    CSVs (which are computed on the same images: same datasets, max_per_domain and seed)."""
    tables = {m: {ds: pd.read_csv(csv_path(f, ds)) for ds in CARD_DATASETS}
              for m, f in ((name, folder), (ref_name, ref_folder))}
    for ds in CARD_DATASETS:
        n = {m: int(tables[m][ds]["n_images"].iloc[0]) for m in tables}
        if len(set(n.values())) != 1:
            raise SystemExit(f"the two cards were computed on different image sets for {ds}: {n}")
    md = comparison_markdown(tables, {name: default_block, ref_name: ref_default})
    text = card.read_text()
    if CMP_BEGIN not in text:
        text += f"\n{CMP_BEGIN}\n{CMP_END}\n"
    block = f"{CMP_BEGIN}\n{md}{CMP_END}"
    text = re.sub(re.escape(CMP_BEGIN) + ".*?" + re.escape(CMP_END), lambda _: block, text, flags=re.S)
    card.write_text(text)
    return md


if __name__ == "__main__":
    raise SystemExit(main())
