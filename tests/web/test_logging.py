"""JSON logs: one object per line from a real worker and a real web process, each line
about a job carrying its id, each web line its request id."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from detection.logging import ContextFilter, JsonFormatter, bound_job

from .conftest import REPO, image_bytes, purge_queues, upload, wait_for_job
from .fake_chain import EXPLODE
from .live_stack import InstrumentedWorker, LiveWeb, running_web, start_instrumented_worker


@pytest.fixture(scope="module")
def worker(workers, tmp_path_factory) -> InstrumentedWorker:
    return start_instrumented_worker(workers, tmp_path_factory)


@pytest.fixture(scope="module")
def live_web(tmp_path_factory, django_db_setup) -> Iterator[LiveWeb]:
    with running_web(tmp_path_factory) as web:
        yield web


def lines_after(path: Path, offset: int) -> list[str]:
    with path.open("rb") as log:
        log.seek(offset)
        return [line for line in log.read().decode(errors="replace").splitlines() if line]


def parsed(lines: list[str]) -> list[dict]:
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not one JSON object per line: {line!r}") from None
    return entries


def finished_task_lines(path: Path, offset: int, job_ids: list[str]) -> list[dict]:
    """The log's entries after `offset`, once Celery has logged how each job's task
    ended (or after 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        entries = parsed(lines_after(path, offset))
        ended = [e for e in entries if e.get("logger") == "celery.app.trace"]
        if all(about(ended, job_id) for job_id in job_ids) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)


def about(entries: list[dict], job_id: str) -> list[dict]:
    """The lines that mention the job anywhere (message, task data, traceback)."""
    return [e for e in entries if job_id in json.dumps({**e, "job_id": None})]


@pytest.mark.django_db(transaction=True)
def test_every_worker_line_about_a_job_carries_its_id(
    worker: InstrumentedWorker, alice_api
) -> None:
    purge_queues()
    offset = worker.log_path.stat().st_size
    good = alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")
    bad = alice_api.post(
        "/api/v1/jobs/", {"image": upload(image_bytes(EXPLODE))}, format="multipart"
    )
    good_id, bad_id = good.json()["id"], bad.json()["id"]
    wait_for_job(good_id)
    wait_for_job(bad_id)
    # The job's row is final before its task returns and Celery logs how it ended.
    entries = finished_task_lines(worker.log_path, offset, [good_id, bad_id])

    for job_id in (good_id, bad_id):
        lines = about(entries, job_id)
        assert len(lines) >= 2, entries  # received, and how it ended
        assert all(e["job_id"] == job_id for e in lines), lines
        assert all(e["task_id"] for e in lines), lines
    failure = [e for e in about(entries, bad_id) if e["level"] == "ERROR"]
    assert failure and "the fake chain exploded" in failure[0]["exc_info"]
    # and nothing about one job is tagged with the other
    assert not [e for e in about(entries, good_id) if e["job_id"] == bad_id]


@pytest.mark.django_db(transaction=True)
def test_web_lines_carry_the_request_id_and_the_job_they_concern(live_web: LiveWeb, alice) -> None:
    token = Token.objects.get_or_create(user=alice)[0].key
    auth = {"Authorization": f"Token {token}"}
    offset = live_web.log_path.stat().st_size

    submitted = requests.post(
        f"{live_web.base}/api/v1/jobs/",
        headers={**auth, "X-Request-ID": "submit-1"},
        files={"image": ("p.png", image_bytes())},
        timeout=30,
    )
    job_id = submitted.json()["id"]
    polled = requests.get(
        f"{live_web.base}/api/v1/jobs/{job_id}/",
        headers={**auth, "X-Request-ID": "poll-1"},
        timeout=30,
    )
    listed = requests.get(f"{live_web.base}/api/v1/jobs/", headers=auth, timeout=30)

    assert submitted.headers["X-Request-ID"] == "submit-1" and polled.status_code == 200
    entries = parsed(lines_after(live_web.log_path, offset))
    by_request = {}
    for entry in entries:
        by_request.setdefault(entry["request_id"], []).append(entry)
    submit_lines, poll_lines = by_request["submit-1"], by_request["poll-1"]
    assert {e["job_id"] for e in submit_lines} == {job_id}
    assert {e["message"] for e in submit_lines} >= {"job submitted", "POST /api/v1/jobs/ 201"}
    assert [(e["route"], e["status"]) for e in poll_lines] == [("api/v1/jobs/<uuid:job_id>/", 200)]
    assert poll_lines[0]["job_id"] == job_id
    list_lines = by_request[listed.headers["X-Request-ID"]]
    assert [e["job_id"] for e in list_lines] == [None]  # a list is about no one job


def test_the_json_formatter_writes_extra_fields_and_tracebacks() -> None:
    record = logging.makeLogRecord(
        {"name": "t", "levelname": "ERROR", "msg": "boom %s", "args": ("x",), "queue": "gpu"}
    )
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    with bound_job("job-1"):
        ContextFilter().filter(record)

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "boom x" and entry["job_id"] == "job-1"
    assert entry["queue"] == "gpu" and "ValueError: bad" in entry["exc_info"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [({"DEBUG": "0", "SECRET_KEY": "k" * 50}, "json"), ({"DEBUG": "1"}, "text"),
     ({"DEBUG": "1", "LOG_FORMAT": "json"}, "json")],
)  # fmt: skip
def test_production_settings_log_json_by_default(env: dict, expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "LOG_FORMAT")}
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.LOG_FORMAT)"],
        env={**clean, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.stdout.strip().splitlines()[-1] == expected, result.stderr


def test_an_unknown_log_format_stops_the_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.LOG_FORMAT"],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_FORMAT": "xml"},
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode != 0 and "LOG_FORMAT='xml'" in result.stderr
