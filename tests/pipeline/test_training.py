"""Pieces of the detector's training: crops on hard negatives, and mining them with the
reference pack's own detector."""

from __future__ import annotations

import random

import numpy as np
import torch

from workers.pipeline.detect import resize_long_side
from workers.pipeline.nets import fasterrcnn_tiny
from workers.pipeline.pack import ModelPack
from workers.training.synth import fonts, render_page
from workers.training.train_detector import mine_false_positives, random_crop


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
