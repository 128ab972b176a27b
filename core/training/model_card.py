"""Regenerate the block x timestep NMI tables of a model card with the core sweep.

``python -m core.training.model_card [--model domainlens-tiny]`` runs :func:`core.analysis.sweep.run_sweep` on the
held-out split of each built-in dataset, writes ``<model>/nmi_<dataset>.csv`` and replaces the text
between ``<!-- nmi-table:begin -->`` and ``<!-- nmi-table:end -->`` in ``<model>/README.md``.
The same numbers come from ``python -m core sweep --dataset synthetic-pacs:heldout --timesteps
10,50,200,500,900 --blocks all --max-per-domain 150``; tests re-check cells of the CSV.
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
    args = ap.parse_args(argv)
    folder, _ = resolve_folder(args.model)
    if folder is None:
        raise SystemExit(f"{args.model} has no model folder to hold a card")
    model = load_backbone(args.model, args.device)
    parts = []
    for ds in CARD_DATASETS:
        df = run_sweep(card_config(ds, args.model), "all", CARD_TIMESTEPS, model=model, device=args.device)
        df.to_csv(csv_path(folder, ds), index=False, float_format="%.4f")
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
    print(f"updated {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
