"""Pieces of the detector's training: crops on hard negatives, and mining them with the
reference pack's own detector."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from workers.pipeline import load_pipeline
from workers.pipeline.detect import resize_long_side
from workers.pipeline.nets import LineReader, ReaderEnsemble, fasterrcnn_tiny
from workers.pipeline.pack import ModelPack
from workers.training.__main__ import main
from workers.training.synth import fonts, render_page
from workers.training.train_detector import mine_false_positives, random_crop
from workers.training.train_reader import blend


def page_item(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    page = render_page(seed, fonts("train"))
    small, scale = resize_long_side(page.image, 800)
    boxes = torch.tensor([b for b, _ in page.numbers], dtype=torch.float32) * scale
    return torch.from_numpy(np.array(small)).permute(2, 0, 1), boxes


def test_a_hard_share_of_one_puts_every_crop_on_a_hard_box() -> None:
    image = torch.full((3, 800, 600), 255, dtype=torch.uint8)
    hard = torch.tensor([[500.0, 700.0, 560.0, 730.0]])
    rng = random.Random(0)
    for _ in range(20):
        # Paint the hard box black and find it in the crop: it must be in every one.
        marked = image.clone()
        marked[:, 700:730, 500:560] = 0
        crop, boxes = random_crop(marked, torch.zeros(0, 4), 384, rng, hard, hard_share=1.0)
        assert crop.shape[0] == 3 and len(boxes) == 0
        assert (crop.mean(dim=0) < 0.3).any(), "the hard box is not in the crop"


def test_it_mines_detections_that_match_no_true_box() -> None:
    pack = ModelPack.load()
    model = fasterrcnn_tiny(num_classes=2, image_size=800)
    weights = pack.path(pack.detect["file"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    image, boxes = page_item(11)

    [with_truth] = mine_false_positives(model, [(image, boxes)], min_score=0.3)
    [without_truth] = mine_false_positives(model, [(image, torch.zeros(0, 4))], min_score=0.3)

    # Told nothing, every number found is "false"; told the truth, the numbers drop out.
    assert len(without_truth) >= len(boxes) * 0.8
    assert len(with_truth) < len(without_truth)
    if len(with_truth):
        from torchvision.ops import box_iou

        assert box_iou(with_truth, boxes).max() < 0.3


def test_blending_two_readers_averages_their_weights(tmp_path) -> None:
    torch.manual_seed(0)
    first, second = LineReader(), LineReader()
    with torch.no_grad():
        for p in second.parameters():
            p.add_(torch.randn_like(p))
    second.features[0][1].num_batches_tracked.fill_(7)
    torch.save(first.state_dict(), tmp_path / "a.pt")
    torch.save(second.state_dict(), tmp_path / "b.pt")

    main(["blend-readers", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
          "--share", "0.25", "--out", str(tmp_path / "blend.pt")])  # fmt: skip

    blended = torch.load(tmp_path / "blend.pt", weights_only=True)
    a, b = first.state_dict(), second.state_dict()
    for name, tensor in blended.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.75 * a[name] + 0.25 * b[name])
        else:  # counters are the first's
            assert torch.equal(tensor, a[name]), name
    LineReader().load_state_dict(blended)  # a reader the chain can load


def test_blending_refuses_two_different_networks(tmp_path) -> None:
    torch.save(LineReader().state_dict(), tmp_path / "a.pt")
    torch.save(LineReader(width=8).state_dict(), tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"not the same network: features\.0\.0\.weight"):
        blend(tmp_path / "a.pt", tmp_path / "b.pt", 0.5, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="share must be from 0 to 1"):
        blend(tmp_path / "a.pt", tmp_path / "a.pt", 1.5, tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_a_pack_written_with_two_readers_reads_them_as_one(tmp_path) -> None:
    shipped = ModelPack.load()
    torch.manual_seed(1)
    torch.save(LineReader().state_dict(), tmp_path / "second.pt")
    out = tmp_path / "pack"
    main(["pack", "--classifier", str(shipped.path("classifier.pt")),
          "--detector", str(shipped.path("detector.pt")),
          "--reader", str(shipped.path(shipped.ocr["file"][0])),
          "--reader", str(tmp_path / "second.pt"),
          "--out", str(out), "--version", "9.9.9"])  # fmt: skip

    pack = ModelPack.load(out)  # every file checked against its sha256
    assert pack.ocr["file"] == ["reader.pt", "reader-2.pt"]
    assert set(pack.files) == {"classifier.pt", "detector.pt", "reader.pt", "reader-2.pt"}
    # The numbering's checks are the ones chosen for readers read together.
    assert pack.ocr["numbering"]["min_probability"] == 0.01
    assert pack.ocr["numbering"]["runs"]["min_probability"] == 0.02
    reader = load_pipeline(out, "cpu").reader
    assert isinstance(reader.module, ReaderEnsemble) and len(reader.module.members) == 2

    # Written in place, with the two readers swapped: each is read before either is replaced.
    before = dict(pack.files)
    main(["pack", "--classifier", str(out / "classifier.pt"),
          "--detector", str(out / "detector.pt"),
          "--reader", str(out / "reader-2.pt"), "--reader", str(out / "reader.pt"),
          "--out", str(out)])  # fmt: skip
    after = ModelPack.load(out).files
    assert after["reader.pt"] == before["reader-2.pt"]
    assert after["reader-2.pt"] == before["reader.pt"]
    assert not list(out.glob(".*.part"))

    main(["pack", "--classifier", str(shipped.path("classifier.pt")),
          "--detector", str(shipped.path("detector.pt")),
          "--reader", str(tmp_path / "second.pt"), "--out", str(tmp_path / "one")])  # fmt: skip
    one = ModelPack.load(tmp_path / "one")
    assert one.ocr["file"] == "reader.pt" and one.ocr["numbering"]["min_probability"] == 0.05
