"""Crops live in the regions' rows: served from there, never loaded by a job's reads,
and moved there from the files older versions wrote (migration 0002)."""

from __future__ import annotations

import os

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext

from detection import jobs, selectors
from detection.models import Job, Region

from .conftest import image_bytes, queued_job_without_message

CROPS = [image_bytes(size=(40, 12)), image_bytes(size=(52, 12))]


def finished_job(owner) -> Job:
    job = queued_job_without_message(owner)
    claim = jobs.job_claim(job.id, "w")
    regions = [
        jobs.RegionReading((0, 0, 40, 12), "number", 0.9, str(k), 90.0, crop)
        for k, crop in enumerate(CROPS)
    ]
    reading = jobs.Reading("page", 0.9, True, "p", "1", regions=regions)
    assert claim is not None and jobs.job_complete(claim, reading)
    return Job.objects.get(id=job.id)


@pytest.mark.django_db
def test_each_crop_is_served_from_its_row(alice, alice_api) -> None:
    job = finished_job(alice)
    urls = [r["crop_url"] for r in alice_api.get(f"/api/v1/jobs/{job.id}/").json()["regions"]]
    responses = [alice_api.get(url) for url in urls]
    assert [r.status_code for r in responses] == [200, 200]
    assert [r["Content-Type"] for r in responses] == ["image/png", "image/png"]
    assert [r.content for r in responses] == CROPS


@pytest.mark.django_db
def test_a_region_stored_without_a_crop_answers_404(alice, alice_api) -> None:
    job = finished_job(alice)
    Region.objects.filter(job=job, index=1).update(crop_png=b"")
    regions = alice_api.get(f"/api/v1/jobs/{job.id}/").json()["regions"]
    assert [r["crop_url"] is None for r in regions] == [False, True]  # no link to nothing
    response = alice_api.get(f"/api/v1/jobs/{job.id}/regions/1/crop/")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert alice_api.get(f"/api/v1/jobs/{job.id}/regions/0/crop/").status_code == 200


@pytest.mark.django_db
def test_reading_jobs_leaves_the_crops_in_the_database(alice, alice_api) -> None:
    job = finished_job(alice)
    with CaptureQueriesContext(connection) as queries:
        one = alice_api.get(f"/api/v1/jobs/{job.id}/").json()
        page = alice_api.get("/api/v1/jobs/").json()
        payload = selectors.job_payload(selectors.job_of(alice, job.id))
    region_reads = [q["sql"] for q in queries.captured_queries if "detection_region" in q["sql"]]
    assert len(region_reads) == 3  # one for each read above, and each read found the regions
    # Only the crops' lengths are read (to know which have one), never their bytes.
    length = 'LENGTH("detection_region"."crop_png")'
    assert all(length in sql for sql in region_reads)
    assert not any("crop_png" in sql.replace(length, "") for sql in region_reads)
    assert (
        [r["text"] for r in one["regions"]] == ["0", "1"] == [r["text"] for r in payload["regions"]]
    )
    assert page["results"][0]["regions"] == one["regions"]


@pytest.mark.django_db(transaction=True)
def test_the_migration_moves_crop_files_into_rows_and_back(alice) -> None:
    job = finished_job(alice)
    executor = MigrationExecutor(connection)
    executor.migrate([("detection", "0001_initial")])
    try:
        # As version 0001 stored them: a file per crop, its name in the row; one missing.
        with connection.cursor() as cursor:
            for index, crop in enumerate(CROPS):
                name = f"jobs/{job.id}/crop-1-{index:03d}.png"
                if index == 0:
                    name = default_storage.save(name, ContentFile(crop))
                cursor.execute(
                    "UPDATE detection_region SET crop = %s WHERE job_id = %s AND index = %s",
                    [name, job.id, index],
                )
        # Every file missing (a media volume not mounted, say): it stops, changes nothing.
        os.remove(default_storage.path(f"jobs/{job.id}/crop-1-000.png"))
        with pytest.raises(RuntimeError, match="None of the 2 crop files"):
            MigrationExecutor(connection).migrate([("detection", "0002_region_crop_png")])
        default_storage.save(f"jobs/{job.id}/crop-1-000.png", ContentFile(CROPS[0]))

        executor = MigrationExecutor(connection)
        executor.migrate([("detection", "0002_region_crop_png")])

        regions = Region.objects.filter(job=job).order_by("index")
        assert [bytes(r.crop_png) for r in regions] == [CROPS[0], b""]

        # And back: each crop in a row becomes a file again, named in the row.
        executor = MigrationExecutor(connection)
        executor.migrate([("detection", "0001_initial")])
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT index, crop FROM detection_region WHERE job_id = %s ORDER BY index",
                [job.id],
            )
            names = dict(cursor.fetchall())
        assert names[1] == ""  # no crop to write back: its file was gone
        with default_storage.open(names[0], "rb") as stored:
            assert stored.read() == CROPS[0]
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
