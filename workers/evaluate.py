"""``python -m workers.evaluate``: how well a pack reads a held-out set.

Reports page accuracy (pages and negatives), detection AP50, end-to-end number
precision and recall (a number counts when its text matches exactly, surrounding
punctuation stripped, and its box overlaps the true one), and per-stage times.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from workers.pipeline.chain import Pipeline, load_pipeline
from workers.pipeline.images import open_image
from workers.training.dataset import negative_files, read_labels

MATCH_IOU = 0.3
AP_IOU = 0.5


def canonical(text: str) -> str:
    return re.sub(r"^[^\w]+|[^\w]+$", "", text.strip())


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(scored: list[tuple[float, bool]], positives: int) -> float:
    """Area under the interpolated precision-recall curve (VOC style, all points)."""
    if positives == 0:
        return float("nan")
    scored = sorted(scored, key=lambda s: -s[0])
    tp = np.cumsum([hit for _, hit in scored], dtype=float)
    fp = np.cumsum([not hit for _, hit in scored], dtype=float)
    recall = np.concatenate([[0.0], tp / positives, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-9), [0.0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    steps = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def greedy_match(preds: list, truths: list, ok) -> list[bool]:
    """For each prediction (best first), whether it claims a not-yet-claimed truth."""
    used = [False] * len(truths)
    hits = []
    for p in preds:
        best, best_iou = -1, 0.0
        for j, t in enumerate(truths):
            if not used[j] and ok(p, t):
                overlap = iou(p[0], t[0])
                if overlap > best_iou:
                    best, best_iou = j, overlap
        if best >= 0:
            used[best] = True
        hits.append(best >= 0)
    return hits


def number_hits(read: list, truths: list) -> list[bool]:
    """For each number read ((box, text), best first), whether it claims a true number:
    the same text, boxes overlapping by ``MATCH_IOU``."""
    return greedy_match(read, truths, lambda p, t: p[1] == t[1] and iou(p[0], t[0]) >= MATCH_IOU)


def evaluate(pipeline: Pipeline, data_dir: Path, limit: int | None = None) -> dict:
    labels = read_labels(data_dir)[:limit]
    negatives = negative_files(data_dir)[:limit]
    detector = pipeline.detector
    threshold = getattr(detector, "score_threshold", None)
    stage_ms: dict[str, list[float]] = {}
    page_ok = neg_ok = 0
    scored: list[tuple[float, bool]] = []
    positives = tp = fp = 0
    misses: list[dict] = []
    # Where the set records them, by the photo's blur (sigma) and by typeface:
    # (numbers read right, numbers).
    by_blur: dict[float, tuple[int, int]] = {}
    by_font: dict[str, tuple[int, int]] = {}
    t0 = time.perf_counter()

    def run(image):
        [result] = pipeline.run([image])
        for stage, ms in result.timings_ms.items():
            stage_ms.setdefault(stage, []).append(ms)
        return result

    for label in labels:
        truths = [(box, canonical(text)) for box, text in label.numbers]
        positives += len(truths)
        image = open_image(data_dir / label.file)
        result = run(image)
        page_ok += result.classification.relevant
        if threshold is not None and result.classification.relevant:
            # AP needs every detection, not just those above the pack's threshold.
            detector.score_threshold = 0.05
            [dets] = detector.detect([image])
            detector.score_threshold = threshold
            boxes = [(d.box, d.score) for d in dets]
            hits = greedy_match(boxes, truths, lambda p, t: iou(p[0], t[0]) >= AP_IOU)
            scored += [(s, h) for (_, s), h in zip(boxes, hits, strict=True)]
        read = [(r.box, canonical(r.text)) for r in result.regions if canonical(r.text)]
        hits = number_hits(read, truths)
        tp += sum(hits)
        fp += len(hits) - sum(hits)
        for key, tally in ((label.blur, by_blur), (label.font, by_font)):
            if key is not None:
                found, total = tally.get(key, (0, 0))
                tally[key] = (found + sum(hits), total + len(truths))
        if len(misses) < 50 and (sum(hits) < len(truths) or not all(hits)):
            misses.append(
                {
                    "file": label.file,
                    "truth": sorted(t for _, t in truths),
                    "read": sorted(t for _, t in read),
                }
            )
    for name in negatives:
        result = run(open_image(data_dir / name))
        neg_ok += not result.classification.relevant
        fp += sum(1 for r in result.regions if canonical(r.text))

    n_images = len(labels) + len(negatives)
    return {
        "pages": len(labels),
        "negatives": len(negatives),
        "page_accuracy": round((page_ok + neg_ok) / max(1, n_images), 4),
        "pages_recognised": round(page_ok / max(1, len(labels)), 4),
        "negatives_refused": round(neg_ok / max(1, len(negatives)), 4),
        "detection_ap50": round(average_precision(scored, positives), 4),
        "numbers": positives,
        "number_precision": round(tp / max(1, tp + fp), 4),
        "number_recall": round(tp / max(1, positives), 4),
        # Where the set records each photo's blur: recall by blur sigma (pixels).
        "number_recall_by_blur": {
            f"{blur:g}": {"numbers": total, "recall": round(found / max(1, total), 4)}
            for blur, (found, total) in sorted(by_blur.items())
        },
        "number_recall_by_font": {
            font: {"numbers": total, "recall": round(found / max(1, total), 4)}
            for font, (found, total) in sorted(by_font.items())
        },
        "stage_ms_mean": {k: round(float(np.mean(v)), 2) for k, v in stage_ms.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "pack": f"{pipeline.pack.name} {pipeline.pack.version}",
        "device": str(pipeline.device),
        "misses": misses,
    }


def sweep(
    pipeline: Pipeline,
    data_dir: Path,
    limit: int | None = None,
    scores: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95),
    confidences: tuple[float, ...] = (0.0, 50.0, 60.0, 70.0, 80.0, 90.0),
) -> list[dict]:
    """Number precision and recall for each pair of detection score threshold and reading
    confidence threshold, from one pass over the pages: for choosing a pack's thresholds
    on a validation set (``generate --split val``), never on the held-out one.

    The reader's second look (``ocr.second_look``) and its numbering (``ocr.numbering``)
    are off here: which readings they revisit depends on the confidence threshold, which
    one pass cannot vary. The table is the plain reader's; evaluate the pack itself for
    what they add."""
    from dataclasses import replace

    detector, reader = pipeline.detector, pipeline.reader
    saved = (getattr(detector, "score_threshold", None), getattr(reader, "settings", None))
    revisits = {k: getattr(reader, k, None) for k in ("second_look", "numbering")}
    if saved[0] is None or saved[1] is None:
        raise SystemExit("--sweep needs a detector with score_threshold and a reader with settings")
    detector.score_threshold = min(scores)
    reader.settings = replace(saved[1], min_confidence=0.0)
    for name, value in revisits.items():
        if value is not None:
            setattr(reader, name, None)
    pages = []
    try:
        for label in read_labels(data_dir)[:limit]:
            truths = [(box, canonical(text)) for box, text in label.numbers]
            [result] = pipeline.run([open_image(data_dir / label.file)])
            regions = [(r.box, canonical(r.text), r.score, r.confidence) for r in result.regions]
            pages.append((truths, regions))
    finally:
        detector.score_threshold, reader.settings = saved
        for name, value in revisits.items():
            if value is not None:
                setattr(reader, name, value)
    positives = sum(len(t) for t, _ in pages)
    table = []
    for s in scores:
        for c in confidences:
            tp = fp = 0
            for truths, regions in pages:
                read = [(b, t) for b, t, sc, cf in regions if sc >= s and cf >= c and t]
                hits = number_hits(read, truths)
                tp, fp = tp + sum(hits), fp + len(hits) - sum(hits)
            table.append(
                {
                    "score_threshold": s,
                    "min_confidence": c,
                    "precision": round(tp / max(1, tp + fp), 4),
                    "recall": round(tp / max(1, positives), 4),
                }
            )
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.evaluate", description=__doc__)
    p.add_argument(
        "--data", required=True, help="a held-out set made by 'workers.training generate'"
    )
    p.add_argument("--pack", help="model pack folder (default: the reference pack)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default=None)
    p.add_argument("--limit", type=int, help="at most this many pages and negatives")
    p.add_argument("--out", help="also write the report here as JSON")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="precision and recall over a grid of detection and reading thresholds "
        "(for a validation set)",
    )
    args = p.parse_args(argv)
    if args.sweep:
        table = sweep(load_pipeline(args.pack, args.device), Path(args.data), args.limit)
        for row in table:
            print(json.dumps(row))
        if args.out:
            Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
        return 0
    report = evaluate(load_pipeline(args.pack, args.device), Path(args.data), args.limit)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    summary = {k: v for k, v in report.items() if k != "misses"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
