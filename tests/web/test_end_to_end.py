"""End to end with the REAL reading chain and the reference pack (models/reference).

POST a rendered problem-book page, poll the API to `succeeded`, find the numbers read
and the rows in PostgreSQL. Fails loudly when the pack is missing.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from detection.models import Job, Status

from .conftest import queued_job_without_message, upload, wait_for_job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
TERMINAL = {"succeeded", "rejected", "failed", "canceled"}


def poll(api, job_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/api/v1/jobs/{job_id}/").json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {body}")


def test_it_reads_a_rendered_page_with_the_reference_pack(reading_worker, alice_api) -> None:
    from workers.training.synth import fonts, render_page

    page = render_page(92_000_777, fonts("heldout"))
    data = io.BytesIO()
    page.image.save(data, "JPEG", quality=92)

    response = alice_api.post(
        "/api/v1/jobs/", {"image": upload(data.getvalue(), "page.jpg")}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    body = poll(alice_api, response.json()["id"])

    assert body["status"] == "succeeded", body
    assert body["classification"]["relevant"] is True
    assert set(body["timings_ms"]) >= {"classify", "detect", "crop", "ocr"}
    assert body["pack"]["name"]
    expected = {text for _, text in page.numbers}
    read = {r["text"] for r in body["regions"]}
    # Pack 1.0.0 reads about two numbers in three (docs/models.md): a guard, not the target.
    assert len(read & expected) >= max(1, len(expected) // 3), (read, expected)
    job = Job.objects.get(id=body["id"])
    assert job.status == Status.SUCCEEDED
    assert job.regions.count() == len(body["regions"])
    assert all(alice_api.get(r["crop_url"]).status_code == 200 for r in body["regions"])


def test_it_streams_each_stage_of_the_real_chain_over_the_socket(reading_worker, alice) -> None:
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator
    from rest_framework.authtoken.models import Token

    from project.asgi import application
    from project.celery import app
    from workers.training.synth import fonts, render_page

    page = render_page(92_000_778, fonts("heldout"))
    data = io.BytesIO()
    page.image.save(data, "JPEG", quality=92)
    # Stored without a message, so the socket is open before the worker starts.
    job = queued_job_without_message(alice, data=data.getvalue())
    token = Token.objects.get_or_create(user=alice)[0].key

    async def scenario() -> list[dict]:
        socket = WebsocketCommunicator(
            application,
            f"/ws/jobs/{job.id}/?token={token}",
            headers=[(b"origin", b"http://localhost:8000")],
        )
        connected, _ = await socket.connect(timeout=5)
        assert connected
        messages = [await socket.receive_json_from(timeout=5)]
        app.send_task("workers.tasks.read_job", args=[str(job.id)], queue="gpu")
        while messages[-1]["job"]["status"] not in TERMINAL:
            messages.append(await socket.receive_json_from(timeout=120))
        await socket.disconnect()
        return messages

    messages = async_to_sync(scenario)()
    states = [(m["job"]["status"], m["job"]["stage"]) for m in messages]
    assert states == [
        ("queued", None),
        ("running", None),
        ("running", "classify"),
        ("running", "detect"),
        ("running", "crop"),
        ("running", "ocr"),
        ("succeeded", None),
    ]
    final = messages[-1]["job"]
    assert final["regions"] and final["classification"]["relevant"] is True


def test_the_reading_worker_reuses_the_memory_its_batches_free(reading_worker, alice) -> None:
    """workers/memory.py in the worker as it runs (set up at worker_init): after its first
    batches, the next reuse what the chain freed instead of faulting it in again. A third
    round of eight faulted in 2 to 3,900 pages a job held, 17,600 to 19,600 with
    SNAPREAD_HOLD_MEMORY=0 (glibc's defaults; docs/benchmarks.md, The allocator)."""
    from project.celery import app
    from workers.training.synth import fonts, render_page

    pages = []
    for seed in range(92_000_780, 92_000_788):
        data = io.BytesIO()
        render_page(seed, fonts("heldout")).image.save(data, "JPEG", quality=92)
        pages.append(data.getvalue())

    def read_round() -> None:
        # Stored first, then every message at once, so that the worker batches them.
        jobs = [queued_job_without_message(alice, data=page) for page in pages]
        for job in jobs:
            app.send_task("workers.tasks.read_job", args=[str(job.id)], queue="gpu")
        for job in jobs:
            assert wait_for_job(job.id, timeout=180).status == Status.SUCCEEDED

    def minor_faults() -> int:
        stat = Path(f"/proc/{reading_worker.process.pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[7])

    for _ in range(2):  # the heap grows to what a batch of these pages needs
        read_round()
    before = minor_faults()
    read_round()
    per_job = (minor_faults() - before) / len(pages)
    assert per_job < 10_000, f"{per_job:.0f} page faults a job"
    assert "allocator: freed memory held" in reading_worker.log_path.read_text()
