"""Train the line reader (``nets.LineReader``) on crops of rendered page photos.

The crops are cut exactly as the worker cuts them (``Cropper`` with the reference
pack's settings) from the training photos, around each number's true box moved and
resized at random the way a detector's boxes err, several times per number. The
target is the number itself ("12.7" for a printed "12.7*."), so the network learns
to leave out the marks and the final point around it.

With ``negative_share`` above 0, that share of every batch are crops with no number
in them, whose target is no text: words set in the training fonts and patches of the
negative photographs. It is off in the reference pack: a reader trained with 10 % of
them read no words as numbers, but had learnt that a round "o" is nothing and dropped
zeros ("100" read "10"); letters shaped like digits need leaving out of those words
first (docs/models.md).
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from workers.pipeline.crop import Cropper
from workers.pipeline.nets import LineReader
from workers.pipeline.ocr import CtcReader, ctc_greedy, pad_batch, prepare_crop
from workers.training.dataset import read_labels

ALPHABET = "0123456789."
CROP = {"pad_x": 0.25, "pad_y": 0.2, "deskew": True, "height": 36, "max_width": 600}
STRIDE = CtcReader.STRIDE
MARGIN = LineReader.RECEPTIVE_FIELD // 2


def _jitter(box: tuple[float, ...], rng: random.Random) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    h = y1 - y0
    return (
        x0 + rng.gauss(0, 0.12) * h,
        y0 + rng.gauss(0, 0.08) * h,
        x1 + rng.gauss(0, 0.12) * h,
        y1 + rng.gauss(0, 0.08) * h,
    )


def _crops_of_page(job: tuple[str, str, list, int, int]) -> list[tuple[np.ndarray, str]]:
    from PIL import Image

    data_dir, file, numbers, copies, seed = job
    rng = random.Random(seed)
    cropper = Cropper.from_config(CROP)
    with Image.open(Path(data_dir) / file) as im:
        gray = im.convert("L")
    out = []
    for box, text in numbers:
        for copy in range(copies):
            b = box if copy == 0 else _jitter(box, rng)
            if b[2] - b[0] < 2 or b[3] - b[1] < 2:
                continue
            out.append((np.asarray(cropper.crop_one(gray, b), np.uint8), text))
    return out


def cut_crops(data_dir: Path, copies: int, workers: int) -> list[list[tuple[np.ndarray, str]]]:
    """Every page's crops, page by page."""
    labels = read_labels(data_dir)
    jobs = [
        (str(data_dir), lab.file, [(tuple(b), t) for b, t in lab.numbers], copies, lab.seed)
        for lab in labels
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_crops_of_page, jobs, chunksize=8))


def negative_crop(rng: random.Random) -> np.ndarray:
    """A crop with no digit in it, as the crop stage would hand it over (36 px high)."""
    from PIL import Image, ImageDraw, ImageFilter

    from workers.training import synth

    height = CROP["height"]
    kind = rng.random()
    if kind < 0.6:  # a word or two in a training font, on paper
        face = rng.choice(synth.fonts("train").faces)
        size = rng.randint(14, 40)
        font = synth._font(rng.choice([face.regular, face.bold]), size)
        text = " ".join(rng.choice(synth.WORDS) for _ in range(rng.choice([1, 1, 2])))
        if rng.random() < 0.3:
            text = text[: rng.randint(1, 3)]
        x0, y0, x1, y1 = font.getbbox(text)
        pad = int(size * rng.uniform(0.1, 0.4))
        paper, ink = rng.randint(150, 250), rng.randint(0, 90)
        im = Image.new("L", (max(4, x1 - x0 + 2 * pad), max(4, y1 - y0 + 2 * pad)), paper)
        ImageDraw.Draw(im).text((pad - x0, pad - y0), text, font=font, fill=ink)
        if rng.random() < 0.5:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    else:  # a patch of a photograph, or of a rendered background
        photo = rng.choice(synth._photos())
        ph, pw = photo.shape[:2]
        h = rng.randint(12, min(120, ph))
        w = min(pw, int(h * rng.uniform(0.8, 6)))
        y, x = rng.randint(0, ph - h), rng.randint(0, pw - w)
        patch = photo[y : y + h, x : x + w]
        im = Image.fromarray(patch.astype(np.uint8)).convert("L")
    width = max(4, min(CROP["max_width"], round(im.width * height / im.height)))
    return np.asarray(im.resize((width, height), Image.BILINEAR), np.uint8)


def _augment(crop: np.ndarray, rng: random.Random, heavy_blur: float = 0.0) -> np.ndarray:
    """More variety than the renderer gives, towards typefaces and photos it never drew:
    width, slant, stroke weight, height and position in the line, a page photographed
    small (down and up again), blur, contrast, noise and JPEG. With `heavy_blur`, that
    share of the crops is blurred again, harder (sigma 1–2.5 crop pixels), like a photo
    taken out of focus; at 0 the random draws are exactly those of the recipe before it."""
    h, w = crop.shape
    paper = int(np.median(crop))
    if rng.random() < 0.5:
        w = max(4, round(w * rng.uniform(0.8, 1.2)))
        crop = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:  # slant, as italic or a sheared photo
        shear = rng.uniform(-0.25, 0.25)
        m = np.float32([[1, shear, -shear * h / 2], [0, 1, 0]])
        crop = cv2.warpAffine(crop, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=paper)
    if rng.random() < 0.3:  # the glyphs smaller or larger in the line, moved up or down
        scale = rng.uniform(0.8, 1.1)
        dy = rng.uniform(-0.08, 0.08) * h
        m = np.float32([[scale, 0, (1 - scale) * w / 2], [0, scale, (1 - scale) * h / 2 + dy]])
        crop = cv2.warpAffine(crop, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=paper)
    if rng.random() < 0.2:  # heavier or lighter strokes (dark ink on light paper)
        kernel = np.ones((2, 2), np.uint8)
        crop = cv2.erode(crop, kernel) if rng.random() < 0.5 else cv2.dilate(crop, kernel)
    if rng.random() < 0.25:  # a page photographed small: down and up, linear both ways
        f = rng.uniform(0.35, 0.7)
        small = cv2.resize(
            crop, (max(2, round(w * f)), max(2, round(h * f))), interpolation=cv2.INTER_LINEAR
        )
        crop = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.25:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(0.4, 1.4))
    if heavy_blur and rng.random() < heavy_blur:
        crop = cv2.GaussianBlur(crop, (0, 0), rng.uniform(1.0, 2.5))
    if rng.random() < 0.3:
        lo, hi = rng.uniform(0, 80), rng.uniform(170, 255)
        crop = (lo + crop.astype(np.float32) * (hi - lo) / 255).astype(np.uint8)
    if rng.random() < 0.2:
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(3, 12), crop.shape)
        crop = np.clip(crop + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.2:
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(25, 80)])
        if ok:
            crop = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    return crop


def _batch(
    items: list[tuple[np.ndarray, str]], rng: random.Random | None, heavy_blur: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from PIL import Image

    arrays = []
    for crop, _ in items:
        if rng is not None:
            crop = _augment(crop, rng, heavy_blur)
        arrays.append(prepare_crop(Image.fromarray(crop), CROP["height"]))
    batch, columns = pad_batch(arrays, MARGIN, STRIDE)
    lengths = torch.tensor(columns)
    targets = [
        torch.tensor([ALPHABET.index(c) + 1 for c in text], dtype=torch.long) for _, text in items
    ]
    return (
        torch.from_numpy(batch),
        lengths,
        torch.cat(targets),
        torch.tensor([len(t) for t in targets]),
    )


def greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    probs = logits.softmax(-1).numpy()
    return [ctc_greedy(probs[i, : int(n)], ALPHABET)[0] for i, n in enumerate(lengths)]


def train(
    data_dir: Path,
    out: Path,
    steps: int = 6000,
    batch: int = 64,
    copies: int = 3,
    seed: int = 0,
    workers: int = 0,
    log_every: int = 250,
    negative_share: float = 0.0,
    init: Path | None = None,
    lr: float = 2e-3,
    heavy_blur: float = 0.0,
) -> dict:
    import os

    random.seed(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    pages = cut_crops(data_dir, copies, workers or os.cpu_count() or 1)
    cut_s = time.perf_counter() - t0
    rng = random.Random(seed)

    def usable(crops: list[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
        return [(c, t) for c, t in crops if t and all(ch in ALPHABET for ch in t)]

    # Every 20th page is kept back to watch the training; its crops are never trained on.
    train_set = [c for i, page in enumerate(pages) if i % 20 for c in usable(page)]
    val = [c for i, page in enumerate(pages) if i % 20 == 0 for c in usable(page)]
    crops = train_set + val
    print(f"cut {len(crops)} crops in {cut_s:.0f} s; {len(train_set)} train, {len(val)} val")

    model = LineReader(num_classes=len(ALPHABET) + 1, height=CROP["height"])
    if init is not None:  # fine-tune: start from these weights
        model.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
        print(f"from {init}: val exact {evaluate(model, val[:1000]):.4f}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    ctc = nn.CTCLoss(blank=0, zero_infinity=True)
    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        negatives = (
            sum(rng.random() < negative_share for _ in range(batch)) if negative_share else 0
        )
        items = rng.sample(train_set, batch - negatives)
        items += [(negative_crop(rng), "") for _ in range(negatives)]
        x, lengths, targets, target_lengths = _batch(items, rng, heavy_blur)
        logits = model(x)
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # T, N, C
        loss = ctc(log_probs, targets, lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            rate = step / (time.perf_counter() - t1)
            acc = evaluate(model, val[:1000])
            print(
                f"step {step}/{steps} loss {np.mean(losses[-log_every:]):.4f} "
                f"val exact {acc:.4f} ({rate:.1f} steps/s)",
                flush=True,
            )
    model.eval()
    accuracy = evaluate(model, val)
    nrng = random.Random(seed + 1)
    quiet = evaluate(model, [(negative_crop(nrng), "") for _ in range(500)])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    return {
        "crops": len(crops),
        "val_crops": len(val),
        "val_exact": round(accuracy, 4),
        "val_negatives_read_as_nothing": round(quiet, 4),
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_first": round(float(np.mean(losses[:10])), 4),
        "loss_last": round(float(np.mean(losses[-10:])), 4),
    }


def blend(first: Path, second: Path, share: float, out: Path) -> dict:
    """Two readers' weights averaged, ``(1 - share) * first + share * second``: a reader
    and one fine-tuned from it, blended, can keep what the fine-tune learnt and what it
    forgot (weight-space ensembling; docs/models.md). Counters are the first's."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be from 0 to 1, not {share}")
    a = torch.load(first, map_location="cpu", weights_only=True)
    b = torch.load(second, map_location="cpu", weights_only=True)
    if a.keys() != b.keys():
        raise ValueError(f"{first} and {second} are not the same network: their layers differ")
    for name, tensor in a.items():
        if tensor.shape != b[name].shape:
            raise ValueError(
                f"{first} and {second} are not the same network: {name} is "
                f"{tuple(tensor.shape)} in one, {tuple(b[name].shape)} in the other"
            )
    blended = {
        name: torch.lerp(tensor, b[name], share) if tensor.is_floating_point() else tensor
        for name, tensor in a.items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blended, out)
    return {"first": str(first), "second": str(second), "share": share, "out": str(out)}


def evaluate(model: nn.Module, items: list[tuple[np.ndarray, str]]) -> float:
    model.eval()
    right = 0
    with torch.inference_mode():
        for start in range(0, len(items), 128):
            part = items[start : start + 128]
            x, lengths, _, _ = _batch(part, None)
            texts = greedy(model(x), lengths)
            right += sum(t == want for t, (_, want) in zip(texts, part, strict=True))
    return right / max(1, len(items))
