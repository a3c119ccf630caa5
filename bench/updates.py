"""``python -m bench.updates``: what the job spine's own writes cost a worker, per job.

In this process, on a database and Redis of the benchmark's own (bench.stack): N jobs
submitted (a 1200x1600 page photo), each then claimed, advanced through the four stages
and completed with 12 regions and their crops, exactly as ``detection.jobs`` does it for
the worker (every change published to the job's channel-layer group). Prints the median
milliseconds of the claim, of one stage update and of the completion, after a warm-up.

To compare two versions of the code, run it on each checkout in the order A B B A.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

from bench.photos import page_photo
from bench.stack import BenchStack, machine_load


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.updates", description=__doc__)
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--warm-up", type=int, default=5)
    args = p.parse_args()

    with BenchStack("updates"):
        from django.contrib.auth import get_user_model
        from PIL import Image

        from detection import jobs
        from detection.uploads import normalize_upload

        owner = get_user_model().objects.create(username="bench-updates")
        photo = page_photo(97_000_000)
        crop = io.BytesIO()
        Image.new("L", (90, 36), 230).save(crop, "PNG")
        region = jobs.RegionReading(
            (100.0, 200.0, 160.0, 220.0), "number", 0.97, "12.7", 95.0, crop.getvalue()
        )
        reading = jobs.Reading(
            label="page", score=0.99, relevant=True, pack_name="reference", pack_version="1",
            timings_ms={"classify": 9.0}, regions=[region] * 12,
        )  # fmt: skip
        ms: dict[str, list[float]] = {"claim": [], "stage": [], "complete": []}

        def timed(name: str, call, *a):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            result = call(*a)
            ms[name].append((time.perf_counter() - t0) * 1000)
            return result

        for k in range(args.warm_up + args.jobs):
            if k == args.warm_up:
                for times in ms.values():
                    times.clear()
            job, _ = jobs.job_submit(owner, normalize_upload(io.BytesIO(photo)))
            claim = timed("claim", jobs.job_claim, job.id, "bench")
            for stage in ("classify", "detect", "crop", "ocr"):
                assert timed("stage", jobs.job_advance_stage, claim, stage)
            assert timed("complete", jobs.job_complete, claim, reading)
        report = {f"{k}_ms_p50": round(statistics.median(v), 2) for k, v in ms.items()}
        report["per_job_ms"] = round(
            report["claim_ms_p50"] + 4 * report["stage_ms_p50"] + report["complete_ms_p50"], 1
        )
        report["jobs"] = args.jobs
        report["machine"] = machine_load()
        print(json.dumps(report))


if __name__ == "__main__":
    main()
