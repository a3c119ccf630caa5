"""``python -m bench.allocator``: ``bench.raw`` with the allocator holding freed memory (as
the worker runs it, workers/memory.py) against glibc's defaults, in one run.

Each is a fresh ``bench.raw`` process over the same N rendered page photos, in the order
held, defaults, defaults, held; the better run of each counts. Prints one JSON object:
each side's images/s (raw's best mode) and what its whole process cost the machine
(user and system CPU seconds, minor page faults, peak resident size in MiB), and the ratio
held / defaults. ``--cpus`` runs both on those CPUs only (as ``taskset -c`` reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.e2e import raw_argv, render_photos, write_photos
from bench.stack import parse_cpus, pinned

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.allocator", description=__doc__)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpus", help="CPUs to run on, as taskset -c writes them (default: all)")
    args = p.parse_args()
    cpus = parse_cpus(args.cpus) if args.cpus else None

    with tempfile.TemporaryDirectory() as tmp:
        write_photos(render_photos(args.images), Path(tmp))
        argv = raw_argv(Path(tmp), args.batch, args.device)
        runs: dict[str, list[dict[str, Any]]] = {"held": [], "defaults": []}
        for side in ("held", "defaults", "defaults", "held"):
            extra = ["--glibc-defaults"] if side == "defaults" else []
            with pinned(cpus):
                runs[side].append(run_raw(argv + extra))

    best = {side: max(r, key=lambda run: run["images_per_s"]) for side, r in runs.items()}
    print(
        json.dumps(
            {
                "images": args.images,
                "cpus": sorted(cpus) if cpus else sorted(os.sched_getaffinity(0)),
                "held": best["held"],
                "defaults": best["defaults"],
                "held_over_defaults": best["held"]["images_per_s"]
                / best["defaults"]["images_per_s"],
                "runs": runs,
            },
            indent=2,
        )
    )


def run_raw(argv: list[str]) -> dict[str, Any]:
    """One bench.raw process: its images/s and what the whole process cost (its own
    rusage, from wait4)."""
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench.raw failed ({child.returncode}): {' '.join(argv)}")
    raw = json.loads(out.strip().splitlines()[-1])
    if raw["memory_held"] != ("--glibc-defaults" not in argv):
        raise SystemExit("this process's allocator cannot hold freed memory (workers/memory.py)")
    return {
        "images_per_s": raw["images_per_s"],
        "modes_images_per_s": {
            "plain": raw["plain_batches_images_per_s"],
            "in_turn": raw["batcher_in_turn_images_per_s"],
            "overlapped": raw["batcher_overlapped_images_per_s"],
        },
        "user_s": round(usage.ru_utime, 2),
        "system_s": round(usage.ru_stime, 2),
        "minor_faults": usage.ru_minflt,
        "max_rss_mib": round(usage.ru_maxrss / 1024),
    }


if __name__ == "__main__":
    main()
