"""The whole chain with the shipped pack, on rendered pages it has never seen."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.evaluate import canonical, number_hits
from workers.pipeline import STAGES, Pipeline
from workers.training.synth import fonts, render_negative, render_page

# Seeds far from both the training and the held-out ranges of workers.training.
SEEDS = [90_000_100 + k for k in range(6)]


@pytest.fixture(scope="module")
def pages():
    return [render_page(seed, fonts("heldout")) for seed in SEEDS]


def test_it_reads_the_numbers_on_rendered_pages(pipeline: Pipeline, pages) -> None:
    # A regression guard below what the reference pack reads (docs/models.md). On these
    # six pages 59 of 67 numbers are read right, as with 1.2.0-1.2.3, and 65 are
    # reported (1.2.3: 67, 1.2.2: 63): on the EB Garamond page the reader takes "22."
    # for "12.", and the numbering's runs (pack 1.2.3) take some consecutive misreadings
    # that follow from it. The product's targets are measured by workers.evaluate.
    results = pipeline.run([p.image for p in pages])
    truth = read = correct = 0
    for page, result in zip(pages, results, strict=True):
        assert result.classification.relevant
        truths = [(box, canonical(t)) for box, t in page.numbers]
        got = [(r.box, canonical(r.text)) for r in result.regions if r.text]
        hits = number_hits(got, truths)
        truth, read, correct = truth + len(truths), read + len(got), correct + sum(hits)
    assert correct / truth >= 0.8, f"recall {correct}/{truth}"
    assert correct / read >= 0.85, f"precision {correct}/{read}"


def test_it_answers_the_same_for_the_same_image(pipeline: Pipeline, pages) -> None:
    first = pipeline.run([pages[0].image])[0].to_dict()
    second = pipeline.run([pages[0].image])[0].to_dict()
    first.pop("timings_ms"), second.pop("timings_ms")
    assert first == second


def test_it_answers_a_batch_as_it_answers_each_image(pipeline: Pipeline, pages) -> None:
    images = [pages[1].image, render_negative(90_000_200), pages[2].image]
    batch = [r.to_dict() for r in pipeline.run(images)]
    alone = [pipeline.run([im])[0].to_dict() for im in images]
    for b, a in zip(batch, alone, strict=True):
        assert b["classification"]["relevant"] == a["classification"]["relevant"]
        assert [r["text"] for r in b["regions"]] == [r["text"] for r in a["regions"]]


def test_it_reports_every_stage_and_reports_stages_as_they_start(pipeline: Pipeline, pages) -> None:
    seen: list[str] = []
    [result] = pipeline.run([pages[3].image], on_stage=seen.append)
    assert seen == list(STAGES)
    assert set(result.timings_ms) == set(STAGES)
    assert len(result.crops) == len(result.regions)


def test_it_lists_regions_in_reading_order(pipeline: Pipeline, pages) -> None:
    [result] = pipeline.run([pages[4].image])
    xs = [r.box[0] for r in result.regions]
    # Within a column numbers go down the page; a new column starts to the right.
    for a, b in zip(result.regions, result.regions[1:], strict=False):
        assert b.box[1] > a.box[1] or b.box[0] > a.box[0] + 50, xs


def _awkward_images(page: Image.Image) -> dict[str, Image.Image]:
    small = page.resize((page.width // 2, page.height // 2))
    wide = np.asarray(small.convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    small.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif)
    buf.seek(0)
    return {
        "grayscale": small.convert("L"),
        "rgba": small.convert("RGBA"),
        "16-bit": Image.fromarray(wide),
        "cmyk": small.convert("CMYK"),
        "1x1": Image.new("RGB", (1, 1), "white"),
        "20000x8": Image.new("L", (20000, 8), 128),
        "exif-rotated": Image.open(buf),
        "palette-with-transparency": small.convert("P"),
    }


def test_it_answers_awkward_images_without_crashing(pipeline: Pipeline, pages) -> None:
    awkward = _awkward_images(pages[5].image)
    for name, image in awkward.items():
        [result] = pipeline.run([image])
        assert result.classification.label in ("page", "other"), name
    [rotated] = pipeline.run([awkward["exif-rotated"]])
    assert (rotated.width, rotated.height) == awkward["grayscale"].size
    assert rotated.classification.relevant


def test_the_cli_prints_one_json_object_per_image_in_order(tmp_path: Path, pages) -> None:
    page = tmp_path / "page.jpg"
    pages[0].image.save(page, quality=90)
    cat = tmp_path / "cat.png"
    render_negative(90_000_300).save(cat)
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not an image")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.pipeline",
            "--json",
            "--device",
            "cpu",
            str(page),
            str(cat),
            str(bogus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr  # one file was no image
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(page), str(cat), str(bogus)]
    assert set(rows[0]) == {"image", "classification", "regions", "timings_ms"}
    assert set(rows[0]["classification"]) == {"label", "score", "relevant"}
    assert rows[0]["classification"]["relevant"] and rows[0]["regions"]
    assert set(rows[0]["regions"][0]) == {"box", "label", "score", "text", "confidence"}
    assert not rows[1]["classification"]["relevant"] and rows[1]["regions"] == []
    assert "error" in rows[2]


def test_the_cli_prints_a_table_for_people(tmp_path: Path, pages) -> None:
    page = tmp_path / "page.jpg"
    pages[0].image.save(page, quality=90)
    out = subprocess.run(
        [sys.executable, "-m", "workers.pipeline", "--device", "cpu", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.startswith(f"{page}: page (")
    assert canonical(pages[0].numbers[0][1]) in out.stdout


def test_the_threshold_sweep_agrees_with_the_evaluation_at_the_packs_thresholds(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    from workers.evaluate import evaluate, sweep
    from workers.training.dataset import generate, read_labels

    data = generate(tmp_path / "val", "val", pages=3, negatives=0, workers=1)
    score = pipeline.detector.score_threshold
    confidence = pipeline.reader.settings.min_confidence
    table = sweep(pipeline, data, scores=(score, 0.99), confidences=(confidence, 99.0))
    # The sweep's table is the plain reader's (no second look, no numbering), and
    # leaves the pack as it found it.
    look, numbering = pipeline.reader.second_look, pipeline.reader.numbering
    assert look is not None and numbering is not None
    pipeline.reader.second_look = pipeline.reader.numbering = None
    try:
        report = evaluate(pipeline, data)
    finally:
        pipeline.reader.second_look, pipeline.reader.numbering = look, numbering
    [row] = [
        r for r in table if r["score_threshold"] == score and r["min_confidence"] == confidence
    ]
    assert (row["precision"], row["recall"]) == (
        report["number_precision"],
        report["number_recall"],
    )
    # The recall by photo blur, and by typeface, covers every number of the set and adds
    # up to the whole.
    for by in ("number_recall_by_blur", "number_recall_by_font"):
        parts = report[by].values()
        assert sum(p["numbers"] for p in parts) == report["numbers"]
        read_right = sum(round(p["recall"] * p["numbers"]) for p in parts)
        assert read_right == round(report["number_recall"] * report["numbers"])
    labels = read_labels(data)
    assert set(report["number_recall_by_font"]) == {label.font for label in labels}
    strictest = [r for r in table if r["score_threshold"] == 0.99 and r["min_confidence"] == 99.0]
    assert strictest[0]["recall"] <= row["recall"]
    # The sweep leaves the pipeline as it found it.
    assert (pipeline.detector.score_threshold, pipeline.reader.settings.min_confidence) == (
        score,
        confidence,
    )
    assert (pipeline.reader.second_look, pipeline.reader.numbering) == (look, numbering)


def test_prepared_images_read_exactly_as_the_images_themselves(pipeline: Pipeline, pages) -> None:
    # A batching worker prepares each image on its job's thread (Pipeline.prepare) and
    # hands the batch the prepared inputs; the answer must not change, box for box.
    images = [pages[0].image, render_negative(90_000_201), _rotated_photo(pages[5].image)]
    plain = [r.to_dict() for r in pipeline.run(images)]
    prepared = [r.to_dict() for r in pipeline.run([pipeline.prepare(im) for im in images])]
    mixed = [r.to_dict() for r in pipeline.run([pipeline.prepare(images[0]), *images[1:]])]
    for answers in (plain, prepared, mixed):
        for answer in answers:
            answer.pop("timings_ms")
    assert prepared == plain
    assert mixed == plain
    assert plain[0]["regions"] and not plain[1]["classification"]["relevant"]


def test_prepare_makes_every_model_input_ahead(pipeline: Pipeline, pages) -> None:
    page = pages[0].image.convert("L")
    ready = pipeline.prepare(page)
    assert ready.image.mode == "RGB" and ready.image.size == page.size
    assert ready.classify_input is not None and ready.detect_input is not None
    tensor, scale = ready.detect_input
    long_side = pipeline.detector.image_size  # type: ignore[attr-defined]
    assert max(tensor.shape[1:]) == long_side
    assert scale == pytest.approx(long_side / max(page.size))


def _rotated_photo(page: Image.Image) -> Image.Image:
    """The page stored sideways with EXIF orientation 6, as a phone may send it."""
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    page.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", exif=exif)
    out.seek(0)
    return Image.open(out)
