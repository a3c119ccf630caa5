"""``python -m bench.raw DIR``: the ceiling for ``bench.e2e``: the reference pack on the
JPEG photos in DIR, directly in this process, decode included, batched as well as it
can be. Prints one JSON object: images/s of plain batches of B, of the batcher with
the two halves of a batch in turn and with them overlapped (the accelerator half of one
batch beside the CPU half of the previous), and the best of the three as
``images_per_s``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from workers.batching import Batcher
from workers.memory import hold_freed_memory
from workers.pipeline import load_pipeline


def decode(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__)
    p.add_argument("photos", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pack")
    p.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="leave the allocator as glibc starts it; by default it holds freed memory, "
        "as the worker does (workers/memory.py; bench.allocator compares the two)",
    )
    args = p.parse_args()
    held = False if args.glibc_defaults else hold_freed_memory()

    paths = sorted(args.photos.glob("*.jpg"))
    pipeline = load_pipeline(args.pack, args.device)
    pipeline.run([decode(paths[0])] * min(args.batch, len(paths)))  # warm-up

    t0, cpu0 = time.perf_counter(), time.process_time()
    for k in range(0, len(paths), args.batch):
        pipeline.run([decode(path) for path in paths[k : k + args.batch]])
    plain = len(paths) / (time.perf_counter() - t0)
    cpu_ms = {"plain": 1000 * (time.process_time() - cpu0) / len(paths)}

    def batched(overlap: bool) -> tuple[float, float]:
        """(images/s, CPU ms per image: this process's, all its threads)."""
        batcher = Batcher(pipeline, max_batch=args.batch, max_wait_ms=5, overlap=overlap)
        batcher.read([decode(paths[0])])  # its threads started
        t0, cpu0 = time.perf_counter(), time.process_time()
        batcher.read([decode(path) for path in paths])
        cpu = 1000 * (time.process_time() - cpu0) / len(paths)
        return len(paths) / (time.perf_counter() - t0), cpu

    # Each mode twice, in the order A B B A, the better of each: neither gains from
    # running second (a warmer machine) or loses from running first.
    runs = [batched(False), batched(True), batched(True), batched(False)]
    (in_turn, cpu_ms["in_turn"]) = max(runs[0], runs[3])
    (overlapped, cpu_ms["overlapped"]) = max(runs[1], runs[2])

    device = str(pipeline.device)
    if pipeline.device.type == "cuda":
        device = torch.cuda.get_device_name(pipeline.device)
    print(
        json.dumps(
            {
                "images": len(paths),
                "batch": args.batch,
                "device": device,
                "torch": torch.__version__,
                "memory_held": held,
                "plain_batches_images_per_s": plain,
                "batcher_in_turn_images_per_s": in_turn,
                "batcher_overlapped_images_per_s": overlapped,
                "images_per_s": max(plain, in_turn, overlapped),
                "cpu_ms_per_image": {k: round(v, 1) for k, v in cpu_ms.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
