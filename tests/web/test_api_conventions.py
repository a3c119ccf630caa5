"""What a DRF client expects of the API: conditional GET with ETags, Retry-After while a
job is unfinished, date filters, a schema with examples and error shapes, and the
documented Python client working against the live stack."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from rest_framework.authtoken.models import Token

from detection import jobs
from detection.models import Status
from project.celery import app

from .conftest import REPO, image_bytes, queued_job_without_message, upload
from .fake_chain import SLOW
from .live_stack import LiveWeb, running_web

CLIENT_PATH = REPO / "docs" / "examples" / "client.py"


@pytest.fixture(scope="module")
def live_web(tmp_path_factory, django_db_setup) -> Iterator[LiveWeb]:
    with running_web(tmp_path_factory) as web:
        yield web


def job_url(job) -> str:
    return f"/api/v1/jobs/{job.id}/"


# -- ETag and conditional GET ---------------------------------------------------------


@pytest.mark.django_db
def test_it_answers_304_to_the_current_etag_strong_or_weak(alice, alice_api) -> None:
    job = queued_job_without_message(alice)
    first = alice_api.get(job_url(job))
    etag = first["ETag"]

    strong = alice_api.get(job_url(job), HTTP_IF_NONE_MATCH=etag)
    weak = alice_api.get(job_url(job), HTTP_IF_NONE_MATCH=f'"other", W/{etag}')
    star = alice_api.get(job_url(job), HTTP_IF_NONE_MATCH="*")
    stale = alice_api.get(job_url(job), HTTP_IF_NONE_MATCH='"not-the-etag"')

    assert first.status_code == 200 and etag.startswith('"') and etag.endswith('"')
    assert (strong.status_code, weak.status_code, star.status_code) == (304, 304, 304)
    assert strong.content == b"" and strong["ETag"] == etag
    assert stale.status_code == 200 and stale.json()["id"] == str(job.id)


@pytest.mark.django_db
def test_the_etag_changes_with_every_state_change(alice, alice_api) -> None:
    job = queued_job_without_message(alice)
    seen = [alice_api.get(job_url(job))["ETag"]]
    claim = jobs.job_claim(job.id, "test-host")
    seen.append(alice_api.get(job_url(job))["ETag"])
    for stage in ("classify", "detect"):
        jobs.job_advance_stage(claim, stage)
        seen.append(alice_api.get(job_url(job))["ETag"])
    jobs.job_cancel(job.id, alice)
    seen.append(alice_api.get(job_url(job))["ETag"])

    assert len(set(seen)) == len(seen) == 5
    # and an unchanged job keeps its ETag
    assert alice_api.get(job_url(job))["ETag"] == seen[-1]
    assert alice_api.get(job_url(job), HTTP_IF_NONE_MATCH=seen[0]).status_code == 200


@pytest.mark.django_db
def test_a_304_never_tells_another_user_anything(alice, bob_api, alice_api) -> None:
    job = queued_job_without_message(alice)
    etag = alice_api.get(job_url(job))["ETag"]

    response = bob_api.get(job_url(job), HTTP_IF_NONE_MATCH=etag)

    assert response.status_code == 404 and response.json()["code"] == "not_found"


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_after_is_sent_only_while_the_job_is_unfinished(alice, alice_api) -> None:
    submitted = alice_api.post(
        "/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart"
    )
    job_id = submitted.json()["id"]
    queued = alice_api.get(f"/api/v1/jobs/{job_id}/")
    claim = jobs.job_claim(job_id, "test-host")
    running = alice_api.get(f"/api/v1/jobs/{job_id}/")
    not_modified = alice_api.get(f"/api/v1/jobs/{job_id}/", HTTP_IF_NONE_MATCH=running["ETag"])
    jobs.job_fail(claim, "reader_error", "as the test asks")
    failed = alice_api.get(f"/api/v1/jobs/{job_id}/")

    assert submitted.status_code == 201 and submitted["Retry-After"] == "2"
    assert queued["Retry-After"] == "2"
    assert running["Retry-After"] == "1"
    assert not_modified.status_code == 304 and not_modified["Retry-After"] == "1"
    assert failed.json()["status"] == Status.FAILED and "Retry-After" not in failed


# -- filters --------------------------------------------------------------------------


@pytest.fixture
def dated_jobs(alice):
    base = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    return {
        day: queued_job_without_message(alice, created_at=base + timedelta(days=day))
        for day in (0, 1, 2, 3)
    }


def listed(api, query: str) -> list[str]:
    response = api.get(f"/api/v1/jobs/?{query}")
    assert response.status_code == 200, response.json()
    return [job["id"] for job in response.json()["results"]]


@pytest.mark.django_db
def test_it_filters_by_creation_time(alice_api, dated_jobs) -> None:
    ids = {day: str(job.id) for day, job in dated_jobs.items()}

    after = listed(alice_api, "created_after=2026-03-11T12:00:00Z")
    before = listed(alice_api, "created_before=2026-03-11T12:00:00Z")
    between = listed(alice_api, "created_after=2026-03-11&created_before=2026-03-13T00:00:00Z")
    # "+01:00" unencoded in a query string arrives as " 01:00": still read as an offset
    offset = listed(alice_api, "created_after=2026-03-12T13:00:00+01:00")
    with_status = listed(alice_api, "created_after=2026-03-12T00:00:00Z&status=queued")

    assert after == [ids[3], ids[2], ids[1]]  # newest first, the bound included
    assert before == [ids[0]]
    assert between == [ids[2], ids[1]]
    assert offset == [ids[3], ids[2]]
    assert with_status == [ids[3], ids[2]]


@pytest.mark.django_db
def test_it_pages_a_filtered_list(alice_api, dated_jobs) -> None:
    first = alice_api.get("/api/v1/jobs/?created_after=2026-03-11T00:00:00Z&page_size=2").json()
    second = requests.utils.urlparse(first["next"])
    rest = alice_api.get(f"{second.path}?{second.query}").json()

    assert first["count"] == 3 and len(first["results"]) == 2
    assert len(rest["results"]) == 1 and rest["next"] is None
    assert str(dated_jobs[1].id) == rest["results"][0]["id"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01T00:00:00Z", "created_before"),
        ("created_after=1700000000", "created_after"),
        ("status=finished", "status"),
    ],
)
def test_it_refuses_a_bad_filter_with_a_400_naming_the_field(alice_api, query, field) -> None:
    response = alice_api.get(f"/api/v1/jobs/?{query}")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert set(body) == {"code", "message", "detail"}
    assert field in body["detail"]


@pytest.mark.django_db
def test_a_window_that_ends_before_it_starts_holds_no_jobs(alice_api, dated_jobs) -> None:
    window = "created_after=2026-03-12T00:00:00Z&created_before=2026-03-11T00:00:00Z"
    response = alice_api.get(f"/api/v1/jobs/?{window}")

    assert response.status_code == 200
    assert response.json()["results"] == []


# -- the schema -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def openapi() -> dict:
    from django.test import Client

    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_operation_documents_its_errors_in_the_one_shape_with_examples(openapi) -> None:
    error_schema = openapi["components"]["schemas"]["ErrorBody"]
    assert set(error_schema["required"]) >= {"code", "message", "detail"}
    for name, operation in operations(openapi):
        errors = {s: r for s, r in operation["responses"].items() if s.startswith(("4", "5"))}
        assert "401" in errors, name
        assert "404" in errors or "{job_id}" not in name, name
        for status, response in errors.items():
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (name, status)
            assert content["examples"], (name, status)
            for example in content["examples"].values():
                assert set(example["value"]) == {"code", "message", "detail"}, (name, status)


def test_every_json_answer_and_request_body_has_an_example(openapi) -> None:
    for name, operation in operations(openapi):
        for status, response in operation["responses"].items():
            content = response.get("content", {}).get("application/json")
            if content is not None:
                assert content.get("examples"), (name, status)
        body = operation.get("requestBody")
        if body is not None:
            for media, content in body["content"].items():
                assert content.get("examples"), (name, media)


def test_the_schema_documents_conditional_get_retry_after_and_both_auth_schemes(openapi) -> None:
    detail = openapi["paths"]["/api/v1/jobs/{job_id}/"]["get"]
    listing = openapi["paths"]["/api/v1/jobs/"]["get"]
    schemes = openapi["components"]["securitySchemes"]

    assert "If-None-Match" in {p["name"] for p in detail["parameters"]}
    assert set(detail["responses"]["200"]["headers"]) == {"ETag", "Retry-After"}
    assert "304" in detail["responses"]
    assert {"created_after", "created_before", "status", "page", "page_size"} <= {
        p["name"] for p in listing["parameters"]
    }
    assert schemes["tokenAuth"]["in"] == "header" and "Token" in schemes["tokenAuth"]["description"]
    assert schemes["cookieAuth"]["in"] == "cookie"
    assert all(op["security"] for _, op in operations(openapi))


# -- the documented client, against the live stack ------------------------------------


def load_client():
    spec = importlib.util.spec_from_file_location("snapread_client_example", CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_api_md_shows_the_client_file_verbatim() -> None:
    docs = (REPO / "docs" / "api.md").read_text()

    assert CLIENT_PATH.read_text().strip() in docs


class Recorder(requests.Session):
    """A requests session that remembers what it sent and got, and when."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[float, str, dict, int, dict]] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().request(method, url, *args, **kwargs)
        sent = dict(response.request.headers)
        self.calls.append((time.monotonic(), method, sent, response.status_code, response.headers))
        return response


@pytest.mark.django_db(transaction=True)
def test_the_documented_client_polls_a_job_to_the_end(
    spine_worker, live_web, alice, tmp_path: Path
) -> None:
    client = load_client()
    token = Token.objects.get_or_create(user=alice)[0].key
    photo = tmp_path / "slow.png"
    photo.write_bytes(image_bytes(SLOW))  # about 2.4 s in the FAKE chain: several polls
    session = Recorder()

    job = client.submit(live_web.base, token, str(photo), session=session)
    done = client.wait_by_polling(live_web.base, token, job["id"], timeout=60, session=session)

    assert job["status"] == "queued" and done["status"] == "succeeded"
    assert [r["text"] for r in done["regions"]] == ["12", "345"]
    polls = session.calls[1:]
    assert len(polls) >= 2
    # Every poll after the first sends the ETag it last got, and waits as Retry-After says.
    for (t0, _, _, _, got), (t1, _, sent, _, _) in zip(polls, polls[1:], strict=False):
        assert sent["If-None-Match"]
        assert t1 - t0 >= float(got["Retry-After"]) - 0.05
    assert {status for *_, status, _ in polls} <= {200, 304}


@pytest.mark.django_db(transaction=True)
def test_the_documented_client_follows_a_job_over_the_websocket(
    spine_worker, live_web, alice, tmp_path: Path
) -> None:
    client = load_client()
    token = Token.objects.get_or_create(user=alice)[0].key
    photo = tmp_path / "page.png"
    photo.write_bytes(image_bytes((10, 200, 30)))

    # The socket must be open before the job starts, or there is little to follow: the
    # job is stored without a message, the client connects, then the message goes.
    job = queued_job_without_message(alice)

    async def follow() -> dict:
        watcher = asyncio.create_task(
            client.wait_by_websocket(live_web.base, token, str(job.id), 60)
        )
        await asyncio.sleep(1.0)
        app.send_task("workers.tasks.read_job", args=[str(job.id)])
        return await watcher

    done = asyncio.run(follow())

    assert done["status"] == "succeeded" and len(done["regions"]) == 2


@pytest.mark.django_db(transaction=True)
def test_the_documented_client_runs_as_a_script(
    spine_worker, live_web, alice, tmp_path: Path
) -> None:
    token = Token.objects.get_or_create(user=alice)[0].key
    photo = tmp_path / "page.png"
    photo.write_bytes(image_bytes((10, 200, 30)))

    result = subprocess.run(
        [sys.executable, str(CLIENT_PATH), "--token", token, "--base", live_web.base, "--watch",
         str(photo)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert '"status": "succeeded"' in next(line for line in lines if line.startswith("{"))
    assert lines[-2:] == ["0 12 88.0", "1 345 88.0"]
