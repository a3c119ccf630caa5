"""Uploads are checked before anything is stored; a refusal leaves no row and no file."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from bench import photos as bench_photos
from detection.models import Job
from detection.uploads import _checked_as_stored, jpeg_without_metadata

from .conftest import image_bytes, media_files, upload

pytestmark = pytest.mark.django_db


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def post(api, data: bytes | None, name: str = "photo.png"):
    body = {} if data is None else {"image": upload(data, name)}
    return api.post("/api/v1/jobs/", body, format="multipart")


def assert_refused(response, status: int, code: str, files_before: set[str]) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert Job.objects.count() == 0
    assert media_files() == files_before


def test_it_refuses_a_request_without_an_image(alice_api) -> None:
    before = media_files()
    assert_refused(post(alice_api, None), 400, "missing_image", before)


def test_it_refuses_text_named_like_a_jpeg(alice_api) -> None:
    before = media_files()
    assert_refused(
        post(alice_api, b"hello, world\n" * 10, "photo.jpg"), 415, "unsupported_format", before
    )


def test_it_refuses_a_gif(alice_api) -> None:
    before = media_files()
    assert_refused(
        post(alice_api, image_bytes(fmt="GIF"), "a.gif"), 415, "unsupported_format", before
    )


def test_it_refuses_a_file_over_the_byte_limit_naming_the_limit(alice_api, settings) -> None:
    settings.SNAPREAD_MAX_UPLOAD_BYTES = 1000
    before = media_files()
    response = post(alice_api, image_bytes(size=(400, 400)) + b"\0" * 2000)

    assert_refused(response, 413, "file_too_large", before)
    assert "1000 bytes" in response.json()["message"]


def test_it_refuses_a_decompression_bomb_from_its_header(alice_api) -> None:
    before = media_files()
    response = post(alice_api, png_header_only(40_000, 40_000))

    assert_refused(response, 413, "too_many_pixels", before)
    assert "50000000 pixels" in response.json()["message"]


def test_it_refuses_a_truncated_jpeg(alice_api) -> None:
    before = media_files()
    data = image_bytes(size=(300, 200), fmt="JPEG")
    assert_refused(post(alice_api, data[: len(data) // 2], "a.jpg"), 422, "corrupt_image", before)


@pytest.mark.parametrize("kept", [0.25, 0.75, 0.999])
def test_it_refuses_a_photo_cut_off_inside_its_scan_data(alice_api, kept: float) -> None:
    before = media_files()
    data = bench_photos.page_photo(3)
    cut = data[: int(len(data) * kept)]
    assert_refused(post(alice_api, cut, "page.jpg"), 422, "corrupt_image", before)


@pytest.mark.parametrize("kept", [0.25, 0.75, 0.999])
def test_the_eighth_scale_check_of_a_stripped_jpeg_refuses_a_cut_scan(kept: float) -> None:
    # The upright-JPEG path checks the stripped bytes by decoding them at 1/8 scale;
    # every block of the scan is still decoded, so one cut short is refused there too.
    data = bench_photos.page_photo(3)
    stripped = jpeg_without_metadata(data)
    assert stripped is not None
    cut = stripped[: int(len(stripped) * kept)]
    with Image.open(io.BytesIO(data)) as original:
        assert _checked_as_stored(stripped, original).data == stripped
        with pytest.raises(OSError, match="truncated"):
            _checked_as_stored(cut, original)


def test_it_refuses_an_empty_file(alice_api) -> None:
    before = media_files()
    assert_refused(post(alice_api, b""), 400, "corrupt_image", before)


def test_it_stores_a_png_named_jpg_under_a_server_chosen_name(alice_api) -> None:
    response = post(alice_api, image_bytes(), "../../etc/passwd.jpg")

    assert response.status_code == 201
    job = Job.objects.get(id=response.json()["id"])
    assert job.image.name == f"jobs/{job.id}/input.png"
    assert (job.image_width, job.image_height) == (64, 48)


def test_it_applies_exif_orientation_and_drops_metadata(alice_api) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "SecretCam"
    out = io.BytesIO()
    Image.new("RGB", (80, 40), (10, 120, 200)).save(out, "JPEG", exif=exif)

    response = post(alice_api, out.getvalue(), "a.jpg")

    job = Job.objects.get(id=response.json()["id"])
    with default_storage.open(job.image.name) as stored:
        image = Image.open(stored)
        assert image.size == (40, 80)
        assert not image.getexif()
    assert (job.image_width, job.image_height) == (40, 80)


def test_it_scales_a_16_bit_png_instead_of_clipping_it(alice_api) -> None:
    out = io.BytesIO()
    Image.new("I;16", (20, 20), 30000).save(out, "PNG")

    job = Job.objects.get(id=post(alice_api, out.getvalue()).json()["id"])

    with default_storage.open(job.image.name) as stored:
        assert Image.open(stored).convert("L").getpixel((0, 0)) == 117
