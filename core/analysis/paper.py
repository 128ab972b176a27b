"""The paper's reference numbers, as data (labelled as the paper's, never mixed with ours).

Source: X. Thomas, D. Ghadiyaram, "What's in a Latent? Leveraging Diffusion Latent Space for Domain
Generalization", arXiv 2503.06698 (ICCV 2025): domain NMI (higher: domains separate) and class NMI (lower:
purer domain signal) of the paper's feature spaces on the DomainBed datasets. Copied from
``shared/PAPER.md``; these were measured by the paper's authors on the full datasets, with their models
(SD-2.1 at 512 px, DiT-XL/2-512, ...), not by this tool.

A dataset is recognised as one of these by its domain (folder) names, DomainBed's layout.
"""

from __future__ import annotations

import re
from typing import Sequence

PAPER_LABEL = "paper (Thomas & Ghadiyaram, ICCV 2025)"
PAPER_CITATION = ("X. Thomas, D. Ghadiyaram, \"What's in a Latent? Leveraging Diffusion Latent Space for Domain "
                  "Generalization\", ICCV 2025 (arXiv 2503.06698)")

# the paper's feature spaces, in its table's order
PAPER_MODELS = ("DiT", "SD-2.1", "MAE", "CLIP", "DINOv2", "RN50")

# dataset -> model -> (domain NMI, class NMI), the paper's numbers
PAPER_NMI: dict[str, dict[str, tuple[float, float]]] = {
    "PACS": {"DiT": (0.85, 0.08), "SD-2.1": (0.82, 0.08), "MAE": (0.71, 0.11), "CLIP": (0.54, 0.05),
             "DINOv2": (0.55, 0.15), "RN50": (0.59, 0.29)},
    "VLCS": {"DiT": (0.58, 0.12), "SD-2.1": (0.26, 0.15), "MAE": (0.20, 0.17), "CLIP": (0.01, 0.01),
             "DINOv2": (0.05, 0.11), "RN50": (0.22, 0.39)},
    "TerraIncognita": {"DiT": (0.22, 0.32), "SD-2.1": (0.55, 0.35), "MAE": (0.21, 0.32), "CLIP": (0.01, 0.01),
                       "DINOv2": (0.01, 0.16), "RN50": (0.25, 0.30)},
    "OfficeHome": {"DiT": (0.25, 0.16), "SD-2.1": (0.28, 0.22), "MAE": (0.10, 0.28), "CLIP": (0.12, 0.10),
                   "DINOv2": (0.38, 0.23), "RN50": (0.08, 0.59)},
    "DomainNet": {"DiT": (0.54, 0.16), "SD-2.1": (0.51, 0.20), "MAE": (0.52, 0.22), "CLIP": (0.32, 0.13),
                  "DINOv2": (0.47, 0.19), "RN50": (0.46, 0.36)},
}

# DomainBed's domain folder names of each dataset
DOMAINBED_DOMAINS: dict[str, tuple[str, ...]] = {
    "PACS": ("art_painting", "cartoon", "photo", "sketch"),
    "VLCS": ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
    "OfficeHome": ("Art", "Clipart", "Product", "Real World"),
    "TerraIncognita": ("location_100", "location_38", "location_43", "location_46"),
    "DomainNet": ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def recognise(domains: Sequence[str]) -> str | None:
    """The DomainBed dataset whose domain names are exactly ``domains`` (case, spaces and underscores
    ignored: ``Real World`` = ``real_world``), else None."""
    got = {_norm(d) for d in domains}
    for name, expected in DOMAINBED_DOMAINS.items():
        if got == {_norm(d) for d in expected}:
            return name
    return None


def paper_numbers(dataset: str) -> dict[str, tuple[float, float]]:
    """model -> (domain NMI, class NMI) from the paper for a recognised dataset name."""
    if dataset not in PAPER_NMI:
        raise ValueError(f"no paper numbers for {dataset!r}; the paper reports {sorted(PAPER_NMI)}")
    return dict(PAPER_NMI[dataset])
