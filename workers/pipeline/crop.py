"""Stage 3: cut each detected box out, ready for OCR."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from workers.pipeline.results import Box


@dataclass(frozen=True)
class Cropper:
    """Padded, optionally deskewed crops, scaled to the height OCR reads best.

    Tesseract's LSTM reads glyphs of about 20-30 px best and its time grows with the
    pixel count, so small boxes are scaled up and large ones down to ``height``.
    """

    pad_x: float = 0.25  # of the box height, each side
    pad_y: float = 0.20
    deskew: bool = True
    height: int = 36
    max_width: int = 600  # after scaling; longer crops are cut, not read for minutes

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Cropper:
        known = {k: cfg[k] for k in ("pad_x", "pad_y", "deskew", "height", "max_width") if k in cfg}
        return cls(**known)

    def crop(self, image: Image.Image, boxes: list[Box]) -> list[Image.Image]:
        if not boxes:
            return []
        gray = image.convert("L")
        return [self.crop_one(gray, box) for box in boxes]

    def crop_one(self, gray: Image.Image, box: Box) -> Image.Image:
        x0, y0, x1, y1 = box
        bh = max(y1 - y0, 1.0)
        w, h = gray.size
        left = int(max(0, np.floor(x0 - self.pad_x * bh)))
        top = int(max(0, np.floor(y0 - self.pad_y * bh)))
        right = int(min(w, np.ceil(x1 + self.pad_x * bh)))
        bottom = int(min(h, np.ceil(y1 + self.pad_y * bh)))
        right, bottom = max(right, left + 1), max(bottom, top + 1)
        crop = gray.crop((left, top, right, bottom))
        if self.deskew and crop.height >= 8 and crop.width >= 8:
            crop = _deskew(crop)
        scale = self.height / crop.height
        size = (min(self.max_width, max(1, round(crop.width * scale))), self.height)
        if round(crop.width * scale) > self.max_width:
            crop = crop.crop((0, 0, int(self.max_width / scale), crop.height))
        return crop.resize(size, Image.BICUBIC if scale > 1 else Image.BILINEAR)


def _deskew(crop: Image.Image, max_angle: float = 12.0) -> Image.Image:
    """Level the ink along its baseline; leaves the crop alone when unsure."""
    arr = np.asarray(crop)
    _, ink = cv2.threshold(arr, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    points = cv2.findNonZero(ink)
    if points is None or len(points) < 20:
        return crop
    (_, _), (rw, rh), angle = cv2.minAreaRect(points)
    if rw < rh:  # OpenCV's angle names the rectangle's other side
        angle -= 90.0
    if angle < -45:
        angle += 90.0
    if abs(angle) < 1.0 or abs(angle) > max_angle:
        return crop
    fill = int(np.median(arr[ink == 0])) if np.any(ink == 0) else 255
    return crop.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=fill)
