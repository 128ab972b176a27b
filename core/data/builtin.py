"""Built-in datasets, generated deterministically on first use (no download) and cached on disk.

* ``synthetic-pacs``: 4 style domains (photo, cartoon, sketch, painting) x 6 object classes, drawn
  procedurally at 64 px. Train: 100 images per (domain, class); held-out: 50, drawn with another seed.
* ``rotated-digits``: scikit-learn's 8x8 handwritten digits (1,797, shipped inside the package),
  upsampled to 64 px and rotated by 0, 15, 30, 45, 60, 75 degrees (DomainBed's RotatedMNIST recipe:
  each domain gets its own disjoint share of the digits). Train and held-out use disjoint digits.

Names take a split suffix: ``synthetic-pacs:train`` / ``synthetic-pacs:heldout`` (the default).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

logger = logging.getLogger(__name__)

VERSION = 1
SPLITS = ("train", "heldout")
DEFAULT_SPLIT = "heldout"
SIZE = 64

PACS_DOMAINS = ("cartoon", "painting", "photo", "sketch")
PACS_CLASSES = ("circle", "cross", "house", "square", "star", "triangle")
PACS_PER_CELL = {"train": 100, "heldout": 50}
PACS_SEEDS = {"train": 1234, "heldout": 98765}

ROTATIONS = (0, 15, 30, 45, 60, 75)
DIGIT_DOMAINS = tuple(f"rot{a:02d}" for a in ROTATIONS)

BUILTINS = {
    "synthetic-pacs": "PACS-like: 4 style domains x 6 shapes, 64 px (train 2,400 / held-out 1,200 images)",
    "rotated-digits": "scikit-learn digits rotated 0-75 degrees: 6 domains x 10 classes, 64 px",
}


def data_home(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder for generated datasets: ``data_dir``, else ``$DOMAINLENS_DATA_HOME``, else
    ``~/.cache/domainlens/datasets``."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("DOMAINLENS_DATA_HOME")
    return Path(env) if env else Path.home() / ".cache" / "domainlens" / "datasets"


def parse_name(name: str) -> tuple[str, str]:
    base, _, split = name.partition(":")
    split = split or DEFAULT_SPLIT
    if base not in BUILTINS:
        raise ValueError(f"{base!r} is not a built-in dataset; choose one of {sorted(BUILTINS)}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for {base}; use one of {list(SPLITS)}")
    return base, split


def is_builtin(name: str) -> bool:
    try:
        parse_name(name)
        return True
    except ValueError:
        return False


def canonical_name(name: str) -> str:
    base, split = parse_name(name)
    return f"{base}:{split}"


def ensure_builtin(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Generate the dataset once (atomically: a temp folder renamed into place) and return its root."""
    base, split = parse_name(name)
    root = data_home(data_dir) / f"{base}-v{VERSION}" / split
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=root.parent))
    try:
        logger.info("generating built-in dataset %s:%s in %s", base, split, root)
        n = (_make_pacs if base == "synthetic-pacs" else _make_digits)(tmp, split)
        (tmp / ".complete").write_text(json.dumps({"name": base, "split": split, "version": VERSION, "n": n}))
        try:
            os.rename(tmp, root)
        except OSError:  # another process won the race, or a stale incomplete folder is in the way
            if (root / ".complete").exists():
                return root
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# ------------------------------------------------------------------------------- synthetic PACS


def _shape_polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(pts):
        c, s = np.cos(angle), np.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]

    if cls == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        return rot(list(zip(r * np.cos(t), r * 0.92 * np.sin(t))))
    if cls == "square":
        return rot([(-r, -r), (r, -r), (r, r), (-r, r)])
    if cls == "triangle":
        return rot([(0, -r * 1.1), (r, r * 0.8), (-r, r * 0.8)])
    if cls == "star":
        pts = []
        for k in range(10):
            rr = r * (1.1 if k % 2 == 0 else 0.45)
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((rr * np.cos(a), rr * np.sin(a)))
        return rot(pts)
    if cls == "cross":
        w = r * 0.38
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                    (-r, -w), (-w, -w)])
    if cls == "house":
        return rot([(-r, r), (-r, -r * 0.1), (0, -r * 1.05), (r, -r * 0.1), (r, r)])
    raise ValueError(cls)


def _draw_pacs(domain: str, cls: str, rng: np.random.Generator) -> Image.Image:
    s = SIZE
    cx, cy = rng.uniform(0.38, 0.62, size=2) * s
    r = rng.uniform(0.2, 0.3) * s
    angle = rng.uniform(-0.35, 0.35)
    poly = _shape_polygon(cls, cx, cy, r, angle)
    hue = rng.uniform(0, 1)

    def hsv(h, sat, val):
        import colorsys

        return tuple(int(255 * x) for x in colorsys.hsv_to_rgb(h % 1.0, sat, val))

    if domain == "photo":
        # smooth lighting gradient + sensor noise, shaded object with a soft shadow
        yy, xx = np.mgrid[0:s, 0:s] / s
        base = np.array(hsv(hue + 0.5, rng.uniform(0.1, 0.35), rng.uniform(0.45, 0.8)), dtype=np.float64)
        grad = (0.75 + 0.5 * (xx * rng.uniform(-0.6, 0.6) + yy * rng.uniform(-0.6, 0.6)))[..., None]
        img = np.clip(base * grad, 0, 255)
        bg = Image.fromarray(img.astype(np.uint8))
        shadow = Image.new("L", (s, s), 0)
        ImageDraw.Draw(shadow).polygon([(x + 3, y + 3) for x, y in poly], fill=110)
        shadow = shadow.filter(ImageFilter.GaussianBlur(2.5))
        bg = Image.composite(Image.new("RGB", (s, s), (20, 20, 20)), bg, shadow)
        obj = np.zeros((s, s, 3))
        col = np.array(hsv(hue, rng.uniform(0.5, 0.9), rng.uniform(0.55, 0.95)), dtype=np.float64)
        shade = (1.15 - 0.6 * ((xx - cx / s) + (yy - cy / s)))[..., None]
        obj = np.clip(col * shade, 0, 255).astype(np.uint8)
        mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        im = Image.composite(Image.fromarray(obj), bg, mask.filter(ImageFilter.GaussianBlur(0.6)))
        a = np.asarray(im, dtype=np.float64) + rng.normal(0, 9, size=(s, s, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if domain == "cartoon":
        im = Image.new("RGB", (s, s), hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.5), 1.0))
        d = ImageDraw.Draw(im)
        d.polygon(poly, fill=hsv(hue, 1.0, 1.0), outline=(0, 0, 0), width=3)
        # a flat highlight blob
        hx, hy = poly[0]
        d.ellipse([cx - r * 0.35, cy - r * 0.45, cx - r * 0.1, cy - r * 0.2], fill=(255, 255, 255))
        return im
    if domain == "sketch":
        g = int(rng.uniform(235, 255))
        im = Image.new("RGB", (s, s), (g, g, g))
        d = ImageDraw.Draw(im)
        for _ in range(2):  # doubled, jittered pencil strokes
            jit = [(x + rng.normal(0, 0.8), y + rng.normal(0, 0.8)) for x, y in poly]
            d.line(jit + [jit[0]], fill=(40, 40, 40), width=1)
        # hatching inside the shape
        mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        hatch = Image.new("L", (s, s), 0)
        hd = ImageDraw.Draw(hatch)
        off = rng.uniform(0, 6)
        for k in range(-s, s, 6):
            hd.line([(k + off, 0), (k + off + s, s)], fill=150, width=1)
        hatch = Image.composite(hatch, Image.new("L", (s, s), 0), mask)
        im = Image.composite(Image.new("RGB", (s, s), (90, 90, 90)), im, hatch)
        return im
    if domain == "painting":
        # canvas of coloured brush strokes, object painted with strokes, then softened
        im = Image.new("RGB", (s, s), hsv(hue + 0.4, 0.5, 0.7))
        d = ImageDraw.Draw(im)
        for _ in range(60):
            x, y = rng.uniform(0, s, size=2)
            L = rng.uniform(4, 14)
            a = rng.uniform(0, np.pi)
            d.line([(x, y), (x + L * np.cos(a), y + L * np.sin(a))],
                   fill=hsv(hue + 0.4 + rng.normal(0, 0.08), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9)),
                   width=int(rng.integers(2, 5)))
        fg = Image.new("RGB", (s, s), 0)
        fd = ImageDraw.Draw(fg)
        fd.polygon(poly, fill=hsv(hue, 0.8, 0.8))
        for _ in range(80):
            x, y = rng.uniform(cx - r, cx + r), rng.uniform(cy - r, cy + r)
            a = rng.uniform(0, np.pi)
            fd.line([(x, y), (x + 6 * np.cos(a), y + 6 * np.sin(a))],
                    fill=hsv(hue + rng.normal(0, 0.05), rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)), width=3)
        mask = Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        im = Image.composite(fg, im, mask.filter(ImageFilter.GaussianBlur(1.2)))
        return im.filter(ImageFilter.GaussianBlur(0.7))
    raise ValueError(domain)


def _make_pacs(root: Path, split: str) -> int:
    n = 0
    for di, dom in enumerate(PACS_DOMAINS):
        for ci, cls in enumerate(PACS_CLASSES):
            folder = root / dom / cls
            folder.mkdir(parents=True)
            rng = np.random.default_rng([PACS_SEEDS[split], di, ci])
            for k in range(PACS_PER_CELL[split]):
                _draw_pacs(dom, cls, rng).save(folder / f"{cls}_{k:04d}.png", optimize=False)
                n += 1
    return n


# ----------------------------------------------------------------------------------- digits


def _make_digits(root: Path, split: str) -> int:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target  # (1797, 8, 8) in 0..16
    order = np.random.default_rng(2024).permutation(len(labels))
    half = len(order) // 2
    idx = order[:half] if split == "train" else order[half:]
    shares = np.array_split(idx, len(ROTATIONS))  # disjoint digits per domain, as RotatedMNIST
    n = 0
    for dom, angle, share in zip(DIGIT_DOMAINS, ROTATIONS, shares):
        for i in share:
            a = (images[i] / 16.0 * 255.0).astype(np.uint8)
            im = Image.fromarray(a, "L").resize((SIZE - 16, SIZE - 16), Image.BICUBIC)
            canvas = Image.new("L", (SIZE, SIZE), 0)
            canvas.paste(im, (8, 8))
            canvas = canvas.rotate(angle, resample=Image.BICUBIC)
            folder = root / dom / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            canvas.save(folder / f"digit_{i:04d}.png")
            n += 1
    return n
