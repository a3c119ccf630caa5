"""The reference pack's own number reader (the ``ctc`` OCR backend) and its training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from tests.pipeline.test_stages import printed
from workers.pipeline import Pipeline
from workers.pipeline.nets import LineReader, ReaderEnsemble
from workers.pipeline.ocr import CtcReader, SecondLook, _stretched, load_reader
from workers.pipeline.pack import ModelPack, PackError, sha256_of


@pytest.fixture(scope="module")
def reader(pipeline: Pipeline) -> CtcReader:
    assert isinstance(pipeline.reader, CtcReader), "the reference pack reads with its own reader"
    return pipeline.reader


def as_crop(image: Image.Image, height: int = 36) -> Image.Image:
    return image.resize((round(image.width * height / image.height), height), Image.BICUBIC)


@pytest.mark.parametrize(
    "font", ["DejaVuSerif-Bold.ttf", "DejaVuSans.ttf", "LiberationSerif-Regular.ttf"]
)
def test_it_reads_problem_numbers_and_leaves_out_the_marks_around_them(reader, font) -> None:
    texts = ["3.14.", "12.7*.", "215.", "1.2", "4.3.17)", "908"]
    readings = reader.read([as_crop(printed(t, size=30, name=font)) for t in texts])
    assert [r.text for r in readings] == ["3.14", "12.7", "215", "1.2", "4.3.17", "908"]
    assert all(0 < r.confidence <= 100 for r in readings)


def test_what_it_reads_in_a_crop_does_not_depend_on_the_rest_of_the_batch(reader) -> None:
    short = as_crop(printed("7.25."))
    others = [as_crop(printed("3.14.15.92.65.35.89.79.")), as_crop(printed("1."))]
    [alone] = reader.read([short])
    batched = reader.read([others[0], short, others[1]])
    assert batched[1].text == alone.text == "7.25"
    assert batched[1].confidence == pytest.approx(alone.confidence, abs=0.01)
    # And at the level of the network's output, column by column.
    a = reader.prepare(short)
    wide = np.zeros((1, 1, a.shape[0], a.shape[1] + 400), np.float32)
    wide[0, 0, :, : a.shape[1]] = a
    tight = wide[:, :, :, : a.shape[1] + reader.margin]
    with torch.inference_mode():
        columns = -(-a.shape[1] // reader.STRIDE)
        x = reader.module(torch.from_numpy(wide))[0, :columns]
        y = reader.module(torch.from_numpy(np.ascontiguousarray(tight)))[0, :columns]
    assert torch.allclose(x, y, atol=1e-4)


def test_it_reads_nothing_in_a_blank_crop_and_rarely_anything_in_noise(reader) -> None:
    [blank] = reader.read([Image.new("L", (90, 36), 235)])
    assert blank.text == "" and blank.confidence == 0.0
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (36, 90), np.uint8)) for _ in range(40)]
    read = [r.text for r in reader.read(noise) if r.text]
    assert len(read) <= 2, read


def test_a_reading_less_sure_than_the_pack_asks_is_no_text(reader) -> None:
    crop = as_crop(printed("3.14."))
    [sure] = reader.read([crop])
    assert sure.text == "3.14"
    strict = CtcReader(
        reader.module, reader.alphabet, replace(reader.settings, min_confidence=100.1), "cpu"
    )
    [refused] = strict.read([crop])
    assert refused.text == "" and refused.confidence == 0.0 and refused.raw == "3.14"


def test_an_unsure_reading_is_kept_when_the_stretched_crop_reads_the_same(reader) -> None:
    assert reader.second_look is not None, "the reference pack looks twice"
    crop = as_crop(printed("3.14."))
    # Every first reading unsure (threshold above 100): only the second look can keep it.
    settings = replace(reader.settings, min_confidence=100.1)
    look = SecondLook(stretch=(0.85, 1.15), agree=2, min_confidence=0.0)
    looking = CtcReader(reader.module, reader.alphabet, settings, "cpu", look)
    batches: list[int] = []
    hook = reader.module.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    try:
        [kept] = looking.read([crop])
        [sure] = reader.read([crop])
    finally:
        hook.remove()
    # The unsure crop is read again stretched twice, in one pass; a sure one is not.
    assert batches == [1, 2, 1]
    assert kept.text == sure.text == "3.14"
    plain = CtcReader(reader.module, reader.alphabet, replace(settings, min_confidence=0), "cpu")
    stretched = [_stretched(crop, f) for f in look.stretch]
    assert sorted(s.width for s in stretched) == [
        round(crop.width * 0.85),
        round(crop.width * 1.15),
    ]
    readings = plain.read([crop, *stretched])
    assert kept.confidence == max(r.confidence for r in readings if r.text == "3.14")

    # Readings that agree but are not sure enough: no text.
    strict = CtcReader(
        reader.module, reader.alphabet, settings, "cpu", SecondLook(min_confidence=100)
    )
    [refused] = strict.read([crop])
    assert refused.text == "" and refused.confidence == 0.0 and refused.raw == "3.14"


def test_a_batch_with_sure_and_unsure_crops_reads_as_each_crop_alone(reader) -> None:
    # Crops of different widths, some blurred: with the threshold at their median
    # confidence, some are sure and some go to the second look; each answer must be the
    # crop's own whatever its place in the batch.
    texts = ["3.14.", "215.", "12.7*.", "4.3.17)", "908", "1.2", "27.56.", "6"]
    crops = [as_crop(printed(t, size=16 + 3 * k)) for k, t in enumerate(texts)]
    crops = [c.filter(ImageFilter.GaussianBlur(1.6)) if k % 2 else c for k, c in enumerate(crops)]
    plain = CtcReader(
        reader.module, reader.alphabet, replace(reader.settings, min_confidence=0), "cpu"
    )
    confidences = sorted(r.confidence for r in plain.read(crops))
    threshold = (confidences[3] + confidences[4]) / 2
    look = SecondLook(stretch=(0.85, 1.15), agree=2, min_confidence=0.0)
    looking = CtcReader(
        reader.module, reader.alphabet, replace(reader.settings, min_confidence=threshold),
        "cpu", look,
    )  # fmt: skip
    together = looking.read(crops)
    alone = [looking.read([c])[0] for c in crops]
    assert together == alone
    assert any(r.text and r.confidence < threshold for r in together), "none kept"


def test_a_second_look_does_not_make_numbers_out_of_noise(reader) -> None:
    # The pack's own settings: the votes must be sure enough, not just agree.
    assert reader.second_look is not None
    rng = np.random.default_rng(1)
    noise = [Image.fromarray(rng.integers(0, 255, (36, 90), np.uint8)) for _ in range(60)]
    once = CtcReader(reader.module, reader.alphabet, reader.settings, "cpu")
    with_look = [r.text for r in reader.read(noise) if r.text]
    without = [r.text for r in once.read(noise) if r.text]
    assert len(with_look) <= len(without) + 1, (with_look, without)


def test_a_second_look_with_impossible_settings_is_a_pack_error(pack_copy: Path) -> None:
    bad = [
        {"stretch": [], "agree": 2},
        {"stretch": [0.1], "agree": 2},
        {"stretch": 0.9, "agree": 2},
        {"stretch": [0.9, 1.1], "agree": 4},
        {"stretch": [0.9], "agree": 1},
        {"stretch": [0.9], "agree": 2, "min_confidence": 101},
        [0.9, 1.1],
    ]
    assert_each_is_a_pack_error(pack_copy, "second_look", bad)
    # Only the pack's own reader looks twice; Tesseract packs may not ask for it.
    with pytest.raises(PackError, match="second_look"):
        load_reader({"backend": "tesserocr", "second_look": {}}, None, None)


def assert_each_is_a_pack_error(pack_copy: Path, setting: str, values: list) -> None:
    """Each value as the pack's ``ocr.<setting>`` makes loading the reader a PackError
    that names the setting."""
    for value in values:
        manifest = json.loads((pack_copy / "manifest.json").read_text())
        manifest["ocr"][setting] = value
        (pack_copy / "manifest.json").write_text(json.dumps(manifest))
        pack = ModelPack.load(pack_copy)
        with pytest.raises(PackError, match=setting):
            load_reader(pack.ocr, pack, None)


def test_it_reads_crops_of_any_size(reader) -> None:
    sizes = [(1, 1), (1, 36), (600, 36), (5, 200), (40, 10)]
    readings = reader.read([Image.new("L", s, 200) for s in sizes])
    assert len(readings) == len(sizes)


def with_readers(pack_copy: Path, readers: dict[str, dict]) -> CtcReader:
    """The pack copy reading with these weights (file name: state dict) as one ensemble."""
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    for name, state in readers.items():
        if name != "reader.pt":
            torch.save(state, pack_copy / name)
        manifest["files"][name] = sha256_of(pack_copy / name)
    manifest["ocr"]["file"] = list(readers)
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    pack = ModelPack.load(pack_copy)
    reader = load_reader(pack.ocr, pack, None)
    assert isinstance(reader, CtcReader)
    return reader


def test_readers_listed_together_read_with_the_mean_of_their_probabilities(
    reader, pack_copy: Path
) -> None:
    shipped = torch.load(pack_copy / "reader.pt", weights_only=True)
    torch.manual_seed(0)
    other = {
        k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() and "running" not in k else v
        for k, v in shipped.items()
    }
    ensemble = with_readers(pack_copy, {"reader.pt": shipped, "other.pt": other})

    def alone(state: dict) -> CtcReader:
        module = LineReader()
        module.load_state_dict(state)
        return CtcReader(module.eval(), reader.alphabet, reader.settings, reader.device)

    crops = [as_crop(printed(t)) for t in ["3.14.", "215.", "12.7*."]]
    together = ensemble.read(crops)
    first, second = alone(shipped).read(crops), alone(other).read(crops)
    for t, a, b in zip(together, first, second, strict=True):
        assert a.columns is not None and b.columns is not None and t.columns is not None
        assert not np.allclose(a.columns, b.columns, atol=1e-3)  # two different readers
        np.testing.assert_allclose(t.columns, (a.columns + b.columns) / 2, atol=1e-5)
    # A reader listed twice reads exactly as it does alone.
    twice = with_readers(pack_copy, {"reader.pt": shipped, "again.pt": shipped})
    for a, b in zip(CtcReader(twice.module, reader.alphabet, reader.settings, reader.device)
                    .read(crops), first, strict=True):  # fmt: skip
        assert (a.text, a.confidence) == (b.text, b.confidence)
        np.testing.assert_allclose(a.columns, b.columns, atol=1e-6)


def test_an_ensemble_of_readers_that_do_not_fit_is_a_pack_error(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    for files, message in [
        (["reader.pt", "absent.pt"], "absent.pt"),  # used but not listed in 'files'
        ([], "ocr 'file'"),
        (["reader.pt", 3], "ocr 'file'"),
    ]:
        manifest["ocr"]["file"] = files
        (pack_copy / "manifest.json").write_text(json.dumps(manifest))
        pack = ModelPack.load(pack_copy)
        with pytest.raises(PackError, match=message):
            load_reader(pack.ocr, pack, None)
    with pytest.raises(ValueError, match="heights"):
        ReaderEnsemble([LineReader(), LineReader(height=24)])
    torch.save(LineReader(height=24).state_dict(), pack_copy / "short.pt")
    manifest["files"]["short.pt"] = sha256_of(pack_copy / "short.pt")
    manifest["ocr"]["file"] = ["reader.pt", "short.pt"]
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    pack = ModelPack.load(pack_copy)
    with pytest.raises(PackError, match="short.pt"):
        load_reader(pack.ocr, pack, None)


def test_a_ctc_pack_must_name_its_alphabet(pack_copy: Path) -> None:
    manifest = json.loads((pack_copy / "manifest.json").read_text())
    manifest["ocr"].pop("alphabet")
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="alphabet"):
        load_reader(ModelPack.load(pack_copy).ocr, ModelPack.load(pack_copy), None)


def test_training_the_reader_lowers_its_loss_and_writes_weights_the_pack_loads(
    tmp_path: Path,
) -> None:
    from workers.training.dataset import generate
    from workers.training.train_reader import ALPHABET, train

    data = generate(tmp_path / "data", "train", pages=4, negatives=0, workers=1)
    out = tmp_path / "reader.pt"
    stats = train(data, out, steps=40, batch=16, copies=2, workers=1, log_every=20)
    assert stats["crops"] > 20
    assert stats["loss_last"] < stats["loss_first"]
    model = LineReader(num_classes=len(ALPHABET) + 1)
    model.load_state_dict(torch.load(out, weights_only=True))
