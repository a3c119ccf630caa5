"""Turn whatever Pillow can open into the 8-bit RGB image the chain works on."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, orientation applied, as 8-bit RGB."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB with EXIF orientation applied; alpha is composited on white.

    Photos arrive as 16-bit PNG, CMYK JPEG, palette images with transparency and
    so on; every stage after this one sees only RGB. An upright RGB image comes back
    as itself, not a copy: the chain only reads it.
    """
    # A broken EXIF block must not cost the image: keep it as it came. Only a photo that
    # needs turning is turned: exif_transpose copies every other one whole (5.8 MB for a
    # 1200x1600 photo) to change nothing.
    with contextlib.suppress(Exception):
        if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        im = _wide_to_l(im)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _wide_to_l(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16"):
        arr = arr / 257.0
    elif arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
