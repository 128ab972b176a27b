"""Spatial feature maps: *where* in an image a layer's signal lives (DIFT-style PCA to three colours).

A layer's un-pooled output (a UNet block's map (C, h, w), or a transformer's tokens reshaped to their grid,
both from :meth:`core.backbones.base.Backbone.spatial_maps`) is projected pixel by pixel onto the first three
principal components of that layer's maps over a sample of the dataset (``sample_size`` images spread over the
domains, the same images for every click), and each component is scaled to a colour channel by its 1st and
99th percentiles over that sample. The same PCA colours every image, so equal colours mean similar features
across images: a region that changes colour with the domain is where the domain signal sits.

Everything goes through the backbone seam: :meth:`Backbone.preprocess`, :meth:`Backbone.encode`,
:meth:`Backbone.spatial_maps`; the fitted basis and the maps of shown images are cached on disk.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from core.data.datasets import Dataset, ImageRecord, load_rgb
from core.engine.cache import FeatureCache, stable_hash

DEFAULT_SAMPLE = 48  # images the PCA is fitted on
MAX_FIT_ROWS = 100_000  # pixel rows (over all sample images) the PCA is fitted on
MAX_SHOWN = 12  # images a grid shows maps for


@dataclass(frozen=True)
class MapPCA:
    """Three principal directions of a layer's map pixels and the colour scaling of each."""

    layer: str
    mean: np.ndarray  # (C,)
    components: np.ndarray  # (3, C), rows unit length
    lo: np.ndarray  # (3,) 1st percentile of each projection over the sample
    hi: np.ndarray  # (3,) 99th percentile
    explained: np.ndarray  # (3,) share of the pixel variance each component explains
    sample_ids: tuple[str, ...]
    map_shape: tuple[int, int]  # (h, w) of the layer's maps

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "lo": self.lo, "hi": self.hi,
                "explained": self.explained, "sample_ids": np.array(self.sample_ids, dtype=str),
                "map_shape": np.array(self.map_shape)}

    @classmethod
    def from_arrays(cls, layer: str, a: dict[str, np.ndarray]) -> "MapPCA":
        return cls(layer, a["mean"], a["components"], a["lo"], a["hi"], a["explained"],
                   tuple(str(s) for s in a["sample_ids"]), tuple(int(v) for v in a["map_shape"]))


@dataclass
class SpatialView:
    """RGB maps of the shown images (rows of ``records``) and the PCA that coloured them."""

    records: list[ImageRecord]
    rgb: np.ndarray  # (B, h, w, 3) uint8
    pca: MapPCA


# --------------------------------------------------------------------------------------- the maths


def _pixels(maps: np.ndarray) -> np.ndarray:
    """(B, C, h, w) -> (B * h * w, C) float32."""
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 4:
        raise ValueError(f"maps must be (B, C, h, w), got shape {m.shape}")
    return m.transpose(0, 2, 3, 1).reshape(-1, m.shape[1])


def fit_map_pca(maps: np.ndarray | Sequence[np.ndarray], layer: str = "", sample_ids: Sequence[str] = (),
                n_components: int = 3, random_state: int = 0) -> MapPCA:
    """PCA of the pixels of ``maps`` ((B, C, h, w), or a list of such batches) and 1st/99th-percentile
    colour ranges of the projections. Fewer than 3 channels are padded with zero components."""
    batches = [np.asarray(m, dtype=np.float32) for m in (maps if isinstance(maps, (list, tuple)) else [maps])]
    X = np.concatenate([_pixels(b) for b in batches])  # (rows, C)
    if len(X) < 2:
        raise ValueError("need at least 2 map pixels to fit a PCA")
    if not np.isfinite(X).all():
        raise ValueError("the feature maps contain NaN or inf (a half-precision overflow?); use float32")
    C = X.shape[1]
    mean = X.mean(axis=0)
    Xc = X - mean
    # the C x C covariance: exact, fast for every layer width, deterministic
    cov = (Xc.T.astype(np.float64) @ Xc.astype(np.float64)) / max(1, len(X) - 1)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(evals)[::-1][:n_components]
    comps = evecs[:, order].T  # (k, C)
    comps *= np.where(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]  # fixed sign
    total = float(np.clip(evals, 0, None).sum()) or 1.0
    explained = np.clip(evals[order], 0, None) / total
    if len(comps) < n_components:
        comps = np.vstack([comps, np.zeros((n_components - len(comps), C))])
        explained = np.concatenate([explained, np.zeros(n_components - len(explained))])
    proj = Xc @ comps.T.astype(np.float32)  # (rows, k)
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    return MapPCA(layer, mean.astype(np.float32), comps.astype(np.float32), lo.astype(np.float32),
                  hi.astype(np.float32), explained.astype(np.float32), tuple(sample_ids),
                  tuple(int(s) for s in batches[0].shape[2:]))


def project_rgb(maps: np.ndarray, pca: MapPCA) -> np.ndarray:
    """(B, C, h, w) maps -> (B, h, w, 3) uint8 colours in the PCA's basis and scaling."""
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 4 or m.shape[1] != len(pca.mean):
        raise ValueError(f"maps must be (B, {len(pca.mean)}, h, w) for this PCA, got {m.shape}")
    proj = (_pixels(m) - pca.mean) @ pca.components.T  # (B*h*w, 3)
    span = np.where(pca.hi - pca.lo > 1e-12, pca.hi - pca.lo, 1.0)
    rgb = np.clip((proj - pca.lo) / span, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8).reshape(m.shape[0], m.shape[2], m.shape[3], 3)


def sample_records(records: Sequence[ImageRecord], n: int = DEFAULT_SAMPLE, seed: int = 0) -> list[ImageRecord]:
    """Up to ``n`` records spread evenly over the domains (seeded), in a stable order."""
    by_domain: dict[str, list[ImageRecord]] = {}
    for r in sorted(records, key=lambda r: r.id):
        by_domain.setdefault(r.domain, []).append(r)
    rng = np.random.default_rng(seed)
    shuffled = {d: [rs[i] for i in rng.permutation(len(rs))] for d, rs in sorted(by_domain.items())}
    out: list[ImageRecord] = []
    i = 0
    while len(out) < n and any(i < len(rs) for rs in shuffled.values()):
        for rs in shuffled.values():
            if i < len(rs) and len(out) < n:
                out.append(rs[i])
        i += 1
    return sorted(out, key=lambda r: r.id)


def spread_first(records: Sequence[ImageRecord], n: int) -> list[ImageRecord]:
    """``n`` of ``records`` taken in turn from each domain (sorted), within a domain in turn from each class
    (sorted), each cell in the given order: ``--first 8`` on 4 domains x 6 classes gives two images per domain
    of different classes. Deterministic (no seed: ``records`` is already a seeded sample)."""
    cells: dict[str, dict[str, list[ImageRecord]]] = {}
    for r in records:
        cells.setdefault(r.domain, {}).setdefault(r.cls, []).append(r)
    per_domain = []
    for d in sorted(cells):  # each domain's images, classes interleaved
        queues = [cells[d][c] for c in sorted(cells[d])]
        per_domain.append([q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)])
    order = [rs[i] for i in range(max(map(len, per_domain), default=0)) for rs in per_domain if i < len(rs)]
    return order[:n]


# -------------------------------------------------------------------------------- through the seam


def _request(config, records: Sequence[ImageRecord]):
    from core.backbones.base import Request

    prompts = [config.prompt.for_class(r.cls, r.domain, r.id) for r in records]
    return Request(timestep=int(config.timestep), prompts=prompts,
                   class_label=getattr(config, "class_label", None), seed=int(config.seed),
                   ensemble=int(config.ensemble), noise_mode=getattr(config, "noise_mode", "noised"))


def layer_maps(backbone, config, records: Sequence[ImageRecord], layer: str, batch_size: int = 8):
    """Yield (records of the batch, maps (b, C, h, w) float32 numpy) for ``records``, ``batch_size`` at a time."""
    if layer not in backbone.layers:
        raise ValueError(f"unknown layer {layer!r} for {backbone.name!r}; valid layers: {', '.join(backbone.layers)}")
    resolution = config.resolution or backbone.resolution
    for s in range(0, len(records), batch_size):
        recs = list(records[s:s + batch_size])
        pixels = torch.stack([backbone.preprocess(load_rgb(r.path), resolution) for r in recs])
        with torch.inference_mode():
            x0 = backbone.encode(pixels)
            maps = backbone.spatial_maps(x0, [r.id for r in recs], layer, _request(config, recs))
        yield recs, maps.float().cpu().numpy()


def _key(backbone, config, dataset: Dataset, layer: str, sample_ids: Sequence[str]) -> str:
    cond = backbone.key_conditioning(int(config.timestep), (config.prompt.mode, config.prompt.text),
                                     getattr(config, "class_label", None), int(config.seed), int(config.ensemble),
                                     getattr(config, "noise_mode", "noised"))
    return stable_hash({"model": backbone.identity, "dtype": str(backbone.dtype), "dataset": dataset.fingerprint,
                        "resolution": config.resolution or backbone.resolution, "layer": layer, "cond": cond,
                        "sample": stable_hash(list(sample_ids), 32), "v": 1}, 32)


def layer_pca(backbone, config, dataset: Dataset, layer: str, *, sample_size: int = DEFAULT_SAMPLE,
              batch_size: int = 8, cache: FeatureCache | None = None, progress=None) -> MapPCA:
    """The colour basis of ``layer``: PCA of its maps over ``sample_size`` images of the configuration's
    sample (spread over the domains), cached on disk."""
    from core.engine.extract import select_images

    cache = cache or FeatureCache()
    _, records = select_images(config, dataset)
    sample = sample_records(records, sample_size, config.seed)
    if len(sample) < 2:
        raise ValueError("need at least 2 images to fit the colour basis of a spatial map")
    key = _key(backbone, config, dataset, layer, [r.id for r in sample])
    hit = cache.load_result("spatial_pca", key)
    if hit is not None:
        return MapPCA.from_arrays(layer, hit)
    rows_per_image = max(1, MAX_FIT_ROWS // len(sample))
    rng = np.random.default_rng(config.seed)
    kept, ids, done = [], [], 0
    for recs, maps in layer_maps(backbone, config, sample, layer, batch_size):
        b, c, h, w = maps.shape
        if h * w > rows_per_image:  # keep a seeded subset of each image's pixels (memory stays bounded)
            flat = maps.reshape(b, c, h * w)
            sel = np.stack([rng.choice(h * w, rows_per_image, replace=False) for _ in range(b)])
            kept.append(np.take_along_axis(flat, sel[:, None, :], axis=2)[..., None])  # (b, C, rows, 1)
        else:
            kept.append(maps)
        ids += [r.id for r in recs]
        done += len(recs)
        if progress:
            progress(done, len(sample))
    pca = fit_map_pca(kept, layer, ids)
    pca = MapPCA(pca.layer, pca.mean, pca.components, pca.lo, pca.hi, pca.explained, pca.sample_ids, (h, w))
    cache.save_result("spatial_pca", key, pca.arrays())
    return pca


def spatial_view(backbone, config, dataset: Dataset, layer: str, image_ids: Sequence[str], *,
                 sample_size: int = DEFAULT_SAMPLE, batch_size: int = 8, cache: FeatureCache | None = None,
                 progress=None) -> SpatialView:
    """RGB spatial maps of ``layer`` for the images ``image_ids`` (at most :data:`MAX_SHOWN`) of the
    configuration's sample, coloured by :func:`layer_pca`."""
    from core.engine.extract import select_images

    cache = cache or FeatureCache()
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    if not ids:
        raise ValueError("select at least one image to see its spatial map")
    if len(ids) > MAX_SHOWN:
        raise ValueError(f"spatial maps are shown for at most {MAX_SHOWN} images at a time; {len(ids)} selected")
    _, records = select_images(config, dataset)
    by_id = {r.id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"image(s) {missing[:3]} are not in this configuration's sample")
    pca = layer_pca(backbone, config, dataset, layer, sample_size=sample_size, batch_size=batch_size, cache=cache,
                    progress=progress)
    recs = [by_id[i] for i in ids]
    key = stable_hash({"pca": _key(backbone, config, dataset, layer, pca.sample_ids), "ids": ids}, 32)
    hit = cache.load_result("spatial_rgb", key)
    if hit is not None and len(hit["rgb"]) == len(recs):
        return SpatialView(recs, hit["rgb"], pca)
    rgb = np.concatenate([project_rgb(m, pca) for _, m in layer_maps(backbone, config, recs, layer, batch_size)])
    cache.save_result("spatial_rgb", key, {"rgb": rgb})
    return SpatialView(recs, rgb, pca)


# ---------------------------------------------------------------------------------------- pictures


def map_image(rgb: np.ndarray, size: int = 192):
    """One (h, w, 3) uint8 map as a PIL image of ``size`` px (nearest-neighbour: each feature cell stays a square)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = size / max(h, w)
    return Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST)


def grid_png(view: SpatialView, size: int = 160, columns: int = 4) -> bytes:
    """A PNG of image / map pairs, ``columns`` pairs per row (the export of the spatial view)."""
    from PIL import Image

    from core.data.datasets import load_rgb as _load

    n = len(view.records)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    pad = 6
    out = Image.new("RGB", (cols * (2 * size + 3 * pad), rows * (size + 2 * pad)), "white")
    for k, (r, rgb) in enumerate(zip(view.records, view.rgb)):
        im = _load(r.path).resize((size, size), Image.BICUBIC)
        x, y = (k % cols) * (2 * size + 3 * pad) + pad, (k // cols) * (size + 2 * pad) + pad
        out.paste(im, (x, y))
        out.paste(map_image(rgb, size).resize((size, size), Image.NEAREST), (x + size + pad, y))
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
