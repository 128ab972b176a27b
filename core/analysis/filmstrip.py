"""Film strips: the same images laid out frame by frame, over timesteps at one block, or over blocks at one
timestep ("walk down the UNet"), with domain and class NMI per frame.

Extraction runs once per timestep with every block captured in the same forward pass (so a timestep strip
and a block strip share the cache). Each frame's 2-D layout is computed on its own (cached like Explore's)
and then *aligned* to the frame before it by Procrustes (rotation / reflection, scale and shift, fitted on
the images both frames share): an image stays in place unless its neighbourhood changes. The Procrustes
disparity (0 = the same picture, 1 = unrelated) says how much each frame changed. Scores use the full
features (the same cached numbers as Explore).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.analysis.reduce import ReductionConfig, cached_reduce
from core.engine.extract import ExtractionConfig, FeatureSet, get_features

DEFAULT_TIMESTEPS = (0, 10, 25, 50, 100, 200, 400, 700, 999)
ALIGNMENT = ("Each frame's layout is computed on its own, then rotated, reflected, scaled and shifted onto "
             "the previous frame (Procrustes, fitted on the same images), so a point moves only when its "
             "neighbourhood changes. Disparity: 0 = same picture, 1 = unrelated.")
SCORE_COLUMNS = ["frame", "label", "domain_nmi", "domain_nmi_std", "class_nmi", "class_nmi_std", "disparity",
                 "n_images", "domain_ami", "class_ami", "domain_nmi_chance", "class_nmi_chance"]
_STATS = ("domain_ami", "class_ami", "domain_nmi_chance", "class_nmi_chance")  # from cached Scores (else nan)


def clip_timesteps(timesteps: Sequence[int] | None, num_train_timesteps: int) -> list[int]:
    """Sorted, distinct timesteps clipped into ``[0, num_train_timesteps - 1]`` (the model's range)."""
    hi = int(num_train_timesteps) - 1
    ts = DEFAULT_TIMESTEPS if timesteps is None else timesteps
    out = sorted({min(max(int(t), 0), hi) for t in ts})
    if not out:
        raise ValueError("give at least one timestep")
    return out


def align_frames(embeddings: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Chain-align 2-D layouts: frame k is Procrustes-aligned onto aligned frame k-1 (frame 0 is kept).

    Returns the aligned layouts and each frame's disparity to the previous one (0.0 for frame 0).
    """
    from core.figures import procrustes_align

    if not embeddings:
        raise ValueError("no frames to align")
    out = [np.asarray(embeddings[0], dtype=np.float64)]
    disp = [0.0]
    for e in embeddings[1:]:
        a, d = procrustes_align(out[-1], np.asarray(e, dtype=np.float64))
        out.append(a)
        disp.append(float(d))
    return out, disp


@dataclass
class Strip:
    """A film strip: one aligned layout and one row of scores per frame."""

    axis: str  # "timestep" or "block"
    values: list  # the frames' timesteps (int) or blocks (str)
    embeddings: list[np.ndarray]  # aligned, each (n_images, 2)
    scores: pd.DataFrame  # SCORE_COLUMNS, one row per frame
    ids: list[str]
    domains: list[str]
    classes: list[str]
    paths: list[str] = field(default_factory=list)
    domain_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    fixed: dict = field(default_factory=dict)  # {"block": b} or {"timestep": t}

    @property
    def labels(self) -> list[str]:
        return [frame_label(self.axis, v) for v in self.values]

    def layouts_frame(self) -> pd.DataFrame:
        """Long table: one row per (frame, image) with the aligned x, y."""
        parts = []
        for k, (v, e) in enumerate(zip(self.values, self.embeddings)):
            parts.append(pd.DataFrame({"frame": k, self.axis: v, "id": self.ids, "domain": self.domains,
                                       "class": self.classes, "x": e[:, 0], "y": e[:, 1]}))
        return pd.concat(parts, ignore_index=True)


def frame_label(axis: str, value) -> str:
    return f"t = {int(value)}" if axis == "timestep" else str(value)


def build_strip(axis: str, values: Sequence, features: Sequence[np.ndarray], domain_labels: np.ndarray,
                class_labels: np.ndarray, reduction: ReductionConfig = ReductionConfig(), *,
                scores: Sequence | None = None, n_seeds: int = 5, cache=None, **meta) -> Strip:
    """A strip from per-frame feature matrices of the same images (rows in the same order).

    ``scores``: per frame an object with domain_nmi(_std), class_nmi(_std) (e.g. cached
    :class:`~core.analysis.metrics.Scores`, whose AMI and chance floors are kept too); computed with
    :func:`core.analysis.metrics.nmi` otherwise (AMI and chance columns then nan).
    """
    from core.analysis.metrics import nmi

    if len(values) != len(features) or not values:
        raise ValueError(f"{len(values)} frame values but {len(features)} feature matrices")
    n = len(features[0])
    if any(len(f) != n for f in features):
        raise ValueError("every frame must hold the same images in the same order")
    layouts = [cached_reduce(f, reduction, cache) for f in features]
    aligned, disp = align_frames(layouts)
    rows = []
    for k, (v, f) in enumerate(zip(values, features)):
        if scores is not None:
            s = scores[k]
            dn, dns, cn, cns = s.domain_nmi, s.domain_nmi_std, s.class_nmi, s.class_nmi_std
        else:
            (dn, dns), (cn, cns) = nmi(f, domain_labels, n_seeds), nmi(f, class_labels, n_seeds)
        extra = {c: float(getattr(scores[k], c, np.nan)) if scores is not None else np.nan for c in _STATS}
        rows.append({"frame": k, "label": frame_label(axis, v), "domain_nmi": float(dn), "domain_nmi_std": float(dns),
                     "class_nmi": float(cn), "class_nmi_std": float(cns), "disparity": disp[k], "n_images": n,
                     **extra})
    return Strip(axis=axis, values=list(values), embeddings=aligned, scores=pd.DataFrame(rows, columns=SCORE_COLUMNS),
                 **meta)


def _meta(fs: FeatureSet) -> dict:
    return dict(ids=list(fs.ids), domains=list(fs.domains), classes=list(fs.classes), paths=list(fs.paths),
                domain_names=list(fs.domain_names), class_names=list(fs.class_names))


def timestep_strip(config: ExtractionConfig, block: str, timesteps: Sequence[int] | None = None,
                   reduction: ReductionConfig = ReductionConfig(), *, model=None, device: str = "auto",
                   batch_size: int = 32, cache_dir: str | None = None, n_seeds: int = 5,
                   progress: Callable[[int, int], None] | None = None, dataset=None) -> Strip:
    """One frame per timestep at ``block`` (default timesteps :data:`DEFAULT_TIMESTEPS`, clipped to the
    model's range). Every block is extracted in each pass, so a later block strip costs nothing."""
    from core.analysis.sweep import cached_scores
    from core.analysis.prompt_audit import load as load_model
    from core.data.datasets import load_dataset
    from core.engine.cache import FeatureCache

    model = model or load_model(config.model, device)
    if block not in model.blocks:
        raise ValueError(f"unknown block {block!r}; this model has {list(model.blocks)}")
    if not model.uses_timestep:
        raise ValueError(f"model {config.model!r} has no timestep (a baseline); use a diffusion model for a "
                         "timestep strip, or walk its blocks instead")
    ts = clip_timesteps(timesteps, model.num_train_timesteps)
    dataset = dataset or load_dataset(config.dataset)
    cache = FeatureCache(cache_dir)
    feats, scores, first = [], [], None
    for i, t in enumerate(ts):
        step = (lambda d, n, i=i: progress(i * n + d, len(ts) * n)) if progress else None
        fs = get_features(replace(config, timestep=t), "all", device=device, batch_size=batch_size,
                          cache_dir=cache_dir, progress=step, model=model, dataset=dataset)
        if first is None:
            first = fs
        elif fs.ids != first.ids:
            raise ValueError("the timesteps read different images (an image became unreadable?); run again")
        feats.append(fs.features[block])
        scores.append(cached_scores(fs, block, n_seeds=n_seeds, cache=cache))
    return build_strip("timestep", ts, feats, first.domain_labels, first.class_labels, reduction, scores=scores,
                       cache=cache, fixed={"block": block}, **_meta(first))


def block_strip(config: ExtractionConfig, blocks: Sequence[str] | None = None,
                reduction: ReductionConfig = ReductionConfig(), *, model=None, device: str = "auto",
                batch_size: int = 32, cache_dir: str | None = None, n_seeds: int = 5,
                progress: Callable[[int, int], None] | None = None, dataset=None) -> Strip:
    """One frame per block (default: all, in UNet order) at ``config.timestep``: one forward pass."""
    from core.analysis.sweep import cached_scores
    from core.analysis.prompt_audit import load as load_model
    from core.engine.cache import FeatureCache

    model = model or load_model(config.model, device)
    blocks = list(model.blocks) if not blocks else list(blocks)
    unknown = [b for b in blocks if b not in model.blocks]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; this model has {list(model.blocks)}")
    cache = FeatureCache(cache_dir)
    fs = get_features(config, "all", device=device, batch_size=batch_size, cache_dir=cache_dir,
                      progress=progress, model=model, dataset=dataset)
    scores = [cached_scores(fs, b, n_seeds=n_seeds, cache=cache) for b in blocks]
    fixed = {"timestep": config.timestep} if model.uses_timestep else {}
    return build_strip("block", blocks, [fs.features[b] for b in blocks], fs.domain_labels, fs.class_labels,
                       reduction, scores=scores, cache=cache, fixed=fixed, **_meta(fs))
