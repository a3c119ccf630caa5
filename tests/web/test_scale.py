"""A million jobs in the table: one job and the first page of jobs are still read in
milliseconds, the API's and the sweeper's queries read the job table through indexes,
a queued job costs Redis one small message, and two workers share one queue.

The million rows come from bench/scale.py's seeding (one INSERT ... SELECT FROM
generate_series), committed once for this module and truncated after it.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench.scale import job_table_plans, seed, seeded_owner, seq_scans_on_jobs, sweeper_plans
from detection import jobs
from detection.models import TERMINAL, Job

from .conftest import REPO, image_bytes, purge_queues, token_client, upload, wait_for_job

JOBS = 1_000_000
OWNERS = 1000
HEAVY = 100_000
PER_OWNER = (JOBS - HEAVY) // OWNERS
P50_LIMIT_MS = 10.0
# "Flat": at most this much slower than on a small table, measured in the same run, so a
# busy machine (which slows both alike, not always evenly) does not fail the test but a
# scan growing with the table does: a sequential scan of a million rows costs 100 ms and
# more, far past 3x. The 10 ms limit holds where the small table meets it.
FLAT = 3.0
# Seeding a million rows took 42 s on two cores shared with other busy work
# (docs/benchmarks.md); this catches it growing into many minutes (a lost index order,
# a trigger) without being flaky.
SEED_LIMIT_S = 180.0


@dataclass
class Million:
    seed_seconds: float
    before_ms: dict[str, float]


@pytest.fixture(scope="module")
def million(django_db_setup: None, django_db_blocker: Any) -> Iterator[Million]:
    with django_db_blocker.unblock():
        try:
            # First a small table whose owners have as many jobs as the seeded ones.
            seed(20 * PER_OWNER, 21, 0, prefix="small-")
            client, detail, first_page = job_reads(seeded_owner("small-"))
            before = {"detail": p50_ms(client, detail), "first_page": p50_ms(client, first_page)}
            seconds = seed(JOBS, OWNERS + 1, HEAVY)
            print(f"\nseeded {JOBS} jobs in {seconds:.1f} s; p50 before: {before}")
            yield Million(seconds, before)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE detection_region, detection_job")
                cursor.execute(
                    "DELETE FROM authtoken_token WHERE user_id IN (SELECT id FROM auth_user "
                    "WHERE username LIKE 'seeded-%%' OR username LIKE 'small-%%')"
                )
                cursor.execute(
                    "DELETE FROM auth_user "
                    "WHERE username LIKE 'seeded-%%' OR username LIKE 'small-%%'"
                )


def p50_ms(client: Any, path: str, n: int = 60) -> float:
    client.get(path)  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
    return statistics.median(times)


def job_reads(owner: Any) -> tuple[Any, str, str]:
    job = Job.objects.filter(owner=owner).order_by("-created_at")[7]
    return token_client(owner), f"/api/v1/jobs/{job.id}/", "/api/v1/jobs/"


def assert_flat(after: float, before: float) -> None:
    limit = max(P50_LIMIT_MS, FLAT * before)
    assert after < limit, f"p50 {after:.1f} ms with a million rows, {before:.1f} ms before"


@pytest.mark.slow
@pytest.mark.django_db
def test_it_seeds_a_million_jobs_in_seconds(million: Million) -> None:
    assert Job.objects.count() == JOBS + 20 * PER_OWNER
    assert million.seed_seconds < SEED_LIMIT_S


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.parametrize("who", ["typical", "heavy"])
def test_it_reads_one_job_among_a_million_in_milliseconds(million: Million, who: str) -> None:
    client, detail, _ = job_reads(seeded_owner(heavy=who == "heavy"))

    assert_flat(p50_ms(client, detail), million.before_ms["detail"])


@pytest.mark.slow
@pytest.mark.django_db
def test_it_serves_the_first_page_of_a_typical_owner_in_milliseconds(million: Million) -> None:
    client, _, first_page = job_reads(seeded_owner())

    assert_flat(p50_ms(client, first_page), million.before_ms["first_page"])


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.parametrize("who", ["typical", "heavy"])
def test_its_api_reads_the_job_table_through_indexes(million: Million, who: str) -> None:
    client, detail, first_page = job_reads(seeded_owner(heavy=who == "heavy"))

    with CaptureQueriesContext(connection) as captured:
        assert client.get(detail).status_code == 200
        assert client.get(first_page).status_code == 200

    plans = job_table_plans(captured.captured_queries)
    assert len(plans) >= 2
    for sql, plan in plans.items():
        assert not seq_scans_on_jobs(plan), f"{sql}\n{plan}"


@pytest.mark.slow
@pytest.mark.django_db
def test_the_sweeper_reads_the_job_table_through_indexes(million: Million) -> None:
    report, plans = sweeper_plans()

    assert report.resent > 0  # the seeded backlog was found (and re-sent) ...
    assert len(plans) >= 3  # ... by the stale, count and expired queries at least
    for sql, plan in plans.items():
        assert not seq_scans_on_jobs(plan), f"{sql}\n{plan}"
        assert "Index" in plan, f"{sql}\n{plan}"


def test_a_queued_job_costs_redis_one_small_message_holding_only_its_id(workers: Any) -> None:
    import base64
    import json
    import uuid

    workers.stop()  # a worker left by an earlier test would take the messages
    client = redis.Redis.from_url(settings.REDIS_URL)
    purge_queues()
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    for job_id in ids:
        jobs._send(job_id)

    assert client.llen(jobs.READ_QUEUE) == len(ids)
    per_job = client.memory_usage(jobs.READ_QUEUE, samples=0) / len(ids)
    message = json.loads(client.lindex(jobs.READ_QUEUE, 0))
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    purge_queues()
    assert args == [ids[-1]] and kwargs == {}
    assert per_job < 2048, per_job


# -- two workers, one queue -----------------------------------------------------------


def start_spine_worker(name: str, log: Path) -> subprocess.Popen[bytes]:
    """A worker like the conftest's spine worker, under a name of our own."""
    command = [sys.executable, "-m", "tests.web.spine_worker", "-A", "project", "worker"]
    command += ["-Q", "gpu,default", "-c", "1", "-l", "info", "-n", name]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return subprocess.Popen(
        command, cwd=REPO, env=worker_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def worker_env() -> dict[str, str]:
    import os
    from urllib.parse import quote

    db = settings.DATABASES["default"]
    auth = quote(db["USER"]) + (":" + quote(db["PASSWORD"]) if db["PASSWORD"] else "")
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
    )


@pytest.mark.slow
def test_two_worker_processes_share_one_queue_and_both_take_jobs(
    workers: Any, transactional_db: None, alice: Any, tmp_path: Path
) -> None:
    from project.celery import app

    workers.stop()  # only our two consume
    purge_queues()
    names = [f"share-{k}@{tmp_path.name}" for k in (1, 2)]
    procs = [start_spine_worker(n, tmp_path / f"{k}.log") for k, n in enumerate(names)]
    try:
        deadline = time.monotonic() + 60
        while len(app.control.ping(destination=names, timeout=0.5)) < 2:
            assert time.monotonic() < deadline, "the two workers did not start"
        api = token_client(alice)
        slow = image_bytes(colour=(0, 255, 0))  # the fake chain takes 0.6 s a stage
        ids = [
            api.post("/api/v1/jobs/", {"image": upload(slow)}, format="multipart").json()["id"]
            for _ in range(6)
        ]
        done = [wait_for_job(i, TERMINAL, timeout=60) for i in ids]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)

    assert {job.status for job in done} == {"succeeded"}
    assert {job.worker_host for job in done} == set(names)
    assert all(job.attempts == 1 for job in done)
