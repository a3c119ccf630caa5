"""The reading chain as the Celery worker holds it: loaded once per worker process.

Only worker processes import this module's heavy side (workers.pipeline, torch), and
only after fork: the parent never touches CUDA, which a forked child could not use.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image

from detection.jobs import Claim, Reading, RegionReading
from workers import metrics
from workers.batching import Batcher
from workers.memory import hold_freed_memory

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


_batcher: Batcher | None = None
_chain_lock = threading.Lock()


def batcher() -> Batcher:
    """This process's chain behind its batcher, loaded (and warmed up) on first use."""
    global _batcher
    with _chain_lock:
        if _batcher is None:
            try:
                loaded = load_chain()
            except Exception as exc:
                raise PackUnavailable(
                    f"Could not load the model pack at {settings.SNAPREAD_PACK}: {exc}"
                ) from exc
            _batcher = Batcher(
                loaded,
                max_batch=settings.SNAPREAD_BATCH_SIZE,
                max_wait_ms=settings.SNAPREAD_BATCH_WAIT_MS,
                overlap=settings.SNAPREAD_BATCH_OVERLAP,
            )
            if settings.SNAPREAD_WARM_UP:
                _warm_up(_batcher)
            _batcher.on_batch = metrics.observe_batch  # after the warm-up: real batches only
            log.info(
                "reading chain loaded: %s %s, batches of up to %d, halves %s",
                loaded.pack.name,
                loaded.pack.version,
                _batcher.max_batch,
                "overlapped" if _batcher.overlap else "in turn",
            )
        return _batcher


def chain() -> Any:
    return batcher().chain


def _warm_up(batcher: Batcher) -> None:
    """One full batch through the chain, so the first jobs do not pay for lazy set-up
    (allocator, kernels, OCR engines)."""
    t0 = time.perf_counter()
    blank = Image.new("RGB", (1200, 1600), (250, 250, 245))
    batcher.read([blank] * batcher.max_batch)
    batcher.batch_sizes.clear()
    log.info("warm-up took %.0f ms", (time.perf_counter() - t0) * 1000)


def _load_eagerly() -> None:
    # A failure here is retried by the first job, which then fails with a clear code.
    try:
        batcher()
    except PackUnavailable:
        log.exception("reading chain not loaded at worker start")


@worker_init.connect
def _hold_memory(**_: object) -> None:
    # Before the pool and the consumer start their threads (an arena a thread has made
    # stays); prefork children inherit it.
    if settings.SNAPREAD_HOLD_MEMORY and hold_freed_memory():
        log.info("allocator: freed memory held for the next batch (workers/memory.py)")


@worker_process_init.connect
def _load_in_child(**_: object) -> None:
    # Each prefork child loads its own chain after fork (the parent never touches CUDA).
    _load_eagerly()


@worker_ready.connect
def _load_in_worker(sender: Any = None, **_: object) -> None:
    # The threads pool runs tasks in this very process: load before the first task.
    if not isinstance(getattr(sender, "pool", None), PreforkPool):
        _load_eagerly()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _log_batch_sizes(**_: object) -> None:
    if _batcher is not None:
        sizes = json.dumps(dict(sorted(_batcher.batch_sizes.items())))
        log.info("batch sizes seen: %s", sizes)


def read(claim: Claim, on_stage: Callable[[str], None]) -> Reading:
    """Run the chain on the claimed job's stored image; plain values out.

    Decoding and encoding the crops happen here, on the task's own thread; only the
    chain itself runs on the batcher's threads. The annotated image is not drawn here:
    the web process renders it on its first request (detection.jobs.job_annotated_image),
    so jobs whose clients never ask for it cost the GPU host nothing.
    """
    shared = batcher()
    t0 = time.perf_counter()
    with default_storage.open(claim.image_name, "rb") as stored:
        image = Image.open(stored)
        image.load()
    decode_ms = (time.perf_counter() - t0) * 1000
    ticket = shared.submit(image)
    try:
        result = ticket.wait(on_stage, timeout=settings.CELERY_TASK_SOFT_TIME_LIMIT)
    except TimeoutError as exc:
        raise SoftTimeLimitExceeded(str(exc)) from exc
    pipeline = shared.chain
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
    crop_bytes = sum(len(r.crop_png) for r in regions)
    if c.relevant and crop_bytes > settings.SNAPREAD_MAX_CROP_BYTES:
        raise ReadingTooLarge(
            "crops_too_large",
            f"The crops take {crop_bytes} bytes as PNG; the limit is "
            f"{settings.SNAPREAD_MAX_CROP_BYTES} bytes a job.",
        )
    return Reading(
        label=c.label,
        score=float(c.score),
        relevant=bool(c.relevant),
        pack_name=str(pipeline.pack.name),
        pack_version=str(pipeline.pack.version),
        # Decoding the photo and preparing it for the models (done on this thread, before
        # the batch) are part of the chain's own time, as in `bench.raw`: they count with
        # the first stage.
        timings_ms=_with_prepare(dict(result.timings_ms), decode_ms + ticket.prepare_ms),
        regions=regions if c.relevant else [],
    )


def _with_prepare(timings: dict[str, float], prepare_ms: float) -> dict[str, float]:
    if prepare_ms and "classify" in timings:
        timings["classify"] += prepare_ms
    return timings


def _png(crop: Any) -> bytes:
    out = io.BytesIO()
    crop.save(out, "PNG")
    return out.getvalue()
