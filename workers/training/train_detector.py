"""Train the problem-number detector (Faster R-CNN, ``fasterrcnn_tiny``) from scratch.

Pages are shrunk once to the detector's working size (long side ``image_size``, as
at run time) and training runs on random square crops of them at random zoom, so
a CPU gets through many more examples than it would on whole pages.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from workers.pipeline.detect import resize_long_side
from workers.pipeline.nets import fasterrcnn_tiny
from workers.training.dataset import negative_files, read_labels

CLASSES = ["__background__", "number"]


def load_pages(
    data_dir: Path, image_size: int, negatives: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 CHW image, boxes) at the detector's working scale."""
    items = []
    for label in read_labels(data_dir):
        with Image.open(data_dir / label.file) as im:
            small, scale = resize_long_side(im.convert("RGB"), image_size)
        boxes = torch.tensor([b for b, _ in label.numbers], dtype=torch.float32).reshape(-1, 4)
        items.append((torch.from_numpy(np.array(small)).permute(2, 0, 1), boxes * scale))
    for name in negative_files(data_dir)[:negatives]:
        with Image.open(data_dir / name) as im:
            small, _ = resize_long_side(im.convert("RGB"), image_size)
        items.append((torch.from_numpy(np.array(small)).permute(2, 0, 1), torch.zeros(0, 4)))
    return items


def random_crop(
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
    rng: random.Random,
    hard: torch.Tensor | None = None,
    hard_share: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size view at a random zoom; boxes cut by the edge are dropped. With
    `hard` (boxes where an earlier model saw a number that is not one), `hard_share` of
    the views are placed on one of them."""
    zoom = math.exp(rng.uniform(math.log(0.75), math.log(1.35)))
    _, h, w = image.shape
    src = max(8, round(size / zoom))
    x0 = rng.randint(0, max(0, w - src))
    y0 = rng.randint(0, max(0, h - src))
    focus = None
    if hard is not None and len(hard) and rng.random() < hard_share:
        focus = hard[rng.randrange(len(hard))]
    # Favour crops with numbers in them: most pages have few, in the left of a column.
    elif len(boxes) and rng.random() < 0.7:
        focus = boxes[rng.randrange(len(boxes))]
    if focus is not None:
        bx0, by0, bx1, by1 = focus.tolist()
        x0 = int(min(max(0, bx1 - rng.uniform(0.1, 0.9) * src), max(0, w - src)))
        y0 = int(min(max(0, by1 - rng.uniform(0.1, 0.9) * src), max(0, h - src)))
    crop = image[:, y0 : y0 + src, x0 : x0 + src].float() / 255.0
    ch, cw = crop.shape[1:]
    scale = size / src
    crop = F.interpolate(
        crop[None],
        size=(max(1, round(ch * scale)), max(1, round(cw * scale))),
        mode="bilinear",
        align_corners=False,
        antialias=zoom < 1,
    )[0]
    if len(boxes):
        b = boxes.clone()
        b[:, 0::2] -= x0
        b[:, 1::2] -= y0
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b[:, 0::2] = b[:, 0::2].clamp(0, cw)
        b[:, 1::2] = b[:, 1::2].clamp(0, ch)
        kept = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b = b[kept >= 0.8 * area.clamp(min=1e-6)] * scale
    else:
        b = boxes
    # Light, contrast and colour: the renderer already varies them; this adds more.
    gain = rng.uniform(0.75, 1.2)
    crop = ((crop - 0.5) * rng.uniform(0.7, 1.3) + 0.5) * gain
    if rng.random() < 0.2:
        crop = crop.mean(dim=0, keepdim=True).expand(3, -1, -1)
    return crop.clamp(0, 1).contiguous(), b


def mine_false_positives(
    model: torch.nn.Module, items: list[tuple[torch.Tensor, torch.Tensor]], min_score: float
) -> list[torch.Tensor]:
    """Per image, the boxes `model` finds with at least `min_score` that overlap no true
    box (IoU < 0.3): on rendered pages, mostly section headings set like a number."""
    from torchvision.ops import box_iou

    model.eval()
    found = []
    with torch.inference_mode():
        for image, boxes in items:
            out = model([image.float() / 255.0])[0]
            keep = out["scores"] >= min_score
            pred = out["boxes"][keep]
            if len(pred) and len(boxes):
                pred = pred[box_iou(pred, boxes).max(dim=1).values < 0.3]
            found.append(pred)
    model.train()
    return found


def train(
    data_dir: Path,
    out_file: Path,
    *,
    image_size: int = 800,
    crop: int = 384,
    iterations: int = 3000,
    batch: int = 8,
    lr: float = 2e-3,
    negatives: int = 200,
    seed: int = 0,
    init: Path | None = None,
    hard_share: float = 0.0,
    log=partial(print, flush=True),
) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    items = load_pages(data_dir, image_size, negatives)
    log(f"detector: {len(items)} images at long side {image_size}, crops {crop}")
    model = fasterrcnn_tiny(num_classes=len(CLASSES), image_size=image_size)
    if init is not None:  # go on from trained weights (fine-tuning) instead of from scratch
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    hard: Sequence[torch.Tensor | None] = [None] * len(items)
    if hard_share and init is not None:
        # Working scale for the whole page, as the chain runs it.
        model.transform.min_size = (image_size,)
        model.transform.max_size = image_size
        hard = mined = mine_false_positives(model, items, min_score=0.3)
        log(
            f"detector: {sum(len(h) for h in mined)} false positives of the initial weights "
            f"on {sum(1 for h in mined if len(h))} images; {hard_share:.0%} of the crops of "
            "those images are placed on them"
        )
    model.transform.min_size = (crop,)
    model.transform.max_size = crop
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(300, iterations // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, iterations - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    running: dict[str, float] = {}
    for step in range(iterations):
        images, targets = [], []
        for _ in range(batch):
            index = rng.randrange(len(items))
            image, boxes = items[index]
            im, b = random_crop(image, boxes, crop, rng, hard[index], hard_share)
            images.append(im)
            targets.append({"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)})
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        for k, v in losses.items():
            running[k] = 0.98 * running.get(k, float(v)) + 0.02 * float(v)
        if (step + 1) % 50 == 0 or step == 0:
            parts = ", ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in running.items())
            rate = (step + 1) / (time.perf_counter() - t0)
            log(f"  step {step + 1}/{iterations}: {parts} ({rate:.2f} it/s)")
    model.eval()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_file)
    return {
        "images": len(items),
        "iterations": iterations,
        "batch": batch,
        "crop": crop,
        "init": str(init) if init else None,
        "hard_share": hard_share,
        "seconds": round(time.perf_counter() - t0, 1),
    }
