"""The stack a fault test breaks, and the invariant it checks afterwards.

Each test gets its own Redis (no persistence) and its own database in a throwaway
PostgreSQL cluster shared by the session; workers and the driver are subprocesses
pointed at them by environment, so nothing here touches the machine's services or the
Django settings of the pytest process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.servers import REPO, PostgresCluster, RedisServer, Worker, run_driver

# Short clocks so that every recovery path runs within seconds on two busy cores.
FAULT_ENV = {
    "DJANGO_SETTINGS_MODULE": "project.settings",
    "DEBUG": "1",
    "LOG_LEVEL": "WARNING",
    "SNAPREAD_LEASE_SECONDS": "3",
    "SNAPREAD_RESEND_AFTER_SECONDS": "3",
    "SNAPREAD_MAX_ATTEMPTS": "4",
    "SNAPREAD_MAX_UNFINISHED_JOBS": "1000",
    "SNAPREAD_SUBMIT_RATE": "100000/min",
    "CELERY_TASK_SOFT_TIME_LIMIT": "20",
    "CELERY_TASK_TIME_LIMIT": "25",
    "CELERY_WORKER_PROC_ALIVE_TIMEOUT": "30",
    "FAULTS_STAGE_SECONDS": "0.15",
}
SWEEP_EVERY_S = 0.5
TEMPLATE_DB = "faults_template"


@dataclass
class FaultReport:
    fault: str
    jobs: int
    bound_s: float
    recovery_s: float
    executions: list[int]
    deliveries: list[int]

    def line(self) -> str:
        ex, dl = self.executions, self.deliveries
        return (
            f"{self.fault:<34} jobs={self.jobs:<3} recovered in {self.recovery_s:5.1f}s "
            f"(bound {self.bound_s:.0f}s)  executions/job min={min(ex)} "
            f"mean={statistics.mean(ex):.2f} max={max(ex)} (>1: {sum(e > 1 for e in ex)})  "
            f"deliveries/job max={max(dl) if dl else 0}"
        )


REPORTS: list[FaultReport] = []


def base_env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPREAD_", "CELERY_"))}
    env.update(FAULT_ENV)
    # Never the machine's Redis: each test sets its own; until then, nothing listens here.
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    return env


class Stack:
    """One test's Redis, database, media, workers and driver, and their logs."""

    def __init__(self, postgres: PostgresCluster, workdir: Path) -> None:
        self.postgres = postgres
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.redis = RedisServer(workdir)
        self.redis.start()
        database = f"faults_{uuid.uuid4().hex[:12]}"
        postgres.sql(f"CREATE DATABASE {database} TEMPLATE {TEMPLATE_DB}")
        self.env = base_env()
        self.env.update(
            DATABASE_URL=postgres.url(database),
            REDIS_URL=self.redis.url,
            MEDIA_ROOT=str(workdir / "media"),
            FAULTS_LOG_DIR=str(self.logs),
        )
        self.workers: list[Worker] = []

    def start_worker(self, concurrency: int = 8, pool: str = "threads", **env: str) -> Worker:
        name = f"w{len(self.workers) + 1}"
        worker = Worker(dict(self.env, **env), self.logs, name, concurrency, pool)
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def driver(self, *args: str, **env: str) -> dict:
        return run_driver(dict(self.env, **env), *args)

    def submit(self, n: int = 50, **env: str) -> list[str]:
        return self.driver("submit", str(n), **env)["ids"]

    def settle_in_background(self, timeout: float) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "tests.faults.driver", "settle", str(timeout)]
        return subprocess.Popen(
            [*command, str(SWEEP_EVERY_S)], cwd=REPO, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=(self.logs / "settle.log").open("a"),
        )  # fmt: skip

    def executions(self) -> list[tuple[str, int]]:
        """(job id, worker pid) of every chain execution so far, in order."""
        path = self.logs / "executions.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(line.split()[0], int(line.split()[2])) for line in lines]

    def wait_for_executions(self, n: int, timeout: float = 60) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while (done := self.executions()) and len(done) < n or not done:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} chain executions after {timeout}s")
            time.sleep(0.05)
        return done

    def wait_for_count(self, name: str, n: int, timeout: float = 60) -> Counter[str]:
        """Wait until `name` holds at least `n` lines in all (messages still queued behind
        the jobs' completion arrive after it)."""
        deadline = time.monotonic() + timeout
        while sum((counts := self.count(name)).values()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} lines in {name} after {timeout}s")
            time.sleep(0.05)
        return counts

    def count(self, name: str) -> Counter[str]:
        path = self.logs / name
        lines = path.read_text().splitlines() if path.exists() else []
        return Counter(line.split()[0] for line in lines)

    def log_tails(self, lines: int = 40) -> str:
        """The end of every log of this stack (workers, sweeper, Redis): what to read when
        jobs did not finish."""
        parts = []
        for path in sorted(self.logs.glob("*.log")) + sorted(self.logs.parent.glob("*.log")):
            if path.name in ("executions.log", "deliveries.log"):
                continue
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"\n--- {path.name} (last {len(tail)} lines) ---\n" + "\n".join(tail))
        return "".join(parts)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.kill()


def assert_every_job_finished_once(
    stack: Stack,
    settler: subprocess.Popen[str],
    ids: list[str],
    fault: str,
    fault_at: float,
    bound_s: float,
    record_property: Any,
) -> FaultReport:
    """The invariant: every accepted job is terminal within the bound, with one set of
    regions; chain executions and deliveries per job are recorded and reported."""
    out, _ = settler.communicate(timeout=bound_s + 60)
    result = _last_json(out)
    jobs = result["jobs"]
    assert sorted(jobs) == sorted(ids), "the database lost or invented jobs"
    assert result["done_at"] is not None, (
        f"not all terminal within {bound_s}s: "
        + str(Counter(j["status"] for j in jobs.values()))
        + stack.log_tails()
    )
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", (job_id, job)
        assert job["regions"] == [0, 1], (job_id, job)
    executions = stack.count("executions.log")
    deliveries = stack.count("deliveries.log")
    report = FaultReport(
        fault=fault,
        jobs=len(ids),
        bound_s=bound_s,
        recovery_s=max(0.0, result["done_at"] - fault_at),
        executions=[executions[i] for i in ids],
        deliveries=[deliveries[i] for i in ids],
    )
    assert report.recovery_s <= bound_s, report.line()
    assert min(report.executions) >= 1, "a job succeeded without the chain running"
    REPORTS.append(report)
    record_property("fault_report", report.line())
    return report


def _last_json(out: str) -> dict:
    import json

    return json.loads(out.strip().splitlines()[-1])
