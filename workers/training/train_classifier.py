"""Train the page-or-not classifier (ResNet-8) on rendered pages and negatives."""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from workers.pipeline.classify import MEAN, STD
from workers.pipeline.nets import ResNet8
from workers.training.dataset import negative_files, read_labels

CLASSES = ["page", "other"]


def load_squares(data_dir: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image squashed to size x size, as the classifier sees it at run time."""
    pages = [label.file for label in read_labels(data_dir)]
    negatives = negative_files(data_dir)
    arrays, targets = [], []
    for target, files in ((0, pages), (1, negatives)):
        for name in files:
            with Image.open(data_dir / name) as im:
                im = im.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=2.0)
                arrays.append(np.asarray(im, dtype=np.uint8))
                targets.append(target)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(targets, dtype=torch.long)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Zoom, shift, small rotation, flips and light changes, on a uint8 batch."""
    n = x.shape[0]
    x = x.float() / 255.0
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(30)
    zoom = 0.75 + torch.rand(n, generator=gen) * 0.35
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.3
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    flip = torch.rand(n, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    brightness = 0.6 + torch.rand(n, 1, 1, 1, generator=gen) * 0.8
    contrast = 0.6 + torch.rand(n, 1, 1, 1, generator=gen) * 0.8
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    gray = torch.rand(n, generator=gen) < 0.15
    x[gray] = x[gray].mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return x.clamp_(0, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train(
    data_dir: Path,
    out_file: Path,
    *,
    size: int = 192,
    epochs: int = 12,
    batch: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log=partial(print, flush=True),
) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x, y = load_squares(data_dir, size)
    log(f"classifier: {int((y == 0).sum())} pages, {int((y == 1).sum())} negatives")
    model = ResNet8(num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(len(y) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for k in range(0, len(y), batch):
            idx = order[k : k + batch]
            xb, yb = normalise(augment(x[idx], gen)), y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        log(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f}, acc {correct / total:.4f}")
    model.eval()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_file)
    return {"images": len(y), "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1)}
