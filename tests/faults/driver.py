"""`python -m tests.faults.driver COMMAND ...`: the submitting and asserting side of the
fault suite, as a subprocess pointed (by env) at the suite's own Redis and PostgreSQL.

It calls the real services (detection.jobs) directly: the subject is delivery, not HTTP.
Every command prints one JSON object as its last line.

    submit N [--colour R,G,B]   N accepted jobs; {"ids": [...], "submit_s": ...}
    send-again                  one more message for every queued job, at once
    settle TIMEOUT SWEEP_EVERY  run the sweeper (as beat would) until every job is
                                terminal or TIMEOUT; {"jobs": {...}, "done_at": ...}
    counts                      {"queued": n, "running": n, ...}
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()


def submit(n: int, colour: tuple[int, int, int]) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from PIL import Image

    from detection import jobs
    from detection.uploads import normalize_upload

    owner, _ = get_user_model().objects.get_or_create(username="faults")
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, "PNG")
    ids = []
    started = time.monotonic()
    for _ in range(n):
        job, _ = jobs.job_submit(owner, normalize_upload(io.BytesIO(out.getvalue())))
        ids.append(str(job.id))
    return {"ids": ids, "submit_s": round(time.monotonic() - started, 3)}


def send_again() -> dict[str, Any]:
    from detection import jobs
    from detection.models import Job, Status

    ids = list(Job.objects.filter(status=Status.QUEUED).values_list("id", flat=True))
    for job_id in ids:
        jobs._send(job_id)
    return {"sent": len(ids)}


def _snapshot() -> dict[str, Any]:
    from detection.models import Job

    rows = {}
    for job in Job.objects.prefetch_related("regions"):
        rows[str(job.id)] = {
            "status": job.status,
            "error": job.error_code,
            "attempts": job.attempts,
            "regions": sorted(r.index for r in job.regions.all()),
        }
    return rows


def settle(timeout: float, sweep_every: float) -> dict[str, Any]:
    from django.db import DatabaseError, close_old_connections, connection

    from detection import jobs
    from detection.models import TERMINAL, Job

    deadline = time.monotonic() + timeout
    db_errors = 0
    while True:
        try:
            unfinished = Job.objects.exclude(status__in=TERMINAL).count()
            if unfinished == 0:
                done_at = time.time()
                return {"jobs": _snapshot(), "done_at": done_at, "db_errors": db_errors}
            if time.monotonic() > deadline:
                return {"jobs": _snapshot(), "done_at": None, "db_errors": db_errors}
            jobs.sweep()
        except DatabaseError:
            # The suite restarts PostgreSQL under us; a new connection comes next round.
            db_errors += 1
            connection.close()
        close_old_connections()
        time.sleep(sweep_every)


def counts() -> dict[str, int]:
    from django.db.models import Count

    from detection.models import Job

    return {r["status"]: r["n"] for r in Job.objects.values("status").annotate(n=Count("id"))}


def main(argv: list[str]) -> None:
    _setup()
    command = argv[0]
    if command == "submit":
        colour = (200, 200, 200)
        if "--colour" in argv:
            colour = tuple(int(v) for v in argv[argv.index("--colour") + 1].split(","))
        result: Any = submit(int(argv[1]), colour)  # type: ignore[arg-type]
    elif command == "send-again":
        result = send_again()
    elif command == "settle":
        result = settle(float(argv[1]), float(argv[2]))
    elif command == "counts":
        result = counts()
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
