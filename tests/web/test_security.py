"""Who may see what, who may submit how much, and production settings."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.core.files.storage import default_storage
from django.db import connection
from rest_framework.authtoken.models import Token

from detection import jobs, redis_pool
from detection.api import throttles
from detection.api.throttles import SubmitThrottle
from detection.models import Job
from detection.uploads import normalize_upload
from project.asgi import application

from .conftest import image_bytes, media_files, queued_job_without_message, upload

REPO = Path(__file__).resolve().parents[2]
READING = jobs.Reading(
    label="page", score=0.9, relevant=True, pack_name="p", pack_version="1",
    regions=[jobs.RegionReading((0, 0, 8, 8), "n", 0.9, "7", 90.0, image_bytes(size=(8, 8)))],
)  # fmt: skip


def finished_job(owner) -> Job:
    job = queued_job_without_message(owner)
    claim = jobs.job_claim(job.id, "w")
    assert claim is not None and jobs.job_complete(claim, READING)
    return Job.objects.get(id=job.id)


@pytest.mark.django_db
def test_it_serves_the_crops_and_annotated_image_of_a_finished_job_only_to_its_owner(
    alice, alice_api, bob_api
) -> None:
    job = finished_job(alice)
    urls = [f"/api/v1/jobs/{job.id}/annotated/", f"/api/v1/jobs/{job.id}/regions/0/crop/"]

    assert [alice_api.get(url).status_code for url in urls] == [200, 200]
    assert [bob_api.get(url).status_code for url in urls] == [404, 404]


@pytest.mark.django_db
def test_stored_files_have_no_public_url(alice, alice_api, client) -> None:
    job = finished_job(alice)
    assert alice_api.get(f"/api/v1/jobs/{job.id}/annotated/").status_code == 200  # drawn now
    job.refresh_from_db()

    for name in (job.image.name, job.annotated_image.name):
        assert client.get(f"/media-not-served/{name}").status_code == 404
        assert client.get(f"/media/{name}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_it_refuses_a_socket_without_an_origin_header(alice) -> None:
    job = queued_job_without_message(alice)
    path = f"/ws/jobs/{job.id}/?token={Token.objects.get_or_create(user=alice)[0].key}"

    async def scenario() -> bool:
        socket = WebsocketCommunicator(application, path)
        connected, _ = await socket.connect(timeout=5)
        await socket.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


@pytest.mark.django_db
def test_the_cap_answers_429_naming_the_limit(alice_api, settings) -> None:
    settings.SNAPREAD_MAX_UNFINISHED_JOBS = 1
    alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")

    before = media_files()
    response = alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")

    assert response.status_code == 429
    assert response.json()["detail"] == {"limit": 1}
    assert Job.objects.count() == 1
    assert media_files() == before, "a refused submit left a file"


@pytest.mark.django_db(transaction=True)
def test_the_cap_on_unfinished_jobs_cannot_be_raced(alice, settings, monkeypatch) -> None:
    settings.SNAPREAD_MAX_UNFINISHED_JOBS = 3
    # The jobs must stay unfinished while the submits race: no message goes out, so a
    # worker left running by an earlier test cannot finish one and free a place (it did
    # once, on a fast machine: four accepted).
    monkeypatch.setattr(jobs, "_send", lambda job_id: None)
    image = normalize_upload(io.BytesIO(image_bytes()))
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def submit() -> None:
        try:
            start.wait()
            jobs.job_submit(alice, image)
            outcomes.append("created")
        except jobs.TooManyUnfinishedJobs:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert Job.objects.filter(owner=alice).count() == 3


def test_the_submit_throttle_cannot_be_raced(alice) -> None:
    # Sixteen submits at once against the last 5 places of a 5/min window: DRF's own
    # throttle reads the history, decides and writes it back, so several could see the
    # same free place; the sliding log decides and records in one step on the server.
    from django.core.cache import cache
    from rest_framework.test import APIRequestFactory

    cache.clear()
    throttle_class = type("FiveAMinute", (SubmitThrottle,), {"rate": "5/min"})
    request = APIRequestFactory().post("/api/v1/jobs/")
    request.user = alice
    start = threading.Barrier(16)
    outcomes: list[bool] = []

    def ask() -> None:
        start.wait()
        outcomes.append(throttle_class().allow_request(request, None))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == [False] * 11 + [True] * 5
    refused = throttle_class()
    assert refused.allow_request(request, None) is False
    assert 55 < refused.wait() <= 60, "the wait is until the oldest submit leaves the window"


def test_cache_objects_share_one_redis_connection_pool() -> None:
    # Under ASGI each request gets its own cache object (caches are context-local); each
    # used to build a pool and open a connection of its own.
    from django.core.cache import caches

    client = redis_pool.client()
    caches["default"].set("warm", 1)
    before = client.info("stats")["total_connections_received"]
    pools = []

    def use_the_cache() -> None:
        cache = caches["default"]
        cache.get("warm")
        pools.append(cache._cache._get_connection_pool(write=False))

    for _ in range(20):
        thread = threading.Thread(target=use_the_cache)  # a new context, a new cache object
        thread.start()
        thread.join(10)

    assert len(pools) == 20 and all(pool is pools[0] for pool in pools)
    assert client.info("stats")["total_connections_received"] - before <= 1


@pytest.mark.django_db
def test_submits_go_on_when_the_throttles_redis_is_down(alice_api, monkeypatch) -> None:
    # A real client on a port where nothing listens: connection refused.
    dead = redis_pool.client("redis://127.0.0.1:1/0").register_script(throttles._SLIDING_LOG)
    monkeypatch.setattr(SubmitThrottle, "_script", dead)

    response = alice_api.post("/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart")

    assert response.status_code == 201


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SNAPREAD_HTTPS")}
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DEBUG="0",
        SECRET_KEY="prod-like-" + "k3y!" * 16,
        ALLOWED_HOSTS="snapread.example",
        CSRF_TRUSTED_ORIGINS="https://snapread.example",
        STATIC_ROOT=str(tmp_path / "static"),
        MEDIA_ROOT=str(tmp_path / "media"),
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr + done.stdout
    assert "no issues" in done.stdout


def test_production_settings_refuse_to_start_without_a_secret_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(DJANGO_SETTINGS_MODULE="project.settings", DEBUG="0")

    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr


@pytest.mark.django_db
def test_the_annotated_image_is_drawn_once_on_first_request_and_only_for_succeeded_jobs(
    alice, alice_api
) -> None:
    job = finished_job(alice)
    assert not job.annotated_image  # the worker did not draw it
    url = f"/api/v1/jobs/{job.id}/annotated/"

    first = alice_api.get(url)
    job.refresh_from_db()
    name = job.annotated_image.name
    second = alice_api.get(url)

    assert first.status_code == second.status_code == 200
    assert first["Content-Type"] == "image/jpeg"
    assert b"".join(first.streaming_content) == b"".join(second.streaming_content)
    job.refresh_from_db()
    assert job.annotated_image.name == name
    assert [n for n in default_storage.listdir(job.media_dir)[1] if "annotated" in n] == [
        name.rsplit("/", 1)[1]
    ]
    queued = queued_job_without_message(alice)
    assert alice_api.get(f"/api/v1/jobs/{queued.id}/annotated/").status_code == 404
    assert alice_api.get(f"/api/v1/jobs/{queued.id}/").json()["annotated_url"] is None
