"""The REST API: answers, ownership, cancel, delete, throttling, schema, probes."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from detection import jobs
from detection.api.throttles import SubmitThrottle
from detection.models import Job, Region, Status

from .conftest import image_bytes, queued_job_without_message, upload

pytestmark = pytest.mark.django_db


def submit(api, key: str | None = None, colour=(200, 200, 200)):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return api.post(
        "/api/v1/jobs/", {"image": upload(image_bytes(colour))}, format="multipart", **headers
    )


def test_it_answers_201_with_a_queued_job(alice_api) -> None:
    response = submit(alice_api)

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued"
    assert body["stage"] is None
    assert body["regions"] == [] and body["error"] is None
    assert body["image_url"] == f"/api/v1/jobs/{body['id']}/image/"
    assert Job.objects.get(id=body["id"]).status == Status.QUEUED


def test_it_returns_the_same_job_for_a_repeated_idempotency_key(alice_api) -> None:
    first = submit(alice_api, key="retry-me")
    second = submit(alice_api, key="retry-me")

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert Job.objects.count() == 1


def test_idempotency_keys_belong_to_one_owner(alice_api, bob_api) -> None:
    assert submit(alice_api, key="k").json()["id"] != submit(bob_api, key="k").json()["id"]


def test_it_lists_only_the_callers_jobs_filtered_by_status(alice, alice_api, bob_api) -> None:
    queued = submit(alice_api).json()["id"]
    canceled = submit(alice_api).json()["id"]
    jobs.job_cancel(canceled, alice)
    submit(bob_api)

    everything = alice_api.get("/api/v1/jobs/").json()
    only_canceled = alice_api.get("/api/v1/jobs/?status=canceled").json()

    assert everything["count"] == 2
    assert {j["id"] for j in everything["results"]} == {queued, canceled}
    assert [j["id"] for j in only_canceled["results"]] == [canceled]


def test_it_refuses_an_unknown_status_filter_with_the_error_shape(alice_api) -> None:
    body = alice_api.get("/api/v1/jobs/?status=sleeping").json()

    assert body["code"] == "invalid"
    assert "status" in body["detail"]


def test_another_users_job_is_a_404_everywhere(alice, bob_api) -> None:
    job = queued_job_without_message(alice)
    base = f"/api/v1/jobs/{job.id}/"

    answers = [
        bob_api.get(base),
        bob_api.post(base + "cancel/"),
        bob_api.delete(base),
        bob_api.get(base + "image/"),
        bob_api.get(base + "annotated/"),
        bob_api.get(base + "regions/0/crop/"),
    ]

    assert [a.status_code for a in answers] == [404] * 6
    assert {a.json()["code"] for a in answers} == {"not_found"}
    assert Job.objects.get(id=job.id).status == Status.QUEUED


def test_a_job_s_regions_are_read_only_when_it_has_some(alice, alice_api) -> None:
    job = queued_job_without_message(alice)
    with CaptureQueriesContext(connection) as queued:
        assert alice_api.get(f"/api/v1/jobs/{job.id}/").json()["regions"] == []
    Job.objects.filter(id=job.id).update(status=Status.SUCCEEDED)
    box = {"x0": 1, "y0": 2, "x1": 30, "y1": 12, "label": "number", "score": 0.9}
    Region.objects.create(job=job, index=0, text="3.14", confidence=90, **box)
    with CaptureQueriesContext(connection) as succeeded:
        answer = alice_api.get(f"/api/v1/jobs/{job.id}/").json()

    assert not [q for q in queued.captured_queries if "detection_region" in q["sql"]]
    assert [r["text"] for r in answer["regions"]] == ["3.14"]
    assert len(succeeded.captured_queries) == len(queued.captured_queries) + 1


def test_it_serves_the_input_image_only_to_its_owner(alice, alice_api) -> None:
    job = queued_job_without_message(alice)

    response = alice_api.get(f"/api/v1/jobs/{job.id}/image/")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    assert APIClient().get(f"/api/v1/jobs/{job.id}/image/").status_code == 401


def test_it_asks_for_credentials_with_the_error_shape() -> None:
    body = APIClient().get("/api/v1/jobs/").json()

    assert body == {
        "code": "not_authenticated",
        "message": "Authentication credentials were not provided.",
        "detail": None,
    }


def test_it_cancels_a_queued_job(alice, alice_api) -> None:
    job = queued_job_without_message(alice)

    response = alice_api.post(f"/api/v1/jobs/{job.id}/cancel/")

    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    job.refresh_from_db()
    assert job.status == Status.CANCELED and job.finished_at is not None


def test_it_refuses_to_cancel_a_finished_job_with_409(alice, alice_api) -> None:
    job = queued_job_without_message(alice)
    jobs.job_cancel(job.id, alice)

    body = alice_api.post(f"/api/v1/jobs/{job.id}/cancel/").json()

    assert body["code"] == "not_cancelable"


def test_it_throttles_submissions_with_a_429(alice_api, monkeypatch) -> None:
    from django.core.cache import cache

    cache.clear()
    monkeypatch.setattr(SubmitThrottle, "rate", "2/min", raising=False)

    answers = [submit(alice_api).status_code for _ in range(3)]
    body = submit(alice_api).json()

    assert answers == [201, 201, 429]
    assert body["code"] == "throttled"
    assert body["detail"]["retry_after"] > 0


def test_it_caps_a_users_unfinished_jobs(alice_api, settings) -> None:
    settings.SNAPREAD_MAX_UNFINISHED_JOBS = 1
    submit(alice_api)

    response = submit(alice_api)

    assert response.status_code == 429
    assert response.json()["code"] == "too_many_unfinished_jobs"


def test_it_serves_the_openapi_schema_and_its_ui(client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert schema.status_code == 200
    assert "/api/v1/jobs/{job_id}/cancel/" in schema.json()["paths"]
    assert client.get("/api/docs/").status_code == 200


def test_the_api_docs_load_nothing_from_outside(client) -> None:
    """Swagger UI's scripts and styles come from this server: air-gapped hosts have no CDN."""
    page = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', page)

    assert any("swagger-ui" in a for a in assets), page[:500]
    for asset in assets:
        assert asset.startswith(settings.STATIC_URL), asset
        assert finders.find(asset.removeprefix(settings.STATIC_URL)), asset


def test_unknown_api_urls_answer_json_404(alice_api) -> None:
    response = alice_api.get("/api/v1/nothing-here/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_healthz_says_the_process_is_alive(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_page_asks_for_a_login_and_then_shows_the_upload_form(client, alice) -> None:
    assert client.get("/").status_code == 302

    client.force_login(alice)
    page = client.get("/")

    assert page.status_code == 200
    assert b'type="file"' in page.content


@pytest.mark.django_db
def test_readyz_says_not_ready_while_a_migration_is_not_applied(monkeypatch) -> None:
    from django.db.migrations.recorder import MigrationRecorder

    from detection import health

    monkeypatch.setattr(health, "_migrated", False)
    assert health._check_database() == {"ok": True}
    monkeypatch.setattr(health, "_migrated", False)
    MigrationRecorder.Migration.objects.filter(
        app="detection", name="0003_unfinished_count_after_lock"
    ).delete()  # (rolled back with the test's transaction)
    check = health._check_database()
    assert not check["ok"] and "detection.0003_unfinished_count_after_lock" in check["error"]
