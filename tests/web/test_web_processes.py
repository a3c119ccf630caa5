"""The Procfile's web server is several processes (uvicorn --workers): they share the
port, and /metrics, whichever of them answers, counts what all of them served."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import processes
from detection.metrics import prepare_multiprocess_dir

from .conftest import REPO
from .live_stack import LiveWeb, running_web

REQUESTS = 120


@pytest.fixture(scope="module")
def live_web(tmp_path_factory, django_db_setup) -> Iterator[LiveWeb]:
    with running_web(tmp_path_factory) as web:
        yield web
    shutil.rmtree(metrics_dir(web), ignore_errors=True)


def metrics_dir(web: LiveWeb) -> Path:
    """The Procfile's directory for this server's metrics, under the checkout's var/."""
    return REPO / "var" / "web-metrics" / str(web.port)


def unmatched_404s(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "snapread_http_requests_total"
        and sample.labels == {"method": "GET", "route": "<unmatched>", "status": "404"}
    )


def fresh_get(url: str) -> requests.Response:
    # A new connection each time, so that any of the processes may accept it.
    with requests.Session() as session:
        return session.get(url, headers={"Connection": "close"}, timeout=10)


def test_the_web_runs_two_processes_that_all_answer_and_metrics_sum_them(
    live_web: LiveWeb,
) -> None:
    # uvicorn's supervisor spawns the processes that serve (and multiprocessing's
    # resource tracker beside them).
    children = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        for pid, (_, parent) in processes().items()
        if parent == live_web.process.pid
    }
    serving = {
        pid
        for pid, cmd in children.items()
        if b"spawn_main" in cmd and b"resource_tracker" not in cmd
    }
    assert len(serving) == 2, children

    with ThreadPoolExecutor(8) as pool:
        urls = [f"{live_web.base}/no/such/page/{i}/" for i in range(REQUESTS)]
        statuses = list(pool.map(lambda url: fresh_get(url).status_code, urls))
    assert statuses == [404] * REQUESTS

    # Each process writes its own files, named by its pid: both served some requests.
    files = metrics_dir(live_web).glob("counter_*.db")
    assert {int(path.stem.rsplit("_", 1)[1]) for path in files} == serving

    # Whichever process answers the scrape, it counts every process's requests.
    for _ in range(6):
        response = fresh_get(f"{live_web.base}/metrics")
        assert response.status_code == 200
        assert unmatched_404s(response.text) == REQUESTS


def test_a_web_process_clears_the_metrics_of_processes_that_are_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f"counter_{gone.pid}.db"
    sibling = tmp_path / f"histogram_{os.getppid()}.db"  # a live process's file
    other = tmp_path / "notes.txt"
    for path in (stale, sibling, other):
        path.write_bytes(b"x")

    prepare_multiprocess_dir(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()
    prepare_multiprocess_dir(str(tmp_path))

    assert not stale.exists()
    assert sibling.exists() and other.exists()
