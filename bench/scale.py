"""``python -m bench.scale``: the API and the sweeper with a million jobs in the table.

Seeds ``--jobs`` job rows (1,000,000) with one ``INSERT ... SELECT FROM generate_series``:
one *heavy* owner holds ``--heavy-share`` percent of them (100,000) and ``--owners``
others share the rest (900 each), mostly finished, with a backlog of queued jobs and
running ones, as a busy installation has. Before it, the same measures are taken on a
small table (20 owners of 900 jobs each), so the ratio says what the table's size did.
Against the web server as the Procfile serves it, in one run:

- ``GET /api/v1/jobs/{id}/`` and the first page of ``GET /api/v1/jobs/``, one request at
  a time (service time, not queueing): p50 and p99, and the ratio after/before;
- the plans of the sweeper's queries (``EXPLAIN ANALYZE``): each must read the job table
  through an index, never a sequential scan;
- Redis memory per queued job: ``--messages`` read_job messages are sent to an empty
  queue, exactly as a submit sends them, and Redis's ``used_memory`` is compared.

The same seeding and plan checks run as a test in tests/web/test_scale.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import time
import urllib.error
import urllib.request
from typing import Any

from bench.stack import BenchStack, add_stack_arguments, machine_load, write_report

SEED_USERS = """
INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                       is_staff, is_active, date_joined)
SELECT '!', false, %(prefix)s || u, '', '', '', false, true, now()
FROM generate_series(1, %(owners)s) AS u
"""

# One statement, so the rows, their indexes and the time it takes are what a bulk import
# would see. Rows come owner by owner, each owner's newest first, with ids in the same
# order, so every index is filled in its own order (random ids would make seeding several
# times slower, and lookups by id are not faster for it). The first owner holds
# ``heavy`` rows; the rest are shared equally. Every 1000th job is queued (enqueued long
# ago: the sweeper's re-send query finds it), every 1000th running with a live lease, 1%
# failed, 2% rejected, the rest succeeded.
SEED_JOBS = """
WITH owners AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM auth_user WHERE username LIKE %(like)s
), rows AS (
    SELECT r,
           CASE WHEN r <= %(heavy)s THEN 0
                ELSE 1 + (r - %(heavy)s - 1) / %(per_owner)s END AS slot,
           CASE WHEN r <= %(heavy)s THEN r
                ELSE (r - %(heavy)s - 1) %% %(per_owner)s + 1 END AS position
    FROM generate_series(1, %(jobs)s) AS r
)
INSERT INTO detection_job (
    id, owner_id, status, stage, image, image_width, image_height, image_sha256,
    annotated_image, classification_label, classification_score, classification_relevant,
    error_code, error_message, attempts, lease_expires_at, worker_host, pack_name,
    pack_version, timings_ms, idempotency_key, created_at, enqueued_at, started_at,
    finished_at
)
SELECT
    (lpad(to_hex(%(batch)s), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(r), 12, '0'))::uuid,
    ids[1 + slot],
    CASE WHEN r %% 1000 = 1 THEN 'queued'
         WHEN r %% 1000 = 2 THEN 'running'
         WHEN r %% 100 = 3 THEN 'failed'
         WHEN r %% 50 = 4 THEN 'rejected'
         ELSE 'succeeded' END,
    CASE WHEN r %% 1000 = 2 THEN 'detect' ELSE '' END,
    'jobs/seeded-' || r || '/input.jpg', 1200, 1600, md5(r::text) || md5(r::text),
    '', 'page', 0.99, true,
    CASE WHEN r %% 100 = 3 THEN 'reader_error' ELSE '' END, '',
    1,
    CASE WHEN r %% 1000 = 2 THEN now() + interval '3 minutes' END,
    '', 'reference', '1.0.0', '{}'::jsonb, '',
    now() - (position * %(owners)s + slot) * interval '1 second',
    now() - (position * %(owners)s + slot) * interval '1 second',
    CASE WHEN r %% 1000 <> 1 THEN now() - (position * %(owners)s + slot) * interval '1 second' END,
    CASE WHEN r %% 1000 > 2 THEN now() - (position * %(owners)s + slot) * interval '1 second' END
FROM owners, rows
ORDER BY r
"""

_batches = iter(range(1, 1 << 30))


def seed(jobs: int, owners: int, heavy: int = 0, prefix: str = "seeded-") -> float:
    """Seed ``owners`` users (at least 2) and ``jobs`` jobs, ``heavy`` of them the first
    owner's; returns the seconds it took, ANALYZE included (the planner must know the
    table is big, as autovacuum would soon tell it)."""
    from django.db import connection

    per_owner = max(1, -(-(jobs - heavy) // (owners - 1)))
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(SEED_USERS, {"prefix": prefix, "owners": owners})
        cursor.execute(
            SEED_JOBS,
            {"like": prefix + "%", "jobs": jobs, "heavy": heavy, "per_owner": per_owner,
             "owners": owners, "batch": next(_batches)},
        )  # fmt: skip
        cursor.execute("ANALYZE detection_job")
    return time.perf_counter() - t0


def seeded_owner(prefix: str = "seeded-", heavy: bool = False) -> Any:
    """A typical seeded owner, or (``heavy``) the first, who holds the heavy share."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects.filter(username__startswith=prefix).order_by("id")
    return users[0] if heavy else users[1]


def job_rows() -> int:
    from detection.models import Job

    return Job.objects.count()


def sweeper_plans() -> tuple[Any, dict[str, str]]:
    """Run the sweeper once; the plan of every statement it ran on the job table."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from detection import jobs

    with CaptureQueriesContext(connection) as captured:
        report = jobs.sweep()
    return report, job_table_plans(captured.captured_queries)


def job_table_plans(queries: list[dict[str, str]]) -> dict[str, str]:
    """EXPLAIN (not run) of every captured statement that reads or writes the job table,
    one per statement shape (ids and times differ, plans do not)."""
    plans: dict[str, str] = {}
    for query in queries:
        sql = query["sql"]
        if "detection_job" in sql and sql.lstrip().upper().startswith(("SELECT", "UPDATE")):
            plans.setdefault(re.sub(r"'[^']*'", "?", sql), explain(sql, analyze=False))
    return plans


def explain(sql: str, analyze: bool = True) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ") + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def seq_scans_on_jobs(plan: str) -> list[str]:
    return [line.strip() for line in plan.splitlines() if "Seq Scan on detection_job" in line]


def timed_gets(url: str, token: str, path: str, n: int) -> list[float]:
    """``n`` sequential requests (after one warm-up); milliseconds each."""
    request = urllib.request.Request(url + path, headers={"Authorization": f"Token {token}"})
    times = []
    for k in range(n + 1):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"GET {path}: {exc.code} {exc.read()[:500]!r}") from None
        if k:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def latency(url: str, owner: Any, n: int) -> dict[str, dict[str, float]]:
    from rest_framework.authtoken.models import Token

    from detection.models import Job

    token = Token.objects.get_or_create(user=owner)[0].key
    job = Job.objects.filter(owner=owner).order_by("-created_at")[7]
    out = {}
    for name, path in (("detail", f"/api/v1/jobs/{job.id}/"), ("first_page", "/api/v1/jobs/")):
        times = sorted(timed_gets(url, token, path, n))
        out[name] = {
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        }
    return out


def redis_bytes_per_queued_job(messages: int) -> dict[str, Any]:
    """Send ``messages`` read_job messages as a submit does; Redis memory they take."""
    import uuid

    import redis
    from django.conf import settings

    from detection import jobs
    from project.celery import app

    client = redis.Redis.from_url(settings.REDIS_URL)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(jobs.READ_QUEUE)
    before = client.info("memory")["used_memory"]
    ids = [str(uuid.uuid4()) for _ in range(messages)]
    for job_id in ids:
        jobs._send(job_id)
    after = client.info("memory")["used_memory"]
    queued = client.llen(jobs.READ_QUEUE)
    raw = client.lindex(jobs.READ_QUEUE, 0)
    args, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(jobs.READ_QUEUE)
    return {
        "messages": messages,
        "queue_length": queued,
        "bytes_per_queued_job": round((after - before) / messages),
        "message_bytes": len(raw),
        "message_args": args,
        "message_holds_only_the_id": len(args) == 1 and args[0] in set(ids) and kwargs == {},
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--owners", type=int, default=1000)
    p.add_argument("--heavy-share", type=int, default=10, help="percent of rows of one owner")
    p.add_argument("--requests", type=int, default=200, help="per endpoint and table size")
    p.add_argument("--messages", type=int, default=10_000)
    add_stack_arguments(p, pool_for="the web process")
    args = p.parse_args()

    report: dict[str, Any] = {"benchmark": "scale", "machine_before": machine_load()}
    env = {"DATABASE_POOL_MAX_SIZE": str(args.db_pool)}
    with BenchStack("scale", env, args.database_url, args.redis_url, args.keep) as stack:
        stack.start_web()
        # Before: a small table whose owners have as many jobs as the seeded ones will.
        per_owner = args.jobs * (100 - args.heavy_share) // 100 // args.owners
        seed(20 * per_owner, 21, 0, prefix="small-")
        small = {
            "typical owner": latency(stack.url, seeded_owner("small-"), args.requests),
        }
        small_rows = job_rows()
        heavy_rows = args.jobs * args.heavy_share // 100
        seconds = seed(args.jobs, args.owners + 1, heavy_rows)
        from detection.models import Job

        rows = Job.objects.count()
        typical, heavy = seeded_owner(), seeded_owner(heavy=True)
        large = {
            "typical owner": latency(stack.url, typical, args.requests),
            "heavy owner": latency(stack.url, heavy, args.requests),
        }
        sweep_report, plans = sweeper_plans()
        report.update(
            command=(
                f"python -m bench.scale --jobs {args.jobs} --owners {args.owners} "
                f"--heavy-share {args.heavy_share} --requests {args.requests} "
                f"--db-pool {args.db_pool}"
            ),
            rows_before=small_rows,
            rows=rows,
            seed_seconds=round(seconds, 1),
            jobs_of_typical_owner=Job.objects.filter(owner=typical).count(),
            jobs_of_heavy_owner=Job.objects.filter(owner=heavy).count(),
            latency_1k_rows=small,
            latency_large=large,
            detail_ratio=round(
                large["typical owner"]["detail"]["p50_ms"]
                / small["typical owner"]["detail"]["p50_ms"],
                2,
            ),
            first_page_ratio=round(
                large["typical owner"]["first_page"]["p50_ms"]
                / small["typical owner"]["first_page"]["p50_ms"],
                2,
            ),
            sweep={"resent": sweep_report.resent, "requeued": sweep_report.requeued},
            sweeper_statements=len(plans),
            sweeper_seq_scans_on_jobs=sum(len(seq_scans_on_jobs(p)) for p in plans.values()),
            sweeper_plans=plans,
            redis=redis_bytes_per_queued_job(args.messages),
        )
    report["machine_after"] = machine_load()
    write_report(report, args.out)


if __name__ == "__main__":
    main()
