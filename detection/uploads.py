"""Checking and normalising an uploaded image before anything is stored.

The order matters: the format is sniffed from the bytes, the byte limit and the pixel
limit (read from the header) are checked before the image is decoded, and only then is
it fully decoded, turned upright and stripped of metadata.

An upright baseline or progressive JPEG (most phone photos) is stripped without being
encoded again: its segments are rewritten without APPn (EXIF, GPS, XMP, ICC, MPF) and
comment segments and without anything after the end marker, and it is *those* bytes that
are decoded (every block of the scan, to pixels at 1/8 scale), so what is stored is
exactly what was checked. Re-encoding it would
cost as much CPU as decoding it, lose a generation of quality and grow the file. Every
other image (turned by its EXIF orientation, CMYK, PNG, WebP, arithmetic-coded JPEG) is
decoded, turned upright and encoded again by us, as before.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from PIL import Image, ImageOps

SIGNATURES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}

# Decoded pixels are the big allocation of a request (5.8 MB for a 1200x1600 photo, and
# as much again to turn it): with one decode at a time per core, a burst of uploads waits
# here instead of growing the web process by a few megabytes per request in flight.
# More would not finish sooner: decoding is CPU-bound.
DECODE_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))


class UploadRefused(Exception):
    """The upload is not stored; `code` is stable, `message` names the limit or fix."""

    def __init__(self, code: str, message: str, status: int, **detail: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class NormalizedImage:
    data: bytes
    width: int
    height: int
    sha256: str
    extension: str  # "jpg" or "png"

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.extension == "jpg" else "image/png"


def sniff_format(head: bytes) -> str | None:
    """JPEG, PNG or WEBP from the first bytes, whatever the file is called."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def normalize_upload(upload: IO[bytes] | None, size: int | None = None) -> NormalizedImage:
    if upload is None:
        raise UploadRefused("missing_image", "Send the image in the multipart field `image`.", 400)
    max_bytes = settings.SNAPREAD_MAX_UPLOAD_BYTES
    if size is not None and size > max_bytes:
        raise _too_large(size)
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(len(data))
    if not data:
        raise UploadRefused("corrupt_image", "The file is empty.", 400)
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise UploadRefused(
            "unsupported_format",
            "Send a JPEG, PNG or WebP image; this file is none of those (judged by its "
            "content, not its name).",
            415,
            allowed=sorted(SIGNATURES.values()),
        )
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            width, height = image.size  # from the header; nothing decoded yet
            _check_pixels(width, height)
            if fmt == "JPEG" and image.mode in ("L", "RGB") and _orientation(image) == 1:
                stripped = jpeg_without_metadata(data)
                if stripped is not None:
                    return _checked_as_stored(stripped, image)
            with DECODE_SLOTS:
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                return _encode(_plain_mode(image), fmt)
    except Image.DecompressionBombError:
        raise _too_many_pixels(None) from None
    except UploadRefused:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRefused(
            "corrupt_image", f"The {SIGNATURES[fmt]} image could not be decoded: {exc}.", 422
        ) from None


def _orientation(image: Image.Image) -> int:
    # The same reading exif_transpose makes (EXIF, else XMP), from the header alone.
    return image.getexif().get(0x0112, 1)


def _checked_as_stored(stripped: bytes, original: Image.Image) -> NormalizedImage:
    """Fully decode the stripped JPEG, the bytes that will be stored, and describe it.

    Every block of its entropy-coded data is decoded, but to pixels at 1/8 of the size
    (libjpeg's DCT scaling, PIL's `draft`): it refuses what a full-size decode refuses
    (a stream that ends before its last block, bad tables), at about 40 % of the CPU
    (the pixels are not used; the worker decodes the stored file itself). Like a
    full-size decode, it accepts a scan cut short but closed by an end marker: libjpeg
    only warns and fills the missing blocks with grey.
    """
    with Image.open(io.BytesIO(stripped), formats=["JPEG"]) as image:
        if image.size != original.size or image.mode != original.mode:
            raise ValueError("the image changed when its metadata was removed")
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        with DECODE_SLOTS:
            image.load()
    return NormalizedImage(
        data=stripped,
        width=original.width,
        height=original.height,
        sha256=hashlib.sha256(stripped).hexdigest(),
        extension="jpg",
    )


# After a start-of-scan, the entropy-coded data runs to the next marker: 0xFF followed by
# a byte that is not 0x00 (a stuffed 0xFF), not 0xFF (fill) and not a restart marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Frames we pass on as they are: Huffman-coded baseline, extended and progressive.
_SIMPLE_FRAMES = {0xC0, 0xC1, 0xC2}
_OTHER_FRAMES = set(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}
_APP0, _APP14, _COMMENT = 0xE0, 0xEE, 0xFE


def jpeg_without_metadata(data: bytes) -> bytes | None:
    """The JPEG's segments without metadata, or None when it is not a simple JPEG.

    Kept: the tables, frame, scans and restart intervals; a JFIF header (without its
    thumbnail) and an Adobe colour-transform segment, which say how to read the colours.
    Dropped: every other APPn segment, comments, and anything after the end marker.
    None for anything unexpected (the caller then decodes and encodes the image anew).
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    out = [b"\xff\xd8"]
    pos, end = 2, len(data)
    frames = 0
    while True:
        if pos >= end or data[pos] != 0xFF:
            return None
        while pos < end and data[pos] == 0xFF:  # fill bytes may precede a marker
            pos += 1
        if pos >= end:
            return None
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            out.append(b"\xff\xd9")
            return b"".join(out) if frames == 1 else None
        if marker in _OTHER_FRAMES or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            return None
        if pos + 2 > end:
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > end:
            return None
        payload = data[pos + 2 : pos + length]
        segment = b"\xff" + bytes([marker]) + data[pos : pos + length]
        pos += length
        if marker in _SIMPLE_FRAMES:
            frames += 1
        if marker == _APP0 and payload.startswith(b"JFIF\x00") and len(payload) >= 12:
            # Version, units and density; no thumbnail.
            out.append(b"\xff\xe0\x00\x10" + payload[:12] + b"\x00\x00")
        elif marker == _APP14 and payload.startswith(b"Adobe") and len(payload) == 12:
            out.append(segment)
        elif 0xE0 <= marker <= 0xEF or marker == _COMMENT:
            continue
        else:
            out.append(segment)
        if marker == 0xDA:
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                return None
            out.append(data[pos : found.start()])
            pos = found.start()


def _check_pixels(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise UploadRefused("corrupt_image", "The image has no pixels.", 422)
    if width * height > settings.SNAPREAD_MAX_PIXELS:
        raise _too_many_pixels((width, height))


def _plain_mode(image: Image.Image) -> Image.Image:
    """8-bit L, RGB or RGBA; 16-bit greys are scaled, not clipped."""
    mode = image.mode
    if mode in ("L", "RGB", "RGBA"):
        return image
    if mode.startswith("I"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode in ("LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def _encode(image: Image.Image, fmt: str) -> NormalizedImage:
    out = io.BytesIO()
    # Nothing of the original's metadata (EXIF, GPS, ICC, text chunks) is passed on.
    if fmt == "JPEG" and image.mode in ("L", "RGB"):
        image.save(out, "JPEG", quality=95)
        extension = "jpg"
    else:
        image.save(out, "PNG", optimize=False)
        extension = "png"
    data = out.getvalue()
    return NormalizedImage(
        data=data,
        width=image.width,
        height=image.height,
        sha256=hashlib.sha256(data).hexdigest(),
        extension=extension,
    )


def _too_large(size: int) -> UploadRefused:
    limit = settings.SNAPREAD_MAX_UPLOAD_BYTES
    return UploadRefused(
        "file_too_large",
        f"The file is larger than the limit of {limit} bytes ({limit / 1_048_576:.0f} MB).",
        413,
        limit_bytes=limit,
        size_bytes=size,
    )


def _too_many_pixels(size: tuple[int, int] | None) -> UploadRefused:
    limit = settings.SNAPREAD_MAX_PIXELS
    what = f"{size[0]}x{size[1]} pixels" if size else "The image"
    return UploadRefused(
        "too_many_pixels",
        f"{what} is more than the limit of {limit} pixels ({limit / 1e6:.0f} MP).",
        413,
        limit_pixels=limit,
    )
