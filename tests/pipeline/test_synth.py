"""The page renderer that trains and evaluates the reference pack."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from workers.training.synth import (
    HELDOUT_FACES,
    LOOKALIKES,
    fonts,
    render_negative,
    render_page,
)


def test_it_renders_the_same_page_for_the_same_seed() -> None:
    a, b = render_page(7, fonts("train")), render_page(7, fonts("train"))
    assert a.numbers == b.numbers
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert render_page(8, fonts("train")).numbers != a.numbers


def test_it_labels_numbers_inside_the_photo_in_canonical_form() -> None:
    for seed in range(5):
        page = render_page(seed, fonts("heldout"))
        assert page.image.mode == "RGB" and page.numbers
        for (x0, y0, x1, y1), text in page.numbers:
            assert 0 <= x0 < x1 <= page.image.width and 0 <= y0 < y1 <= page.image.height
            assert re.fullmatch(r"\d+(\.\d+)*", text), text


def test_it_keeps_training_and_held_out_fonts_apart() -> None:
    train, heldout = fonts("train").faces, fonts("heldout").faces
    assert train and heldout
    assert not {f.regular for f in train} & {f.regular for f in heldout}
    assert any(f.oldstyle for f in heldout), "held-out fonts must include old-style figures"


def test_the_held_out_faces_are_the_named_files_and_training_never_sees_them() -> None:
    # Every installed family the held-out set does not name is for training, so installing
    # more fonts never changes the held-out photos.
    heldout = {Path(f.regular).name for f in fonts("heldout").faces}
    assert heldout == {regular for regular, _ in HELDOUT_FACES.values()}
    training = fonts("train").faces
    assert len(training) > len(HELDOUT_FACES)
    names = {Path(p).name for f in training for p in (f.regular, f.bold)}
    assert not names & {name for files in HELDOUT_FACES.values() for name in files}
    assert not any(f.startswith(LOOKALIKES) for f in names), "a look-alike of a held-out face"
    # Nor a face that draws every glyph in a key cap (Linux Biolinum Keyboard O).
    assert "LinBiolinum_K.otf" not in names


def test_it_renders_negatives_of_varied_sizes() -> None:
    images = [render_negative(seed) for seed in range(6)]
    assert all(im.mode == "RGB" and min(im.size) >= 100 for im in images)
    assert len({im.size for im in images}) > 1
    assert np.array_equal(np.asarray(render_negative(3)), np.asarray(images[3]))
