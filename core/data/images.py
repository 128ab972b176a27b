"""Decoding images: RGB conversion, a pixel limit, and the decode check of ``python -m core validate``."""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
from PIL import Image


from core.data.records import DEFAULT_MAX_PIXELS, ImageRecord, UnreadableImage

# -------------------------------------------------------------------------------------- images


def load_rgb(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image as 8-bit RGB (first frame of animations; alpha composited on white).

    Grayscale, palette, CMYK and 16-bit images are converted. Raises :class:`UnreadableImage`.
    """
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")  # bomb / truncation warnings: our own limit and errors decide
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableImage(f"{w}x{h} is over the pixel limit of {max_pixels}")
            im.seek(0)
            im.load()
            return to_rgb(im)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"over the pixel limit ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImage(f"cannot decode: {e}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; 16-bit/32-bit integer images are scaled, not clipped; 32-bit float
    images with every value in [0, 1] are scaled by 255 (NaN/inf read as 0)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if im.mode == "F" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
            hi = 1.0  # 32-bit float image in [0, 1] (scientific TIFFs)
        else:
            hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")  # L, CMYK, YCbCr, RGB...


def verify_images(records: Iterable[ImageRecord], max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> list[tuple[str, str]]:
    """Decode every image; return ``(id, reason)`` for those that fail."""
    bad = []
    for r in records:
        try:
            load_rgb(r.path, max_pixels)
        except UnreadableImage as e:
            bad.append((r.id, str(e)))
    return bad


