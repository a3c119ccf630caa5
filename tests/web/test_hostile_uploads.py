"""Hostile and odd uploads, generated here: each is refused with a 4xx and a JSON code,
leaving no row and no file, or accepted and brought to a terminal state by a worker.

The worker runs the FAKE chain (tests/web/fake_chain.py): the subject is that nothing an
upload can be leaves a job hanging, not what the chain reads.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from detection.models import TERMINAL, Job

from .conftest import media_files, upload, wait_for_job


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A tiny PNG whose header claims 1.6 gigapixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def grey(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    colour = {"RGB": (200, 200, 200), "RGBA": (200, 200, 200, 128), "CMYK": (10, 10, 10, 40)}
    return Image.new(mode, size, colour.get(mode, 40_000))


def animated_gif() -> bytes:
    frames = [Image.new("P", (32, 32), i) for i in range(3)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return encoded(grey((60, 20)), "JPEG", exif=exif.tobytes())


ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 200
REFUSED = {
    "empty file": (b"", "photo.jpg", 400, "corrupt_image"),
    "text named .jpg": (b"hello, I am text\n" * 10, "photo.jpg", 415, "unsupported_format"),
    "truncated JPEG": (encoded(grey((300, 200)), "JPEG")[:400], "p.jpg", 422, "corrupt_image"),
    "HTML/GIF polyglot": (
        b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;<html><script>alert(1)</script></html>",
        "p.gif", 415, "unsupported_format",
    ),
    "SVG with script": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "p.svg", 415, "unsupported_format",
    ),
    "PDF": (b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "p.pdf", 415,
            "unsupported_format"),
    "ELF binary": (ELF, "p.jpg", 415, "unsupported_format"),
    "PNG bomb 40000x40000": (png_bomb(), "bomb.png", 413, "too_many_pixels"),
    "35 MB file": (b"\xff\xd8\xff\xe0" + b"\x00" * (35 * 1024 * 1024), "big.jpg", 413,
                   "file_too_large"),
    "TIFF": (encoded(grey(), "TIFF"), "p.tiff", 415, "unsupported_format"),
    "animated GIF": (animated_gif(), "p.gif", 415, "unsupported_format"),
}  # fmt: skip
ACCEPTED = {
    "16-bit PNG": lambda: encoded(grey(mode="I;16"), "PNG"),
    "CMYK JPEG": lambda: encoded(grey(mode="CMYK"), "JPEG"),
    "RGBA PNG": lambda: encoded(grey(mode="RGBA"), "PNG"),
    "1x1": lambda: encoded(grey((1, 1)), "PNG"),
    "20000x8": lambda: encoded(grey((20_000, 8)), "PNG"),
    "EXIF-rotated": exif_rotated_jpeg,
    "PNG named .jpg": lambda: encoded(grey(), "PNG"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", REFUSED)
def test_it_refuses_a_hostile_upload_leaving_no_row_and_no_file(alice_api, kind: str) -> None:
    data, name, status, code = REFUSED[kind]
    files_before = media_files()

    response = alice_api.post("/api/v1/jobs/", {"image": upload(data, name)}, format="multipart")

    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code
    assert Job.objects.count() == 0
    assert media_files() == files_before


@pytest.mark.parametrize("kind", ACCEPTED)
def test_it_brings_an_odd_but_valid_upload_to_a_terminal_state(
    spine_worker, alice_api, kind: str
) -> None:
    response = alice_api.post(
        "/api/v1/jobs/", {"image": upload(ACCEPTED[kind](), "photo.jpg")}, format="multipart"
    )

    assert response.status_code == 201, response.content[:300]
    job = wait_for_job(response.json()["id"], TERMINAL, timeout=30)
    assert job.status in TERMINAL
    assert (job.status == "failed") <= bool(job.error_code)


@pytest.mark.django_db
def test_it_turns_an_exif_rotated_photo_upright(alice_api) -> None:
    response = alice_api.post(
        "/api/v1/jobs/", {"image": upload(exif_rotated_jpeg(), "p.jpg")}, format="multipart"
    )

    assert (response.json()["width"], response.json()["height"]) == (20, 60)
