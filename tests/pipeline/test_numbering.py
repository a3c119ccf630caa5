"""Problem numbers in sequence: an unsure reading checked against what its neighbours
expect (workers/pipeline/numbering.py and CtcReader.follow_numbering)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from tests.pipeline.test_reader import as_crop, assert_each_is_a_pack_error
from tests.pipeline.test_stages import printed
from workers.pipeline import Pipeline
from workers.pipeline.numbering import Gaps, Numbering, Runs, expected, follow, gaps, runs
from workers.pipeline.ocr import CtcReader, Reading, ctc_probability, load_reader
from workers.pipeline.pack import PackError
from workers.pipeline.results import Detection


def brute_force(probs: np.ndarray, labels: list[int]) -> float:
    """Sum over every path of classes whose CTC collapse (repeats merged, blanks
    dropped) is `labels`."""
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [c for k, c in enumerate(path) if c != 0 and (k == 0 or c != path[k - 1])]
        if collapsed == labels:
            total += float(np.prod([probs[t, c] for t, c in enumerate(path)]))
    return total


@pytest.mark.parametrize("labels", [[], [1], [1, 2], [2, 2], [1, 2, 1], [3, 3, 3]])
def test_the_ctc_probability_sums_every_alignment(labels: list[int]) -> None:
    rng = np.random.default_rng(len(labels))
    probs = rng.dirichlet(np.ones(4), size=6)
    assert ctc_probability(probs, labels) == pytest.approx(brute_force(probs, labels), rel=1e-9)


def test_the_probabilities_of_every_text_add_up_to_one() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=4)
    texts = [list(t) for n in range(5) for t in itertools.product([1, 2], repeat=n)]
    assert sum(ctc_probability(probs, t) for t in texts) == pytest.approx(1.0)


def test_the_sure_neighbours_say_what_number_belongs_between_them() -> None:
    assert expected(["3.14", "", "3.16"], [True, False, True], 1) == "3.15"
    # Two regions on from 214 is 216, two back from 219 is 217: the count between them
    # is broken (a missed box, a box that is no number), so nothing is expected.
    assert expected(["214", "x", "", "y", "219"], [True, False, False, False, True], 2) is None
    # Unsure neighbours say nothing; the nearest sure one speaks alone.
    assert expected(["7.1", "7.9", "", "8"], [True, False, False, False], 2) == "7.3"
    assert expected(["", "3", "", "5"], [False, True, False, True], 0) == "2"
    assert expected(["", "", "12.7."], [False, False, True], 0) is None  # not a number
    assert expected(["", "1"], [False, True], 0) is None  # no problem 0
    assert expected(["", "", ""], [False] * 3, 1) is None


def test_the_crop_decides_and_sure_readings_are_never_changed() -> None:
    texts = ["3.14", "3.51", "3.16", "", "3.18"]
    sure = [True, False, True, False, True]
    odds = {(1, "3.15"): 0.3, (3, "3.17"): 0.01}
    taken = follow(texts, sure, lambda k, t: odds.get((k, t), 0.0), 0.05)
    assert taken == {1: ("3.15", 0.3)}
    # A sure reading stays even when the sequence disagrees with it.
    assert follow(["1", "5", "3"], [True, True, True], lambda k, t: 1.0, 0.05) == {}


def test_a_run_of_unsure_readings_that_agree_is_taken_where_each_crop_allows() -> None:
    # A blurred page: nothing sure, but most readings spell consecutive numbers.
    own = ["585", "586", "581", "588", "589"]
    odds = {(0, "585"): 0.3, (1, "586"): 0.3, (2, "587"): 0.4, (3, "588"): 0.3, (4, "589"): 0.01}
    taken = runs([""] * 5, [False] * 5, own, lambda k, t: odds.get((k, t), 0.0), Runs())
    # "581" is outvoted by its four neighbours; "589" is vetoed by its own crop.
    assert taken == {0: ("585", 0.3), 1: ("586", 0.3), 2: ("587", 0.4), 3: ("588", 0.3)}
    # One neighbour and the crop's own reading are two votes, not the three needed.
    assert runs(["", ""], [False, False], ["11", "12"], lambda k, t: 1.0, Runs()) == {}
    # Sure readings speak but are never changed.
    texts, sure = ["39", "40", "", "42", "99"], [True, True, False, True, True]
    own = ["", "", "17", "", ""]
    assert runs(texts, sure, own, lambda k, t: 1.0, Runs()) == {2: ("41", 1.0)}


def test_a_box_under_the_threshold_is_kept_where_it_is_the_number_between() -> None:
    # None: a candidate box (scored under the pack's threshold); "": read, no number.
    texts = ["3.14", None, "3.16", None, None, "3.19", "", None]
    odds = {(1, "3.15"): 0.6, (3, "3.17"): 0.9, (4, "3.18"): 0.2}
    taken = gaps(texts, lambda k, t: odds.get((k, t), 0.0), Gaps())
    # 3.18 at position 4: its crop gives it too little. Position 7: no number beside it.
    assert taken == {1: ("3.15", 0.6), 3: ("3.17", 0.9)}
    # Neighbours that disagree say nothing.
    assert gaps(["7", None, "10"], lambda k, t: 1.0, Gaps()) == {}


@pytest.fixture(scope="module")
def reader(pipeline: Pipeline) -> CtcReader:
    assert isinstance(pipeline.reader, CtcReader)
    assert pipeline.reader.numbering is not None, "the reference pack follows the numbering"
    return pipeline.reader


def test_an_unsure_number_is_the_one_the_sequence_expects_when_its_crop_agrees(reader) -> None:
    # The reader is made unsure of every reading; the page's sure numbers are given.
    unsure = CtcReader(
        reader.module, reader.alphabet, replace(reader.settings, min_confidence=100.1),
        "cpu", None, reader.numbering,
    )  # fmt: skip
    blurred = [
        as_crop(printed(t, size=20)).filter(ImageFilter.GaussianBlur(1.2)) for t in ("7.3.", "9.9.")
    ]
    middle, other = unsure.read(blurred)
    assert middle.text == other.text == "" and middle.columns is not None
    assert reader.probability(middle.columns, "7.3") > 0.05
    assert reader.probability(other.columns, "7.3") < 1e-3

    def page(between: Reading) -> list[Reading]:
        return [Reading("7.2", 97.0), between, Reading("7.4", 95.0)]

    followed = reader.follow_numbering(page(middle))
    assert followed[1].text == "7.3"
    assert followed[1].confidence == pytest.approx(
        100 * reader.probability(middle.columns, "7.3"), abs=0.01
    )
    assert followed[0] == Reading("7.2", 97.0) and followed[2] == Reading("7.4", 95.0)
    # A crop that shows another number keeps what the reader said of it.
    assert reader.follow_numbering(page(other))[1] == other
    # Without the setting, nothing changes.
    plain = CtcReader(reader.module, reader.alphabet, reader.settings, "cpu")
    assert plain.follow_numbering(page(middle)) == page(middle)


def test_the_reader_takes_a_run_of_numbers_it_is_unsure_of_when_they_agree(reader) -> None:
    unsure = CtcReader(
        reader.module, reader.alphabet, replace(reader.settings, min_confidence=100.1),
        "cpu", None, reader.numbering,
    )  # fmt: skip

    def crops(*texts: str) -> list:
        return [as_crop(printed(t, size=20)).filter(ImageFilter.GaussianBlur(1.0)) for t in texts]

    run = unsure.read(crops("7.1.", "7.2.", "7.3."))
    assert [r.text for r in run] == ["", "", ""], "every reading is unsure"
    assert [r.text for r in unsure.follow_numbering(run)] == ["7.1", "7.2", "7.3"]
    # Readings that do not run in sequence stay unread.
    mixed = unsure.read(crops("7.1.", "4.4.", "9.3."))
    assert [r.text for r in unsure.follow_numbering(mixed)] == ["", "", ""]


def test_the_chain_keeps_a_weak_box_only_where_the_sequence_says_it_is_a_number(
    pipeline: Pipeline,
) -> None:
    threshold = pipeline.detector.score_threshold
    assert pipeline.reader.numbering.gaps.min_score < threshold, "the reference pack has gaps"

    def page(middle: str) -> tuple[list[int], list[Reading]]:
        dets = [
            Detection((100, 100 + 60 * k, 160, 130 + 60 * k), "number", score)
            for k, score in enumerate([0.97, threshold - 0.2, 0.95])
        ]
        readings = pipeline.reader.read(
            [as_crop(printed(t, size=24)) for t in ("12.4.", middle, "12.6.")]
        )
        return pipeline._page(dets, readings, threshold)

    kept, readings = page("12.5.")
    assert kept == [0, 1, 2] and [r.text for r in readings] == ["12.4", "12.5", "12.6"]
    # A weak box that reads as something else (a heading's number, a stray mark) goes.
    kept, readings = page("3.")
    assert kept == [0, 2] and [r.text for r in readings] == ["12.4", "12.6"]
    # Without the pack's threshold (no candidates asked for), every box is a region.
    assert pipeline._page(
        [Detection((0, 0, 9, 9), "number", 0.6)], pipeline.reader.read([printed("3.")]), None
    )[0] == [0]


def test_the_detector_hands_the_chain_candidates_down_to_the_gaps_score(
    pipeline: Pipeline,
) -> None:
    from workers.training.synth import fonts, render_page

    image = render_page(90_000_003, fonts("heldout")).image
    detected = pipeline.detect([image])
    assert detected.threshold == pipeline.detector.score_threshold
    scores = [d.score for d in detected.detections[0]]
    assert min(scores) >= pipeline.reader.numbering.gaps.min_score
    strict = [d.score for d in pipeline.detector.detect([image])[0]]
    assert strict == [s for s in scores if s >= detected.threshold]


def test_bad_numbering_settings_are_a_pack_error(pack_copy: Path) -> None:
    bad = [
        {"min_probability": 0},
        {"min_probability": 1.5},
        {"min_p": 0.1},
        0.05,
        {"runs": {"radius": 0}},
        {"runs": {"radius": 2, "votes": 6}},
        {"runs": {"votes": 2.5}},
        {"runs": {"min_probability": 2}},
        {"runs": {"radius": 3, "window": 1}},
        {"gaps": {"min_score": 0}},
        {"gaps": {"min_probability": "high"}},
        {"gaps": []},
    ]
    assert_each_is_a_pack_error(pack_copy, "numbering", bad)
    with pytest.raises(PackError, match="numbering"):
        load_reader({"backend": "tesserocr", "numbering": {}}, None, None)
    # A check the manifest leaves out is off; what `workers.training pack` writes reads back.
    assert Numbering.from_config({}) == Numbering(runs=None, gaps=None)
    assert Numbering.from_config(asdict(Numbering())) == Numbering()
