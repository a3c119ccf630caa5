"""``python -m workers.pipeline [--json] [--pack DIR] [--device cpu|cuda] IMAGE...``"""

from __future__ import annotations

import argparse
import json
import sys

from PIL import Image, UnidentifiedImageError

from workers.pipeline.chain import load_pipeline
from workers.pipeline.images import open_image
from workers.pipeline.pack import PackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.pipeline",
        description="Run the reading chain (classify, detect, crop, OCR) on image files.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument(
        "--pack", help="model pack folder (default: $SNAPREAD_PACK or the reference pack)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default=None)
    args = parser.parse_args(argv)

    try:
        pipeline = load_pipeline(args.pack, args.device)
    except (PackError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    status = 0
    for path in args.images:
        try:
            image = open_image(path)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            # One line per argument, in order, even for a file that is no image.
            message = f"cannot read image ({exc})"
            if args.json:
                print(json.dumps({"image": path, "error": message}), flush=True)
            print(f"error: {path}: {message}", file=sys.stderr)
            status = 1
            continue
        [result] = pipeline.run([image])
        if args.json:
            print(json.dumps({"image": path, **result.to_dict()}), flush=True)
        else:
            print(_table(path, result.to_dict()), flush=True)
    return status


def _table(path: str, answer: dict) -> str:
    c = answer["classification"]
    total = sum(answer["timings_ms"].values())
    lines = [
        f"{path}: {c['label']} ({c['score']:.2f}){'' if c['relevant'] else ', not read'}"
        f", {len(answer['regions'])} region(s), {total:.0f} ms"
    ]
    for r in answer["regions"]:
        x0, y0, x1, y1 = (round(v) for v in r["box"])
        lines.append(
            f"  {r['text'] or '?':>10}  conf {r['confidence']:5.1f}  score {r['score']:.2f}"
            f"  [{x0}, {y0}, {x1}, {y1}]"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
