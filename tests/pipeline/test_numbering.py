"""Problem numbers in sequence: an unsure reading checked against what its neighbours
expect (workers/pipeline/numbering.py and CtcReader.follow_numbering)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from tests.pipeline.test_reader import as_crop, assert_each_is_a_pack_error
from tests.pipeline.test_stages import printed
from workers.pipeline import Pipeline
from workers.pipeline.numbering import Numbering, expected, follow
from workers.pipeline.ocr import CtcReader, Reading, ctc_probability, load_reader
from workers.pipeline.pack import PackError


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


def test_bad_numbering_settings_are_a_pack_error(pack_copy: Path) -> None:
    bad = [{"min_probability": 0}, {"min_probability": 1.5}, {"min_p": 0.1}, 0.05]
    assert_each_is_a_pack_error(pack_copy, "numbering", bad)
    with pytest.raises(PackError, match="numbering"):
        load_reader({"backend": "tesserocr", "numbering": {}}, None, None)
    assert Numbering.from_config({}) == Numbering()
