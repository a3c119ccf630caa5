"""Checking and normalising an uploaded image before anything is stored.

The order matters: the format is sniffed from the bytes, the byte limit and the pixel
limit (read from the header) are checked before the image is decoded, and only then is
it fully decoded, turned upright, stripped of metadata and encoded again by us.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import IO

from django.conf import settings
from PIL import Image, ImageOps

SIGNATURES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}


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
            image.load()
            upright = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:
        raise _too_many_pixels(None) from None
    except UploadRefused:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRefused(
            "corrupt_image", f"The {SIGNATURES[fmt]} image could not be decoded: {exc}.", 422
        ) from None
    return _encode(_plain_mode(upright), fmt)


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
