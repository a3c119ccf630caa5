"""FAKE reading chain, for tests whose subject is the job spine, never the reading.

It has the real chain's interface (pack.name/version, run(images, on_stage)) and reads
nothing: what it answers is chosen by the colour of the image's top-left pixel, so a
test picks the outcome by the picture it uploads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from workers.pipeline.results import STAGES, Classification, ImageResult, Region

REJECT = (255, 0, 0)  # classified as not relevant
EXPLODE = (0, 0, 255)  # the chain raises
SLOW = (0, 255, 0)  # each stage takes SLOW_STAGE_S
SLOW_STAGE_S = 0.6
TEXTS = ("12", "345")


@dataclass(frozen=True)
class FakePack:
    name: str = "fake-spine-pack"
    version: str = "0"


class FakeReadingChain:
    pack = FakePack()

    def run(
        self, images: list[Image.Image], on_stage: Callable[[str], None] | None = None
    ) -> list[ImageResult]:
        notify = on_stage or (lambda stage: None)
        colours = [im.convert("RGB").getpixel((0, 0)) for im in images]
        results = []
        for stage in STAGES:
            notify(stage)
            if SLOW in colours:
                time.sleep(SLOW_STAGE_S)
            if EXPLODE in colours:
                raise RuntimeError("the fake chain exploded, as asked")
        for image, colour in zip(images, colours, strict=True):
            if colour == REJECT:
                results.append(ImageResult(Classification("other", 0.97, False)))
                continue
            w, h = image.size
            boxes = [(0.1 * w, 0.1 * h, 0.4 * w, 0.3 * h), (0.5 * w, 0.5 * h, 0.9 * w, 0.8 * h)]
            regions = [
                Region(box, "number", 0.9, text, 88.0)
                for box, text in zip(boxes, TEXTS, strict=True)
            ]
            crops = [image.crop(tuple(round(v) for v in box)) for box in boxes]
            timings = {stage: 1.0 for stage in STAGES}
            results.append(
                ImageResult(
                    Classification("page", 0.99, True),
                    regions,
                    timings,
                    width=w,
                    height=h,
                    crops=crops,
                )
            )
        return results


def load_fake_chain() -> FakeReadingChain:
    return FakeReadingChain()
