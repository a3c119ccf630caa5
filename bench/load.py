"""``python -m bench.load``: many clients submitting photos and polling them to the end.

Starts the stack itself (bench/stack.py: its own database and Redis server): web as
the Procfile serves it (uvicorn), a real Celery worker and beat (the sweeper). Then
``--clients`` asyncio clients on loopback, each its own user with its own token, loop
for ``--seconds``: submit a 1200x1600 JPEG page photo, poll ``GET /api/v1/jobs/{id}/``
every ``--poll-interval`` seconds until the job is terminal, submit the next. After the
deadline no new job is submitted; jobs in flight are followed to the end (at most
``--drain`` seconds). Then every accepted job id is looked up in the database.

The worker runs the FAKE chain of tests/web/fake_chain.py unless ``--chain real``: it
reads nothing and answers at once, so what is measured is the job spine (upload
validation, the row, the broker, the claim, stage updates, the results transaction,
polling), not the reading, whose speed bench/chain.py measures.

Limits, set explicitly: ``SNAPREAD_SUBMIT_RATE=120/min`` and
``SNAPREAD_MAX_UNFINISHED_JOBS=200`` per user, the defaults; each client is a separate
user with one job in flight, so neither should refuse anything, and a 429 that does
come is counted, obeyed (Retry-After) and reported.

Reports: submits by status, completions by final status, every HTTP status seen, lost
jobs (accepted but missing or unfinished in the database at the end), submit latency
p50/p99, poll latency, submit-to-terminal time, completed jobs per second, web RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from bench.photos import multipart_body, page_photo
from bench.stack import (
    BenchStack,
    add_stack_arguments,
    machine_load,
    make_users,
    rss_mb,
    write_report,
)

LIMITS = {"SNAPREAD_SUBMIT_RATE": "120/min", "SNAPREAD_MAX_UNFINISHED_JOBS": "200"}
TERMINAL = {"succeeded", "rejected", "failed", "canceled"}


@dataclass
class Tally:
    submit_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    to_terminal_s: list[float] = field(default_factory=list)
    submits: Counter[int] = field(default_factory=Counter)
    polls: Counter[int] = field(default_factory=Counter)
    finals: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    unfollowed: list[str] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def client(
    session: aiohttp.ClientSession,
    token: str,
    bodies: list[tuple[bytes, str]],
    index: int,
    deadline: float,
    drain_until: float,
    poll_interval: float,
    tally: Tally,
) -> None:
    auth = {"Authorization": f"Token {token}"}
    n = 0
    while time.monotonic() < deadline:
        body, content_type = bodies[(index + n) % len(bodies)]
        n += 1
        start = time.monotonic()
        try:
            async with session.post(
                "/api/v1/jobs/", data=body, headers={**auth, "Content-Type": content_type}
            ) as r:
                answer = await r.json(content_type=None)
                tally.submits[r.status] += 1
                tally.submit_ms.append((time.monotonic() - start) * 1000)
                retry_after = float(r.headers.get("Retry-After") or 1)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            tally.errors[f"submit {type(exc).__name__}"] += 1
            await asyncio.sleep(1)
            continue
        if r.status == 429:
            await asyncio.sleep(retry_after)
            continue
        if r.status not in (200, 201):
            await asyncio.sleep(1)
            continue
        job_id = answer["id"]
        tally.accepted.append(job_id)
        status = answer["status"]
        while status not in TERMINAL:
            if time.monotonic() > drain_until:
                tally.unfollowed.append(job_id)
                return
            await asyncio.sleep(poll_interval)
            t0 = time.monotonic()
            try:
                async with session.get(f"/api/v1/jobs/{job_id}/", headers=auth) as r:
                    answer = await r.json(content_type=None)
                    tally.polls[r.status] += 1
                    tally.poll_ms.append((time.monotonic() - t0) * 1000)
                    if r.status == 200:
                        status = answer["status"]
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                tally.errors[f"poll {type(exc).__name__}"] += 1
        tally.finals[status] += 1
        tally.to_terminal_s.append(time.monotonic() - start)
        tally.completed_at.append(time.monotonic())


async def drive(stack: BenchStack, args: argparse.Namespace, tokens: list[str]) -> dict:
    photos = [page_photo(300 + k) for k in range(args.photos)]
    bodies = [multipart_body(p) for p in photos]
    web = stack.processes[0]
    tally = Tally()
    peak_rss = [rss_mb(web.pid)]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak_rss.append(rss_mb(web.pid))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(stack.url, connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        drain_until = deadline + args.drain
        await asyncio.gather(
            *(
                client(session, tokens[i], bodies, i, deadline, drain_until,
                       args.poll_interval, tally)
                for i in range(args.clients)
            )
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    stop.set()
    await sampler
    in_window = sum(1 for t in tally.completed_at if t <= deadline)
    return {
        "tally": tally,
        "elapsed_s": elapsed,
        "completed_in_window": in_window,
        "peak_rss_mb": max(peak_rss),
        "photo_bytes_mean": round(sum(len(p) for p in photos) / len(photos)),
    }


def check_database(accepted: list[str]) -> dict:
    """Every accepted job, as the database has it now."""
    from detection.models import Job

    rows = dict(Job.objects.filter(id__in=accepted).values_list("id", "status"))
    statuses = Counter(rows.values())
    found = {str(k) for k in rows}
    missing = [i for i in accepted if i not in found]
    unfinished = [str(k) for k, v in rows.items() if v not in TERMINAL]
    return {
        "accepted": len(accepted),
        "in_database": len(rows),
        "rows_in_table": Job.objects.count(),
        "by_status": dict(statuses),
        "missing": missing,
        "not_terminal": unfinished,
        "lost": len(missing) + len(unfinished),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0, help="submitting window")
    p.add_argument("--drain", type=float, default=300.0, help="most seconds to follow jobs after")
    p.add_argument("--poll-interval", type=float, default=1.0, help="as the page polls")
    p.add_argument("--photos", type=int, default=8, help="distinct photos")
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--chain", choices=["fake", "real"], default="fake")
    add_stack_arguments(p, pool_for="every process")
    args = p.parse_args()

    load_before = machine_load()
    env = dict(LIMITS, DATABASE_POOL_MAX_SIZE=str(args.db_pool))
    with BenchStack("load", env, args.database_url, args.redis_url, args.keep) as stack:
        stack.start_web()
        stack.start_worker("load", args.worker_concurrency, fake_chain=args.chain == "fake")
        stack.start_beat()
        stack.wait_ready()
        tokens = make_users(args.clients, "load")
        run = asyncio.run(drive(stack, args, tokens))
        tally: Tally = run["tally"]
        database = check_database(tally.accepted)
        dead = [proc.name for proc in stack.processes if not proc.alive()]

    every_status = tally.submits + tally.polls
    report = {
        "benchmark": "load",
        "command": (
            f"python -m bench.load --clients {args.clients} --seconds {args.seconds:g} "
            f"--poll-interval {args.poll_interval:g} --worker-concurrency "
            f"{args.worker_concurrency} --chain {args.chain} --db-pool {args.db_pool}"
        ),
        "machine_before": load_before,
        "machine_after": machine_load(),
        "chain": "FAKE (tests/web/fake_chain.py)" if args.chain == "fake" else "real pack",
        "limits": LIMITS,
        "database_pool_max_size": args.db_pool,
        "clients": args.clients,
        "photo": {"size": [1200, 1600], "jpeg_bytes_mean": run["photo_bytes_mean"]},
        "elapsed_s": round(run["elapsed_s"], 1),
        "submits": sum(tally.submits.values()),
        "submits_by_status": {str(k): v for k, v in sorted(tally.submits.items())},
        "polls": sum(tally.polls.values()),
        "polls_by_status": {str(k): v for k, v in sorted(tally.polls.items())},
        "server_errors_5xx": sum(v for k, v in every_status.items() if k >= 500),
        "client_errors": dict(tally.errors),
        "completions": sum(tally.finals.values()),
        "completions_by_status": dict(tally.finals),
        "jobs_per_s_in_window": round(run["completed_in_window"] / args.seconds, 2),
        "jobs_per_s_overall": round(sum(tally.finals.values()) / run["elapsed_s"], 2),
        "submit_latency_ms": {
            "p50": round(percentile(tally.submit_ms, 0.5) or 0, 1),
            "p99": round(percentile(tally.submit_ms, 0.99) or 0, 1),
        },
        "poll_latency_ms": {
            "p50": round(percentile(tally.poll_ms, 0.5) or 0, 1),
            "p99": round(percentile(tally.poll_ms, 0.99) or 0, 1),
        },
        "submit_to_terminal_s": {
            "p50": round(percentile(tally.to_terminal_s, 0.5) or 0, 2),
            "p99": round(percentile(tally.to_terminal_s, 0.99) or 0, 2),
        },
        "unfollowed_after_drain": len(tally.unfollowed),
        "database": {k: v for k, v in database.items() if k not in ("missing", "not_terminal")},
        "lost_job_ids": (database["missing"] + database["not_terminal"])[:20],
        "web_peak_rss_mb": round(run["peak_rss_mb"], 1),
        "processes_dead_at_end": dead,
    }
    report["ok"] = report["server_errors_5xx"] == 0 and database["lost"] == 0 and not dead
    write_report(report, args.out)
    raise SystemExit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
