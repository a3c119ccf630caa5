"""/jobs/{id}/thumbnail/: a small picture of the input for the history, owner-only."""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from detection import jobs

from .conftest import image_bytes, queued_job_without_message

pytestmark = pytest.mark.django_db


def test_it_gives_the_owner_a_small_jpeg_of_the_input(client, alice) -> None:
    job = queued_job_without_message(alice, data=image_bytes((30, 90, 200), (1200, 800)))
    client.force_login(alice)

    response = client.get(f"/jobs/{job.id}/thumbnail/")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert "private" in response["Cache-Control"]
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG" and thumbnail.size == (168, 112)
    r, g, b = thumbnail.convert("RGB").getpixel((84, 56))
    assert abs(r - 30) < 12 and abs(g - 90) < 12 and abs(b - 200) < 12


def test_it_is_a_404_for_anyone_else_and_without_a_login(client, alice, bob) -> None:
    job = queued_job_without_message(alice)

    assert client.get(f"/jobs/{job.id}/thumbnail/").status_code == 404
    client.force_login(bob)
    assert client.get(f"/jobs/{job.id}/thumbnail/").status_code == 404


def test_it_is_kept_with_the_job_and_deleted_with_it(
    client, alice, django_capture_on_commit_callbacks
) -> None:
    job = queued_job_without_message(alice, data=image_bytes(size=(400, 300)))
    client.force_login(alice)

    first = client.get(f"/jobs/{job.id}/thumbnail/").content
    assert default_storage.exists(f"jobs/{job.id}/thumbnail.jpg")
    assert client.get(f"/jobs/{job.id}/thumbnail/").content == first

    with django_capture_on_commit_callbacks(execute=True):
        jobs.job_delete(job.id, alice)

    assert not default_storage.exists(f"jobs/{job.id}")
    assert client.get(f"/jobs/{job.id}/thumbnail/").status_code == 404
