"""Each stage alone, with the shipped pack's settings."""

from __future__ import annotations

import glob
import threading
import time
from dataclasses import replace

import pytest
from PIL import Image, ImageDraw, ImageFont

from workers.pipeline import Pipeline
from workers.pipeline.crop import Cropper
from workers.pipeline.ocr import OcrSettings, PytesseractReader, TesserocrReader

SETTINGS = OcrSettings(allow="0123456789.*", pattern=r"\d+(?:\.\d+)*", threads=2)


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    [path] = glob.glob(f"/usr/share/fonts/**/{name}", recursive=True)[:1]
    return ImageFont.truetype(path, size)


def printed(text: str, size: int = 26, name: str = "DejaVuSerif-Bold.ttf") -> Image.Image:
    font = _font(name, size)
    x0, y0, x1, y1 = font.getbbox(text)
    im = Image.new("L", (x1 - x0 + 2 * size, y1 - y0 + size), 250)
    ImageDraw.Draw(im).text((size - x0, size // 2 - y0), text, font=font, fill=20)
    return im


def test_it_reads_numbers_with_tesserocr() -> None:
    reader = TesserocrReader(SETTINGS)
    texts = ["3.14.", "12.7*.", "215.", "1.2"]
    readings = reader.read([printed(t) for t in texts])
    assert [r.text for r in readings] == ["3.14", "12.7", "215", "1.2"]
    assert all(r.confidence > 0 for r in readings)


def test_it_reads_numbers_with_the_pytesseract_fallback() -> None:
    # A process per crop: its start-up counts against the limit, so give it room on a
    # busy machine; the subject here is the reading, not the time limit.
    reader = PytesseractReader(replace(SETTINGS, timeout_ms=10_000))
    readings = reader.read([printed("3.14."), printed("215.", name="DejaVuSans.ttf")])
    assert [r.text for r in readings] == ["3.14", "215"]


def test_it_gives_each_ocr_thread_its_own_engine() -> None:
    reader = TesserocrReader(SETTINGS)
    engines: set[int] = set()
    lock = threading.Lock()
    original = reader._engine

    def spy():
        api = original()
        with lock:
            engines.add(id(api))
        return api

    reader._engine = spy  # type: ignore[method-assign]
    crops = [printed(f"{i}.{i + 1}.") for i in range(1, 13)]
    readings = reader.read(crops)
    assert [r.text for r in readings] == [f"{i}.{i + 1}" for i in range(1, 13)]
    assert 1 <= len(engines) <= SETTINGS.threads


def test_it_gives_up_on_a_crop_after_the_time_limit() -> None:
    reader = TesserocrReader(OcrSettings(timeout_ms=1, threads=1))
    long_line = printed("3.14 15.92 65.35 89.79 32.38 46.26 " * 6, size=40)
    t0 = time.perf_counter()
    [reading] = reader.read([long_line])
    assert reading.text == "" and reading.confidence == 0.0
    assert time.perf_counter() - t0 < 1.0


def test_it_crops_with_padding_clipped_to_the_image() -> None:
    image = Image.new("RGB", (200, 100), "white")
    cropper = Cropper(pad_x=0.5, pad_y=0.5, deskew=False, height=36)
    [inside, at_edge] = cropper.crop(image, [(50, 40, 90, 60), (0, 0, 30, 20)])
    assert inside.height == 36 and inside.mode == "L"
    assert inside.width == round((40 + 20) * 36 / 40)  # 10 px padding each side
    assert at_edge.width == round((30 + 10) * 36 / 30)  # no padding beyond the edge


def test_it_levels_a_tilted_number_before_reading() -> None:
    reader = TesserocrReader(SETTINGS)
    tilted = printed("17.25.", size=30).rotate(8, expand=True, fillcolor=250)
    cropper = Cropper(pad_x=0, pad_y=0, deskew=True)
    box = (0.0, 0.0, float(tilted.width), float(tilted.height))
    [crop] = cropper.crop(tilted.convert("RGB"), [box])
    assert reader.read([crop])[0].text == "17.25"


def test_it_classifies_a_page_and_a_photo(pipeline: Pipeline) -> None:
    from skimage import data

    from workers.training.synth import fonts, render_page

    page = render_page(90_000_001, fonts("heldout")).image
    cat = Image.fromarray(data.chelsea())
    verdicts = pipeline.classifier.classify([page, cat])
    assert [v.relevant for v in verdicts] == [True, False]
    assert [v.label for v in verdicts] == ["page", "other"]


def test_it_detects_numbers_where_they_are_printed(pipeline: Pipeline) -> None:
    from workers.evaluate import iou
    from workers.training.synth import fonts, render_page

    sample = render_page(90_000_002, fonts("heldout"))
    [dets] = pipeline.detector.detect([sample.image])
    found = sum(any(iou(d.box, box) >= 0.5 for d in dets) for box, _ in sample.numbers)
    assert found >= 0.9 * len(sample.numbers)
    assert len(dets) <= len(sample.numbers) + 1


@pytest.mark.parametrize("size", [(1, 1), (20000, 8), (8, 20000)])
def test_it_survives_degenerate_shapes_in_every_stage(pipeline: Pipeline, size) -> None:
    image = Image.new("RGB", size, (200, 190, 180))
    assert len(pipeline.classifier.classify([image])) == 1
    assert pipeline.detector.detect([image]) == [[]]
