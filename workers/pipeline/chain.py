"""The chain itself: a batch of images through classify, detect, crop and OCR."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from workers.pipeline.classify import Classifier, TorchClassifier
from workers.pipeline.crop import Cropper
from workers.pipeline.detect import Detector, load_detector
from workers.pipeline.device import choose_device
from workers.pipeline.images import to_rgb
from workers.pipeline.ocr import Reader, load_reader
from workers.pipeline.pack import ModelPack
from workers.pipeline.results import Box, Classification, Detection, ImageResult, Region

StageCallback = Callable[[str], None]


@dataclass
class Pipeline:
    pack: ModelPack
    classifier: Classifier
    detector: Detector
    cropper: Cropper
    reader: Reader
    device: torch.device

    def run(
        self, images: list[Image.Image], on_stage: StageCallback | None = None
    ) -> list[ImageResult]:
        """Read a batch; one result per image, in order.

        A stage's time is measured over the whole batch and shared out evenly, so
        ``timings_ms`` of a batch of one is that image's own time.
        """
        return self.finish(self.detect(images, on_stage), on_stage)

    def prepare(self, image: Image.Image) -> Prepared:
        """One image made ready for the models: RGB, and each model's input (resized,
        as a tensor; pinned on CUDA) where the model can make it ahead. A batching worker
        runs this on the job's own thread, so the accelerator's thread only runs models.
        The detector's input is made for every image, pages or not: the classifier has
        not spoken yet."""
        rgb = to_rgb(image)
        classify = getattr(self.classifier, "prepare", None)
        detect = getattr(self.detector, "prepare", None)
        return Prepared(
            rgb,
            classify(rgb) if classify is not None else None,
            detect(rgb) if detect is not None else None,
        )

    def detect(
        self, images: list[Image.Image | Prepared], on_stage: StageCallback | None = None
    ) -> Detected:
        """The accelerator's half of the chain: classify, then detect on relevant images.
        Images may come as they are or as `prepare` made them.

        A batching worker runs this for one batch while ``finish`` (CPU: crop and OCR)
        works on the previous one.
        """
        notify = on_stage or (lambda stage: None)
        n = max(1, len(images))
        timings: dict[str, float] = {}

        notify("classify")
        t0 = time.perf_counter()
        ready = [im if isinstance(im, Prepared) else Prepared(to_rgb(im)) for im in images]
        rgb = [p.image for p in ready]
        if ready and all(p.classify_input is not None for p in ready):
            verdicts = self.classifier.classify_prepared([p.classify_input for p in ready])  # type: ignore[attr-defined]
        else:
            verdicts = self.classifier.classify(rgb) if rgb else []
        timings["classify"] = _ms_since(t0) / n

        relevant = [i for i, v in enumerate(verdicts) if v.relevant]
        notify("detect")
        t0 = time.perf_counter()
        # Boxes under the pack's threshold come too when the numbering's gaps check may
        # take some of them (finish decides).
        gap_score = self._gap_score()
        if not relevant:
            found = []
        elif all(ready[i].detect_input is not None for i in relevant):
            found = self.detector.detect_prepared(  # type: ignore[attr-defined]
                [ready[i].detect_input for i in relevant],
                [rgb[i].size for i in relevant],
                min_score=gap_score,
            )
        else:
            found = self.detector.detect([rgb[i] for i in relevant], min_score=gap_score)
        timings["detect"] = _ms_since(t0) / n
        threshold = None if gap_score is None else self.detector.score_threshold  # type: ignore[attr-defined]
        return Detected(rgb, verdicts, dict(zip(relevant, found, strict=True)), timings, threshold)

    def _gap_score(self) -> float | None:
        """How low a box may score and still be a candidate for the reader's numbering
        gaps check (workers.pipeline.numbering); None when there is no such check."""
        check = getattr(getattr(self.reader, "numbering", None), "gaps", None)
        threshold = getattr(self.detector, "score_threshold", None)
        if check is None or threshold is None or check.min_score >= threshold:
            return None
        return float(check.min_score)

    def finish(
        self, detected: Detected, on_stage: StageCallback | None = None
    ) -> list[ImageResult]:
        """The CPU half: crop the detected boxes and read them; results in input order."""
        notify = on_stage or (lambda stage: None)
        rgb, detections = detected.images, detected.detections
        n = max(1, len(rgb))
        timings = dict(detected.timings_ms)

        notify("crop")
        t0 = time.perf_counter()
        crops = {
            i: self.cropper.crop(rgb[i], [d.box for d in dets]) for i, dets in detections.items()
        }
        timings["crop"] = _ms_since(t0) / n

        notify("ocr")
        t0 = time.perf_counter()
        flat = [c for i in detections for c in crops[i]]
        readings = iter(self.reader.read(flat))
        pages = {
            i: self._page(dets, [next(readings) for _ in dets], detected.threshold)
            for i, dets in detections.items()
        }
        timings["ocr"] = _ms_since(t0) / n

        results = []
        for i, verdict in enumerate(detected.verdicts):
            dets, cuts = detections.get(i, []), crops.get(i, [])
            order, texts = pages.get(i, ([], []))
            regions = [
                Region(dets[k].box, dets[k].label, dets[k].score, r.text, r.confidence)
                for k, r in zip(order, texts, strict=True)
            ]
            results.append(
                ImageResult(
                    classification=verdict,
                    regions=regions,
                    timings_ms=dict(timings),
                    width=rgb[i].width,
                    height=rgb[i].height,
                    crops=[cuts[k] for k in order],
                )
            )
        return results

    def _page(
        self, dets: list[Detection], readings: list[Any], threshold: float | None
    ) -> tuple[list[int], list[Any]]:
        """One image's regions to report, in reading order (indices into `dets`), and
        their readings. A reader that knows how problems are numbered
        (CtcReader.follow_numbering) checks its unsure ones against the sequence; with a
        `threshold`, boxes under it are candidates, reported only where the sequence
        says they are the number that belongs there (CtcReader.fill_gaps)."""
        follow = getattr(self.reader, "follow_numbering", None)
        main = [k for k, d in enumerate(dets) if threshold is None or d.score >= threshold]
        order = [main[k] for k in reading_order([dets[k].box for k in main])]
        texts = [readings[k] for k in order]
        if follow is not None:
            texts = follow(texts)
        if len(main) == len(dets):
            return order, texts
        final = dict(zip(order, texts, strict=True))
        full = reading_order([d.box for d in dets])
        taken = self.reader.fill_gaps(  # type: ignore[attr-defined]
            [final.get(k, readings[k]) for k in full], [k not in final for k in full]
        )
        final.update({full[position]: reading for position, reading in taken.items()})
        kept = [k for k in full if k in final]
        return kept, [final[k] for k in kept]


@dataclass
class Prepared:
    """An image as `Pipeline.prepare` made it ready; None where a model makes its own
    input from `image` in the batch."""

    image: Image.Image  # RGB, orientation applied
    classify_input: Any = None
    detect_input: Any = None


@dataclass
class Detected:
    """A batch between the two halves of the chain. With a `threshold`, `detections`
    hold boxes under it too, as candidates for the numbering's gaps check."""

    images: list[Image.Image]
    verdicts: list[Classification]
    detections: dict[int, list[Detection]]
    timings_ms: dict[str, float]
    threshold: float | None = None


def reading_order(boxes: list[Box]) -> list[int]:
    """Column by column, top to bottom: the order a person reads the numbers in."""
    if not boxes:
        return []
    heights = sorted(b[3] - b[1] for b in boxes)
    column_gap = 8 * heights[len(heights) // 2]
    columns: list[list[int]] = []
    for k in sorted(range(len(boxes)), key=lambda k: boxes[k][0]):
        if columns and boxes[k][0] - boxes[columns[-1][0]][0] < column_gap:
            columns[-1].append(k)
        else:
            columns.append([k])
    return [k for col in columns for k in sorted(col, key=lambda k: boxes[k][1])]


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def load_pipeline(pack_dir: str | Path | None = None, device: str | None = None) -> Pipeline:
    """Load a model pack once: every model on ``device`` (CUDA when present by default)."""
    pack = ModelPack.load(pack_dir)
    dev = choose_device(device)
    if dev.type == "cpu" and torch.get_num_threads() > 8:
        torch.set_num_threads(8)
    classifier = TorchClassifier.from_pack(pack, dev)
    detector = load_detector(pack, dev)
    return Pipeline(
        pack=pack,
        classifier=classifier,
        detector=detector,
        cropper=Cropper.from_config(pack.crop),
        reader=load_reader(pack.ocr, pack, dev),
        device=dev,
    )
