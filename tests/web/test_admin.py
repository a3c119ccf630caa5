"""The admin: jobs with thumbnails, filters and search, files only for staff allowed to
view jobs, the Flower link, and a re-run that goes through the real worker."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.storage import default_storage
from django.test import Client
from PIL import Image

from detection.models import Job, Region, Status

from .conftest import image_bytes, queued_job_without_message, upload, wait_for_job

CHANGELIST = "/admin/detection/job/"


@pytest.fixture
def admin_web(db) -> Client:
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw-root")
    client = Client()
    client.force_login(admin)
    return client


def staff_client(username: str, *permissions: str) -> Client:
    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


def results(page: str) -> str:
    """The change list's table alone (the filters around it name every value)."""
    return page.split('id="result_list"')[1].split("</table>")[0]


@pytest.mark.django_db
def test_the_job_list_shows_thumbnails_filters_and_finds_by_owner(admin_web, alice, bob) -> None:
    mine = queued_job_without_message(alice, pack_name="reference", pack_version="1.0.0")
    queued_job_without_message(bob, pack_name="reference", pack_version="1.1.0")

    page = admin_web.get(CHANGELIST).content.decode()
    found = admin_web.get(CHANGELIST, {"q": "alice"}).content.decode()
    by_id = admin_web.get(CHANGELIST, {"q": str(mine.id)[:13]}).content.decode()

    assert f'src="/admin/detection/job/{mine.id}/thumbnail/"' in page
    for parameter in ("status__exact", "stage__exact", "?pack_version=1.1.0", "created_at__gte"):
        assert parameter in page, parameter
    assert str(mine.id) in found and "bob" not in results(found)
    assert str(mine.id) in by_id
    one_version = admin_web.get(CHANGELIST, {"pack_version": "1.0.0"}).content.decode()
    assert str(mine.id) in one_version and "1.1.0" not in results(one_version)


@pytest.mark.django_db
def test_a_thumbnail_is_a_small_jpeg_of_the_stored_image(admin_web, alice) -> None:
    job = queued_job_without_message(alice, data=image_bytes(size=(1200, 900)))

    response = admin_web.get(f"{CHANGELIST}{job.id}/thumbnail/")

    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(response.content))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 160


@pytest.mark.django_db
def test_only_staff_allowed_to_view_jobs_see_their_files(alice) -> None:
    job = queued_job_without_message(alice)
    url = f"{CHANGELIST}{job.id}/thumbnail/"
    owner = Client()
    owner.force_login(alice)

    assert owner.get(url).status_code == 302  # to the admin login: not staff
    assert Client().get(url).status_code == 302
    assert staff_client("no-perms").get(url).status_code == 404
    assert staff_client("viewer", "view_job").get(url).status_code == 200


@pytest.mark.django_db
def test_the_admin_index_links_to_flower(admin_web, settings) -> None:
    settings.FLOWER_URL = "https://flower.example.org/"

    page = admin_web.get("/admin/").content.decode()

    assert 'href="https://flower.example.org/"' in page


@pytest.mark.django_db
def test_the_admin_cannot_change_a_job_through_a_form(admin_web, alice) -> None:
    job = queued_job_without_message(alice)

    response = admin_web.post(f"{CHANGELIST}{job.id}/change/", {"status": "succeeded"})

    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert response.status_code in (403, 200)


def test_the_admin_cannot_delete_jobs_or_regions(admin_web, alice) -> None:
    # Deletes go through the API (detection.jobs.job_delete): the admin's cascade would
    # leave the job's files and its watchers behind.
    job = queued_job_without_message(alice)
    page = admin_web.get(CHANGELIST).content.decode()
    assert "delete_selected" not in page
    assert admin_web.post(f"{CHANGELIST}{job.id}/delete/", {"post": "yes"}).status_code == 403
    assert Job.objects.filter(id=job.id).exists()


def rerun(client: Client, *jobs: Job):
    return client.post(
        CHANGELIST,
        {"action": "rerun", "_selected_action": [str(job.id) for job in jobs]},
        follow=True,
    )


@pytest.mark.django_db(transaction=True)
def test_rerun_takes_a_succeeded_job_through_the_worker_again(
    spine_worker, admin_web, alice_api
) -> None:
    job_id = alice_api.post(
        "/api/v1/jobs/", {"image": upload(image_bytes())}, format="multipart"
    ).json()["id"]
    first = wait_for_job(job_id)
    assert first.status == Status.SUCCEEDED
    old_regions = set(Region.objects.filter(job=first).values_list("id", flat=True))
    assert alice_api.get(f"/api/v1/jobs/{job_id}/annotated/").status_code == 200  # drawn now
    first.refresh_from_db()
    old_annotated = first.annotated_image.name
    assert default_storage.exists(old_annotated)

    response = rerun(admin_web, first)
    again = wait_for_job(job_id)

    assert "1 job(s) queued again." in response.content.decode()
    assert again.status == Status.SUCCEEDED and again.attempts == first.attempts + 1
    regions = list(Region.objects.filter(job=again).order_by("index"))
    assert [(r.index, r.text) for r in regions] == [(0, "12"), (1, "345")]  # one set
    assert not old_regions & {r.id for r in regions}
    assert not default_storage.exists(old_annotated)
    assert all(bytes(r.crop_png).startswith(b"\x89PNG") for r in regions)
    assert alice_api.get(f"/api/v1/jobs/{job_id}/").json()["regions"][1]["text"] == "345"


@pytest.mark.django_db
def test_rerun_skips_unfinished_jobs_and_needs_the_change_permission(admin_web, alice) -> None:
    queued = queued_job_without_message(alice)

    response = rerun(admin_web, queued)
    viewer = staff_client("viewer", "view_job")
    denied = viewer.post(CHANGELIST, {"action": "rerun", "_selected_action": [str(queued.id)]})

    assert "1 job(s) skipped" in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED and queued.attempts == 0
    # Without the permission the action is not offered, so nothing runs.
    assert "rerun" not in viewer.get(CHANGELIST).content.decode()
    assert denied.status_code in (200, 302)
