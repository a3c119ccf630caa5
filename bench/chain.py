"""``python -m bench.chain``: the reading chain's speed on one machine, alone.

Renders held-out-style page photos at 1200x1600, runs them one at a time through
the chain (the worst case for a batching worker), and reports per-stage times,
OCR time per crop, and the process's peak resident memory. It also reads the same
crops with Tesseract, in-process (tesserocr) and as a program per crop (pytesseract),
so the pack's reader and both Tesseract backends are compared in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from workers.pipeline import load_pipeline
from workers.pipeline.ocr import OcrSettings, PytesseractReader, TesserocrReader
from workers.training.synth import fonts, render_page


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--pack")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="also write the report here as JSON")
    args = p.parse_args()

    pipeline = load_pipeline(args.pack, args.device)
    fontset = fonts("heldout")
    pages = [
        render_page(95_000_000 + k, fontset).image.resize((1200, 1600)) for k in range(args.images)
    ]
    pipeline.run([pages[0]])  # warm-up: first-call allocations, OCR engines
    totals, stages, per_crop, crops = [], {}, [], []
    for page in pages:
        t0 = time.perf_counter()
        [result] = pipeline.run([page])
        totals.append((time.perf_counter() - t0) * 1000)
        for k, v in result.timings_ms.items():
            stages.setdefault(k, []).append(v)
        if result.crops:
            per_crop.append(result.timings_ms["ocr"] / len(result.crops))
            crops.extend(result.crops)

    # The same crops read by Tesseract one at a time, in-process and as a program.
    settings = OcrSettings(
        allow="0123456789.*", pattern=r"\d+(?:\.\d+)*", threads=1, timeout_ms=5000
    )
    sample = crops[:60]
    tess = TesserocrReader(settings)
    if sample:
        tess.read_one(sample[0])  # warm-up: the engine's first call
    t0 = time.perf_counter()
    for c in sample:
        tess.read_one(c)
    inproc = (time.perf_counter() - t0) * 1000 / max(1, len(sample))
    sub = PytesseractReader(settings)
    t0 = time.perf_counter()
    for c in sample:
        sub.read_one(c)
    subproc = (time.perf_counter() - t0) * 1000 / max(1, len(sample))

    report = {
        "device": str(pipeline.device),
        "cpu": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "images": len(pages),
        "image_size": [1200, 1600],
        "chain_ms_p50": round(statistics.median(totals), 1),
        "chain_ms_max": round(max(totals), 1),
        "stage_ms_p50": {k: round(statistics.median(v), 1) for k, v in stages.items()},
        "regions_per_image": round(len(crops) / len(pages), 1),
        "ocr_backend": pipeline.pack.ocr.get("backend", "tesserocr"),
        "ocr_ms_per_crop_in_batch": round(statistics.median(per_crop), 2) if per_crop else None,
        "ocr_ms_per_crop_tesserocr_serial": round(inproc, 2),
        "ocr_ms_per_crop_pytesseract_serial": round(subproc, 2),
        "ocr_speedup_in_process": round(subproc / inproc, 1) if inproc else None,
        "ocr_speedup_pack_reader_vs_tesserocr": (
            round(inproc / statistics.median(per_crop), 1) if per_crop else None
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
