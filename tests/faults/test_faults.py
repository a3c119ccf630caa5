"""Break the servers under 50 accepted jobs and check that every one finishes, once.

The subject is the spine's delivery promise (at-least-once execution, exactly-once
results), so the worker runs the FAKE chain (tests/web/fake_chain.py), slowed so that
jobs are mid-chain when something dies. Recovery times and executions per job are
printed in the session summary.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.stack import Stack, assert_every_job_finished_once

pytestmark = [pytest.mark.faults, pytest.mark.slow]

JOBS = 50
BOUND_S = 90.0


def test_it_finishes_every_job_once_after_a_worker_child_is_killed_mid_chain(
    stack: Stack, record_property
) -> None:
    # Prefork, the pool a deployment may choose instead of threads: a child dies alone.
    worker = stack.start_worker(concurrency=2, pool="prefork")
    ids = stack.submit(JOBS)
    settler = stack.settle_in_background(BOUND_S)
    job_id, pid = stack.wait_for_executions(10)[-1]
    assert pid in worker.children()
    os.kill(pid, signal.SIGKILL)
    fault_at = time.time()

    report = assert_every_job_finished_once(
        stack, settler, ids, "SIGKILL worker child mid-chain", fault_at, BOUND_S, record_property
    )
    assert stack.count("executions.log")[job_id] == 2, "the killed job ran once more"
    assert max(report.executions) <= 2


def test_it_finishes_every_job_after_the_whole_worker_is_killed(
    stack: Stack, record_property
) -> None:
    worker = stack.start_worker()
    ids = stack.submit(JOBS)
    settler = stack.settle_in_background(BOUND_S)
    stack.wait_for_executions(10)
    worker.kill_all()
    fault_at = time.time()
    stack.start_worker()

    report = assert_every_job_finished_once(
        stack, settler, ids, "SIGKILL whole worker, new one", fault_at, BOUND_S, record_property
    )
    assert max(report.executions) <= 2


def test_it_finishes_every_job_after_redis_restarts_empty(stack: Stack, record_property) -> None:
    stack.start_worker()
    ids = stack.submit(JOBS)
    settler = stack.settle_in_background(BOUND_S)
    stack.wait_for_executions(10)
    stack.redis.kill()
    fault_at = time.time()
    time.sleep(1.0)
    stack.redis.start()

    report = assert_every_job_finished_once(
        stack, settler, ids, "kill Redis, start it empty", fault_at, BOUND_S, record_property
    )
    assert max(report.executions) <= 2


def test_it_finishes_every_job_after_postgresql_restarts_mid_write(
    stack: Stack, record_property
) -> None:
    stack.start_worker()
    ids = stack.submit(JOBS)
    settler = stack.settle_in_background(BOUND_S)
    stack.wait_for_executions(10)
    stack.postgres.stop("fast")
    fault_at = time.time()
    time.sleep(1.0)
    stack.postgres.start()

    report = assert_every_job_finished_once(
        stack, settler, ids, "restart PostgreSQL mid-write", fault_at, BOUND_S, record_property
    )
    assert max(report.executions) <= 3


def test_a_message_delivered_twice_at_once_runs_the_chain_once(
    stack: Stack, record_property
) -> None:
    ids = stack.submit(JOBS)
    stack.driver("send-again")
    fault_at = time.time()
    # Two threads of one worker take the two copies of a message side by side.
    stack.start_worker()
    settler = stack.settle_in_background(BOUND_S)

    report = assert_every_job_finished_once(
        stack, settler, ids, "same message twice at once", fault_at, BOUND_S, record_property
    )
    assert report.executions == [1] * JOBS
    # Every job can be done while some second copies still wait in the queue; they must
    # be taken too, and claim nothing.
    deliveries = stack.wait_for_count("deliveries.log", 2 * JOBS, timeout=BOUND_S)
    assert [deliveries[i] for i in ids] == [2] * JOBS
    executions = stack.count("executions.log")
    assert [executions[i] for i in ids] == [1] * JOBS


def test_it_finishes_jobs_whose_enqueue_after_commit_failed(stack: Stack, record_property) -> None:
    stack.redis.kill()
    ids = stack.submit(JOBS)
    stack.redis.start()
    fault_at = time.time()
    stack.start_worker()
    settler = stack.settle_in_background(BOUND_S)

    report = assert_every_job_finished_once(
        stack, settler, ids, "broker down at submit", fault_at, BOUND_S, record_property
    )
    assert report.executions == [1] * JOBS


def test_a_task_past_the_visibility_timeout_runs_the_chain_once(
    stack: Stack, record_property
) -> None:
    # Each job takes ~2.4 s against a 1 s visibility timeout: Redis hands the message of a
    # running task to the other worker. The lease (3 s, renewed every stage) still holds.
    slow = {"FAULTS_STAGE_SECONDS": "0.6", "FAULTS_VISIBILITY_TIMEOUT": "1"}
    stack.start_worker(concurrency=1, **slow)
    stack.start_worker(concurrency=1, **slow)
    ids = stack.submit(12)
    fault_at = time.time()
    settler = stack.settle_in_background(BOUND_S)

    report = assert_every_job_finished_once(
        stack, settler, ids, "task past visibility timeout", fault_at, BOUND_S, record_property
    )
    assert report.executions == [1] * len(ids)
    assert max(report.deliveries) >= 2, "Redis never re-delivered: the test proved nothing"
