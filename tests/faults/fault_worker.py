"""`python -m tests.faults.fault_worker -A project worker ...`: the spine worker with the
FAKE chain, made slow on purpose and counting what it does, for the fault suite.

Each delivery of a read_job message and each chain execution is appended as one line
to files under FAULTS_LOG_DIR (O_APPEND lines are atomic), so the suite can count them
per job even for processes it SIGKILLs. FAULTS_VISIBILITY_TIMEOUT overrides the broker's
visibility timeout *only here*, to run tasks past it (settings refuse such a value).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _append(name: str, line: str) -> None:
    path = Path(os.environ["FAULTS_LOG_DIR"]) / name
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()

    from celery.__main__ import main as celery_main
    from celery.signals import task_prerun

    from project.celery import app
    from tests.web.fake_chain import load_fake_chain
    from workers import worker_chain

    stage_s = float(os.environ.get("FAULTS_STAGE_SECONDS", "0"))
    real_read = worker_chain.read

    def counted_read(claim, on_stage):  # type: ignore[no-untyped-def]
        _append("executions.log", f"{claim.job_id} {claim.attempt} {os.getpid()} {time.time()}")

        def slow_stage(stage: str) -> None:
            on_stage(stage)
            time.sleep(stage_s)

        return real_read(claim, slow_stage)

    @task_prerun.connect(weak=False)
    def _count_delivery(task=None, args=None, **_: object) -> None:  # type: ignore[no-untyped-def]
        if task is not None and task.name == "workers.tasks.read_job" and args:
            _append("deliveries.log", f"{args[0]} {os.getpid()} {time.time()}")

    worker_chain.load_chain = load_fake_chain
    worker_chain.read = counted_read
    if os.environ.get("FAULTS_VISIBILITY_TIMEOUT"):
        # kombu scans for overdue messages only every interval x throttle seconds (100 s
        # by default); scan every second so the short timeout shows within the test.
        app.conf.broker_transport_options = {
            "visibility_timeout": int(os.environ["FAULTS_VISIBILITY_TIMEOUT"]),
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    sys.argv[0] = "celery"
    return celery_main()


if __name__ == "__main__":
    sys.exit(main())
