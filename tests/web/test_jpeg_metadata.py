"""Upright JPEGs are stored stripped of metadata without being encoded again: the stored
bytes decode to exactly the uploaded pixels, and carry no EXIF, GPS, ICC, comment or
trailing data. Everything else is still decoded and encoded anew."""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from PIL import Image, ImageChops

from detection.models import Job
from detection.uploads import jpeg_without_metadata

from .conftest import upload

pytestmark = pytest.mark.django_db


def photo() -> Image.Image:
    """Something with detail, so that a re-encode would change pixels."""
    image = Image.linear_gradient("L").resize((320, 240)).convert("RGB")
    image.paste((20, 90, 200), (40, 30, 140, 90))
    image.paste(Image.effect_noise((100, 80), 60).convert("RGB"), (180, 120))
    return image


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    exif[0x0112] = 1
    exif[0x8825] = {1: "N", 2: (55.0, 45.0, 21.0)}
    return exif


def jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


UPRIGHT = {
    "camera EXIF and GPS": lambda: jpeg(photo(), quality=90, exif=camera_exif()),
    "progressive": lambda: jpeg(photo(), progressive=True, exif=camera_exif()),
    "restart markers": lambda: jpeg(photo(), restart_marker_blocks=2),
    "optimised tables": lambda: jpeg(photo(), optimize=True),
    "greyscale": lambda: jpeg(photo().convert("L"), exif=camera_exif()),
    "4:4:4": lambda: jpeg(photo(), subsampling=0),
    "ICC profile and comment": lambda: jpeg(photo(), icc_profile=b"\0" * 400, comment=b"hi"),
    "zip appended": lambda: jpeg(photo()) + b"PK\x03\x04" + b"payload" * 50,
    "second picture appended (MPF)": lambda: jpeg(photo()) + jpeg(photo().resize((40, 30))),
}


def stored_bytes(api, data: bytes) -> tuple[Job, bytes]:
    response = api.post("/api/v1/jobs/", {"image": upload(data, "p.jpg")}, format="multipart")
    assert response.status_code == 201, response.content[:300]
    job = Job.objects.get(id=response.json()["id"])
    with default_storage.open(job.image.name) as stored:
        return job, stored.read()


def pixels(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("kind", UPRIGHT)
def test_it_stores_an_upright_jpeg_with_its_pixels_and_without_its_metadata(
    alice_api, kind: str
) -> None:
    data = UPRIGHT[kind]()

    job, stored = stored_bytes(alice_api, data)

    assert job.image.name.endswith("/input.jpg")
    assert ImageChops.difference(pixels(stored), pixels(data)).getbbox() is None
    image = pixels(stored)
    assert not image.getexif()
    assert "icc_profile" not in image.info and "comment" not in image.info
    assert stored.endswith(b"\xff\xd9") and stored.count(b"\xff\xd9") == 1
    assert b"SecretCam" not in stored and b"PK\x03\x04" not in stored
    assert len(stored) <= len(data)
    assert (job.image_width, job.image_height) == image.size


def test_it_still_encodes_a_cmyk_jpeg_anew_as_rgb(alice_api) -> None:
    _, stored = stored_bytes(alice_api, jpeg(photo().convert("CMYK")))

    assert pixels(stored).mode == "RGB"


def test_it_still_turns_a_rotated_jpeg_upright_by_encoding_it_anew(alice_api) -> None:
    exif = camera_exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display

    job, stored = stored_bytes(alice_api, jpeg(photo(), exif=exif))

    assert pixels(stored).size == (240, 320)
    assert not pixels(stored).getexif()
    assert b"SecretCam" not in stored


def test_it_refuses_an_upright_jpeg_whose_scan_is_cut_short(alice_api) -> None:
    data = jpeg(photo(), exif=camera_exif())
    cut = data[: len(data) * 2 // 3]

    response = alice_api.post("/api/v1/jobs/", {"image": upload(cut, "p.jpg")}, format="multipart")

    assert response.status_code == 422, response.content[:300]
    assert response.json()["code"] == "corrupt_image"
    assert Job.objects.count() == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # segments cut short
        jpeg(photo())[:-2],  # no end marker
        jpeg(photo()).replace(b"\xff\xda", b"\xff\xc0\x00\x02\xff\xda", 1),  # two frames
    ],
    ids=["cut header", "no end marker", "two frames"],
)
def test_it_leaves_a_jpeg_it_does_not_understand_to_the_full_encoder(data: bytes) -> None:
    assert jpeg_without_metadata(data) is None
