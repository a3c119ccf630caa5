"""Photos for the web benchmarks: rendered problem-book pages, as a phone would send them.

1200x1600 JPEG at quality 90 with a camera's EXIF block (make, model, GPS, orientation),
so that the upload path's metadata stripping has something to strip.
"""

from __future__ import annotations

import io

from PIL import Image

SIZE = (1200, 1600)


def camera_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Phone 12"  # Model
    exif[0x0112] = orientation
    exif[0x0131] = "Camera 4.2"  # Software
    exif[0x8825] = {1: "N", 2: (55.0, 45.0, 21.0), 3: "E", 4: (37.0, 37.0, 4.0)}  # GPS
    return exif


def page_photo(seed: int, orientation: int = 1, size: tuple[int, int] = SIZE) -> bytes:
    """A JPEG page photo; with ``orientation`` 6 it is stored sideways, as phones do."""
    from workers.training.synth import fonts, render_page

    image = render_page(seed, fonts("heldout")).image.convert("RGB").resize(size)
    if orientation == 6:
        image = image.transpose(Image.Transpose.ROTATE_90)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=camera_exif(orientation))
    return out.getvalue()


def multipart_body(data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    """(body, content type) of a multipart form with the photo in field ``image``, built
    once so that the client spends its share of the two cores sending, not encoding."""
    boundary = "snapread-bench-" + "0123456789abcdef" * 2
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
