"""The annotated image: the input photo with each region's box and index drawn on it."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]


def annotate(image: Image.Image, boxes: list[Box]) -> bytes:
    """`image` with each box and its index drawn on it, as JPEG."""
    canvas = _rgb(image)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 400))
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        draw.rectangle((x0, y0, x1, y1), outline=(230, 40, 90), width=width)
        label = str(index)
        tx, ty = x0, max(0.0, y0 - 12 * width)
        text_box = draw.textbbox((tx, ty), label, font_size=10 * width)
        draw.rectangle(text_box, fill=(230, 40, 90))
        draw.text((tx, ty), label, fill=(255, 255, 255), font_size=10 * width)
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=88)
    return out.getvalue()


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")
