"""Rendered data sets on disk: pages with their numbers, and negatives.

    DIR/pages/000000.jpg ...     photos of problem-book pages
    DIR/negatives/000000.jpg ... anything else
    DIR/labels.jsonl             one line per page: file, seed, numbers [{box, text}]
    DIR/info.json                how it was made (split, seeds, fonts)

Rendering is deterministic in the seed, so a set is remade exactly from its info.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Seeds are drawn from disjoint ranges, so no held-out photo was ever trained on.
# "val" is for choosing a pack's thresholds: pages no model was trained on, in the
# training fonts, so that "heldout" (other seeds, other fonts) is only ever measured.
SEED_BASE = {"train": 0, "val": 20_000_000, "heldout": 50_000_000}
FONTS_OF = {"train": "train", "val": "train", "heldout": "heldout"}
NEGATIVE_OFFSET = 1_000_000


@dataclass(frozen=True)
class PageLabel:
    file: str
    seed: int
    numbers: list[tuple[tuple[float, float, float, float], str]]
    blur: float | None = None  # the photo's blur (sigma, pixels), where the set records it
    font: str | None = None  # the typeface's file, where the set records it


def _render_page(job: tuple[str, int, str]) -> dict:
    from workers.training.synth import fonts, render_page

    out_dir, seed, split = job
    sample = render_page(seed, fonts(FONTS_OF[split]))
    name = f"pages/{seed:09d}.jpg"
    sample.image.save(Path(out_dir) / name, quality=92)
    return {
        "file": name,
        "seed": seed,
        "numbers": [{"box": [round(v, 2) for v in box], "text": t} for box, t in sample.numbers],
        "blur": sample.blur,
        "font": sample.font,
    }


def _render_negative(job: tuple[str, int]) -> str:
    from workers.training.synth import render_negative

    out_dir, seed = job
    name = f"negatives/{seed:09d}.jpg"
    render_negative(seed).save(Path(out_dir) / name, quality=92)
    return name


def generate(out_dir: Path, split: str, pages: int, negatives: int, workers: int = 0) -> Path:
    """Render ``pages`` page photos and ``negatives`` other photos for ``split``."""
    if split not in SEED_BASE:
        raise ValueError(f"split must be one of {sorted(SEED_BASE)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pages").mkdir(exist_ok=True)
    (out_dir / "negatives").mkdir(exist_ok=True)
    base = SEED_BASE[split]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        page_jobs = [(str(out_dir), base + i, split) for i in range(pages)]
        labels = list(pool.map(_render_page, page_jobs, chunksize=8))
        neg_jobs = [(str(out_dir), base + NEGATIVE_OFFSET + i) for i in range(negatives)]
        list(pool.map(_render_negative, neg_jobs, chunksize=8))
    with (out_dir / "labels.jsonl").open("w") as fh:
        for label in labels:
            fh.write(json.dumps(label) + "\n")
    info = {"split": split, "pages": pages, "negatives": negatives, "seed_base": base}
    (out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def read_labels(data_dir: Path) -> list[PageLabel]:
    labels = []
    with (data_dir / "labels.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            numbers = [(tuple(n["box"]), n["text"]) for n in row["numbers"]]
            labels.append(
                PageLabel(row["file"], row["seed"], numbers, row.get("blur"), row.get("font"))  # type: ignore[arg-type]
            )
    return labels


def negative_files(data_dir: Path) -> list[str]:
    return sorted(f"negatives/{p.name}" for p in (data_dir / "negatives").glob("*.jpg"))


def iter_images(data_dir: Path, files: list[str]) -> Iterator[Image.Image]:
    for name in files:
        with Image.open(data_dir / name) as im:
            yield im.convert("RGB")
