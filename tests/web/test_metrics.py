"""Prometheus metrics: the web's /metrics (who may read it, what it counts) and a real
worker's endpoint after it ran jobs."""

from __future__ import annotations

import pytest
import requests
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from project.celery import app
from workers.metrics import QueueDepthCollector

from .conftest import image_bytes, purge_queues, queued_job_without_message, upload, wait_for_job
from .fake_chain import EXPLODE
from .live_stack import InstrumentedWorker, samples, start_instrumented_worker, value

DETAIL_ROUTE = "api/v1/jobs/<uuid:job_id>/"


@pytest.fixture(scope="module")
def worker(workers, tmp_path_factory) -> InstrumentedWorker:
    return start_instrumented_worker(workers, tmp_path_factory)


def scrape_web(**headers: str) -> str:
    response = Client().get("/metrics", **headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


# -- the web --------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_counts_requests_by_route_template_and_status(alice, alice_api) -> None:
    job = queued_job_without_message(alice)
    before = scrape_web()

    for _ in range(3):
        alice_api.get(f"/api/v1/jobs/{job.id}/")
    alice_api.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/")
    alice_api.get("/no/such/page/at/all/")
    after = scrape_web()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"method": "GET", "route": DETAIL_ROUTE, "status": "200"}
    assert delta("snapread_http_requests_total", **ok) == 3
    assert delta("snapread_http_requests_total", **{**ok, "status": "404"}) == 1
    assert delta("snapread_http_requests_total", route="<unmatched>", status="404") == 1
    assert (
        delta("snapread_http_request_duration_seconds_count", method="GET", route=DETAIL_ROUTE) == 4
    )
    # Bounded labels: no path, no id ever becomes a label value.
    routes = {s.labels["route"] for s in samples(after, "snapread_http_requests_total")}
    assert not any(str(job.id) in route or "no/such" in route for route in routes)


def test_metrics_are_refused_to_a_remote_client(settings) -> None:
    settings.METRICS_TOKEN = ""
    remote = Client(REMOTE_ADDR="203.0.113.7").get("/metrics")
    proxied = Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7")

    assert remote.status_code == 403 and remote.json()["code"] == "forbidden"
    assert proxied.status_code == 403


def test_metrics_are_served_to_anyone_with_the_token(settings) -> None:
    settings.METRICS_TOKEN = "scrape-me-7f3a"
    remote = Client(REMOTE_ADDR="203.0.113.7")

    good = remote.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-7f3a")
    wrong = remote.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-7f3b")
    settings.METRICS_ALLOW_LOOPBACK = False
    local_without_token = Client().get("/metrics")

    assert good.status_code == 200 and b"snapread_http_requests_total" in good.content
    assert wrong.status_code == 403
    assert local_without_token.status_code == 403


def test_every_answer_carries_a_request_id_and_keeps_a_sane_one_from_the_client() -> None:
    kept = Client().get("/healthz", HTTP_X_REQUEST_ID="edge-42.a")
    replaced = Client().get("/healthz", HTTP_X_REQUEST_ID="<script>" * 20)

    assert kept["X-Request-ID"] == "edge-42.a"
    assert len(replaced["X-Request-ID"]) == 32 and "<" not in replaced["X-Request-ID"]


# -- the worker -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_serves_job_stage_and_batch_metrics_after_real_jobs(
    worker: InstrumentedWorker, alice_api
) -> None:
    purge_queues()
    before = worker.scrape()

    good = [
        alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")
        for _ in range(2)
    ]
    bad = alice_api.post(
        "/api/v1/jobs/", {"image": upload(image_bytes(EXPLODE))}, format="multipart"
    )
    for response in [*good, bad]:
        wait_for_job(response.json()["id"])

    # The run time is the last thing the worker records of a job.
    runs = "snapread_worker_job_run_seconds_count"
    after = worker.scrape_until(lambda text: value(text, runs) - value(before, runs) >= 3)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("snapread_worker_jobs_total", status="succeeded") == 2
    assert delta("snapread_worker_jobs_total", status="failed") == 1
    # The FAKE chain reports 1 ms per stage for each image it read; classify also counts
    # the decoding of the stored photo, whose time depends on the machine.
    for stage in ("classify", "detect", "crop", "ocr"):
        assert delta("snapread_worker_stage_seconds_count", stage=stage) == 2
    for stage in ("detect", "crop", "ocr"):
        assert delta("snapread_worker_stage_seconds_bucket", stage=stage, le="0.005") == 2
        assert delta("snapread_worker_stage_seconds_sum", stage=stage) == pytest.approx(0.002)
    assert delta("snapread_worker_stage_seconds_sum", stage="classify") > 0.002
    # The worker batches what arrives together: the three images in one to three batches.
    assert delta("snapread_worker_batch_size_sum") == 3
    assert 1 <= delta("snapread_worker_batch_size_count") <= 3
    assert delta("snapread_worker_job_run_seconds_count", status="succeeded") == 2
    assert delta("snapread_worker_job_queue_wait_seconds_count") == 3
    assert value(after, "snapread_queue_depth_up") == 1
    assert {s.labels["queue"] for s in samples(after, "snapread_queue_depth")} == {"gpu", "default"}
    # The values came from where the chain ran: with the prefork pool, the children's
    # files in the multiprocess directory.
    assert any(worker.metrics_dir.glob("*.db"))


def test_queue_depth_is_the_number_of_messages_waiting_at_every_priority(settings) -> None:
    queue = "metrics-probe"
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    for priority in (None, None, 5):
        options = {} if priority is None else {"priority": priority}
        app.send_task("workers.tasks.sweep", queue=queue, **options)
    collector = QueueDepthCollector(settings.REDIS_URL, [queue])
    try:
        families = {f.name: f for f in collector.collect()}
        [sample] = families["snapread_queue_depth"].samples
        assert (sample.labels, sample.value) == ({"queue": queue}, 3)
        assert families["snapread_queue_depth_up"].samples[0].value == 1
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)


def test_queue_depth_says_when_the_broker_does_not_answer() -> None:
    collector = QueueDepthCollector("redis://127.0.0.1:1/0", ["gpu"])

    families = {f.name: f for f in collector.collect()}

    assert families["snapread_queue_depth"].samples == []
    assert families["snapread_queue_depth_up"].samples[0].value == 0


@pytest.mark.django_db(transaction=True)
def test_the_worker_endpoint_parses_as_prometheus_text(
    worker: InstrumentedWorker, alice_api
) -> None:
    # A labelled family appears once something was counted in it: read one job first,
    # whatever ran before (another test may have started this worker afresh).
    job = alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")
    wait_for_job(job.json()["id"])
    response = requests.get(worker.metrics_url, timeout=5)

    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "snapread_worker_jobs",
        "snapread_worker_stage_seconds",
        "snapread_queue_depth",
    } <= names


class FakeCuda:
    """A CUDA device in use, which this machine cannot have (the one mock here)."""

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def memory_allocated(self, index: int) -> int:
        return 3_000_000

    def memory_reserved(self, index: int) -> int:
        return 4_194_304

    def max_memory_allocated(self, index: int) -> int:
        return 3_500_000


def gpu_memory(kind: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(
        "snapread_worker_gpu_memory_bytes", {"device": "0", "kind": kind}
    )


def test_gpu_memory_is_recorded_only_where_cuda_is_in_use(monkeypatch) -> None:
    import sys
    import types

    from workers import metrics

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=FakeCuda()))
    metrics.observe_gpu_memory()
    assert (gpu_memory("allocated"), gpu_memory("reserved")) == (3_000_000, 4_194_304)
    assert gpu_memory("peak_allocated") == 3_500_000

    idle = FakeCuda()
    idle.is_initialized = lambda: False  # type: ignore[method-assign]
    idle.memory_allocated = lambda index: 1  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=idle))
    metrics.observe_gpu_memory()
    assert gpu_memory("allocated") == 3_000_000  # not asked: CUDA was not initialised
