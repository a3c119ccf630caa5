"""The reading chain as the Celery worker holds it: loaded once per worker process.

Only worker processes import this module's heavy side (workers.pipeline, torch), and
only after fork: the parent never touches CUDA, which a forked child could not use.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.signals import worker_process_init
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image, ImageDraw

from detection.jobs import Claim, Reading, RegionReading
from workers import metrics

log = logging.getLogger(__name__)


class PackUnavailable(Exception):
    """The model pack could not be loaded; every job on this worker would fail."""


class ReadingTooLarge(Exception):
    """The chain answered more than the store takes; `code` names the limit that was hit."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_reading_size(regions: int, crop_sizes: list[tuple[int, int]]) -> None:
    """The store's own bounds, whatever a pack's manifest allows (detect.max_regions,
    crop.height/max_width bound the reference chain far below these)."""
    max_regions = settings.SNAPREAD_MAX_REGIONS
    if regions > max_regions:
        raise ReadingTooLarge(
            "too_many_regions", f"The reader found {regions} regions; the limit is {max_regions}."
        )
    max_pixels = settings.SNAPREAD_MAX_CROP_PIXELS
    for width, height in crop_sizes:
        if width * height > max_pixels:
            raise ReadingTooLarge(
                "crop_too_large",
                f"A crop of {width}x{height} pixels is over the limit of {max_pixels} pixels.",
            )


def load_chain() -> Any:
    """Build the reading chain from settings (tests of the spine swap this out)."""
    from workers.pipeline import load_pipeline

    device = None if settings.SNAPREAD_DEVICE == "auto" else settings.SNAPREAD_DEVICE
    return load_pipeline(settings.SNAPREAD_PACK, device)


_chain: Any = None
_chain_lock = threading.Lock()


def chain() -> Any:
    global _chain
    with _chain_lock:
        if _chain is None:
            try:
                _chain = load_chain()
            except Exception as exc:
                raise PackUnavailable(
                    f"Could not load the model pack at {settings.SNAPREAD_PACK}: {exc}"
                ) from exc
            log.info("reading chain loaded: %s %s", _chain.pack.name, _chain.pack.version)
        return _chain


@worker_process_init.connect
def _load_in_child(**_: object) -> None:
    # Load eagerly in each fresh child so the first job does not wait for it; a failure
    # here is retried by the first job, which then fails with a clear code.
    try:
        chain()
    except PackUnavailable:
        log.exception("reading chain not loaded at worker start")


def read(claim: Claim, on_stage: Callable[[str], None]) -> Reading:
    """Run the chain on the claimed job's stored image; plain values out."""
    pipeline = chain()
    with default_storage.open(claim.image_name, "rb") as stored:
        image = Image.open(stored)
        image.load()
    [result] = pipeline.run([image], on_stage=on_stage)
    metrics.observe_batch(1)  # metrics: each read is a batch of one image
    c = result.classification
    if c.relevant:
        check_reading_size(len(result.regions), [crop.size for crop in result.crops])
    regions = [
        RegionReading(
            box=tuple(float(v) for v in r.box),  # type: ignore[arg-type]
            label=r.label,
            score=float(r.score),
            text=r.text,
            confidence=float(r.confidence),
            crop_png=_png(crop),
        )
        for r, crop in zip(result.regions, result.crops, strict=True)
    ]
    return Reading(
        label=c.label,
        score=float(c.score),
        relevant=bool(c.relevant),
        pack_name=str(pipeline.pack.name),
        pack_version=str(pipeline.pack.version),
        timings_ms=dict(result.timings_ms),
        regions=regions if c.relevant else [],
        annotated_jpeg=annotate(image, [r.box for r in regions]) if c.relevant else None,
    )


def annotate(image: Image.Image, boxes: list[tuple[float, float, float, float]]) -> bytes:
    """The input with each region's box and index drawn on it, as JPEG."""
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


def _png(crop: Any) -> bytes:
    out = io.BytesIO()
    crop.save(out, "PNG")
    return out.getvalue()
