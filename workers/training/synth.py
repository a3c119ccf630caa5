"""Synthetic photos of problem-book pages, and of everything else.

Deterministic in the seed. Pages are laid out like a physics problem book (one or two
columns, running header, page number, section headings, numbered problems with
numbers inside the text as distractors) in a font family from a split, then
photographed: placed on a background, rotated, warped in perspective, lit unevenly,
shadowed, blurred, noised and JPEG-compressed.
"""

from __future__ import annotations

import io
import math
import random
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Face:
    regular: str
    bold: str
    oldstyle: bool = False  # digits can be drawn with the OpenType "onum" feature


@dataclass(frozen=True)
class FontSet:
    split: str
    faces: tuple[Face, ...]


@dataclass
class PageSample:
    image: Image.Image
    numbers: list[tuple[Box, str]]
    blur: float = 0.0  # the Gaussian blur of the photo (sigma, pixels), for evaluation
    font: str = ""  # the file of the typeface it is set in (its regular), for evaluation


OLDSTYLE_FAMILIES = ("EB Garamond", "Linux Libertine O", "Linux Biolinum O", "TeX Gyre Pagella")
# Families whose digits are too odd for a textbook, or which are not text faces.
SKIP_FAMILIES = (
    "Standard Symbols",
    "D050000L",
    "Z003",
    "Droid Sans Fallback",
    "Mono",
    "Cursor",
    "Math",
    "Chorus",
    "Dunhill",
    "Caps",
    "Quotation",
    "Slanted",
    "Light",
    "Integrals",  # STIX's symbol fonts
    "STIXSize",
    "STIXNonUnicode",
    "STIXVariants",
    "Keyboard",  # Linux Biolinum Keyboard O: every glyph drawn in a key cap
)
# Weights no book sets its text in, which some families name "Regular" in one of their
# styles (Lato Thin, Inter ExtraLight, Open Sans ExtraBold).
EXTREME_WEIGHTS = ("thin", "extralight", "hairline", "extrabold", "black", "heavy")


# The held-out faces, named by file: the held-out photos never change with the fonts
# installed or the order fontconfig lists them in. (The families were first drawn by a
# hash of the family name, a quarter of those installed then, with EB Garamond and Linux
# Biolinum O put here so that old-style figures are seen only at evaluation; the files
# are the regular and bold each family gave then.)
HELDOUT_FACES = {
    "C059": ("C059-Roman.otf", "C059-Bold.otf"),
    "Caladea": ("Caladea-Regular.ttf", "Caladea-Bold.ttf"),
    "Cantarell": ("Cantarell-Light.otf", "Cantarell-Bold.otf"),
    "Carlito": ("Carlito-Regular.ttf", "Carlito-Bold.ttf"),
    "DejaVu Serif": ("DejaVuSerifCondensed.ttf", "DejaVuSerifCondensed-Bold.ttf"),
    "EB Garamond": ("EBGaramond08-Regular.otf", "EBGaramond12-Bold.otf"),
    "GFS Didot": ("GFSDidot.otf", "GFSDidotBold.otf"),
    "Latin Modern Sans": ("lmsans8-regular.otf", "lmsans10-bold.otf"),
    "Linux Biolinum O": ("LinBiolinum_R.otf", "LinBiolinum_RB.otf"),
    "Nimbus Sans": ("NimbusSans-Regular.otf", "NimbusSans-Bold.otf"),
    "Roboto": ("Roboto-Regular.ttf", "Roboto-Bold.ttf"),
    "Roboto Condensed": ("RobotoCondensed-Light.ttf", "RobotoCondensed-Bold.ttf"),
    "TeX Gyre Heros Cn": ("texgyreheroscn-regular.otf", "texgyreheroscn-bold.otf"),
    "TeX Gyre Schola": ("texgyreschola-regular.otf", "texgyreschola-bold.otf"),
}
# Families never trained on because their digits copy a held-out family's: Lato (Carlito
# is Lato respaced) and Verana (drawn after Vera, as DejaVu Serif is). Neither package is
# in requirements/apt.txt; this keeps them out where a machine has them anyway.
LOOKALIKES = ("Lato", "Verana")
REGULAR = {"regular", "roman", "book", "normal"}
BOLD = {"bold", "semibold", "demi", "demibold"}


@lru_cache(maxsize=1)
def _fc_list() -> tuple[tuple[str, frozenset[str], str], ...]:
    """(family, styles, path) of every installed TrueType/OpenType file, by path."""
    out = subprocess.run(
        ["fc-list", "--format", "%{family[0]}|%{style}|%{file}\n"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = []
    for line in out.splitlines():
        try:
            family, style, path = line.split("|", 2)
        except ValueError:
            continue
        if path.endswith((".ttf", ".otf")):
            found.append((family, frozenset(st.strip().lower() for st in style.split(",")), path))
    return tuple(sorted(found, key=lambda f: f[2]))


def _heldout_faces() -> tuple[Face, ...]:
    paths = {Path(path).name: path for _, _, path in _fc_list()}
    missing = sorted(
        name for files in HELDOUT_FACES.values() for name in files if name not in paths
    )
    if missing:
        raise RuntimeError(
            f"held-out font files not installed: {', '.join(missing)}; install the font "
            "packages in requirements/apt.txt"
        )
    return tuple(
        Face(paths[regular], paths[bold], family in OLDSTYLE_FAMILIES)
        for family, (regular, bold) in sorted(HELDOUT_FACES.items())
    )


def _training_faces() -> tuple[Face, ...]:
    """A regular and a bold of every other family, the same on every machine with the same
    files: a style that says only "Regular" (or "Bold") before one that also names a
    weight ("Light,Regular"), then by path."""
    candidates: dict[str, dict[str, list[tuple[bool, str]]]] = {}
    for family, styles, path in _fc_list():
        name = Path(path).name.lower()
        if (
            family in HELDOUT_FACES
            or any(family.startswith(lookalike) for lookalike in LOOKALIKES)
            or any(s in family for s in SKIP_FAMILIES)
            or "math" in name
            or "italic" in name
            or any(w in name for w in EXTREME_WEIGHTS)
        ):
            continue
        for kind, words in (("regular", REGULAR), ("bold", BOLD)):
            if styles & words:
                candidates.setdefault(family, {}).setdefault(kind, []).append(
                    (not styles <= words, path)
                )
                break
    faces = []
    for family, kinds in sorted(candidates.items()):
        if "regular" in kinds:
            regular = min(kinds["regular"])[1]
            bold = min(kinds["bold"])[1] if "bold" in kinds else regular
            faces.append(Face(regular, bold, family in OLDSTYLE_FAMILIES))
    return tuple(faces)


def fonts(split: str) -> FontSet:
    if split not in ("train", "heldout"):
        raise ValueError("split must be 'train' or 'heldout'")
    faces = _heldout_faces() if split == "heldout" else _training_faces()
    if not faces:
        raise RuntimeError(
            "no usable fonts found; install the font packages in requirements/apt.txt"
        )
    return FontSet(split, faces)


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


WORDS = (  # noqa: SIM905 - reads as prose, not as a 200-item list
    "a the of and to in is with at by on from that which its if as be are this find "
    "body mass velocity acceleration force ball block car train stone particle rod "
    "spring string pulley plane inclined horizontal vertical angle height distance "
    "time speed friction coefficient energy kinetic potential momentum collision "
    "elastic charge field potential current resistance capacitor circuit magnetic "
    "wire coil lens mirror ray light wave frequency period amplitude pendulum gas "
    "temperature pressure volume heat work power torque moment inertia disc cylinder "
    "sphere radius axis rotates moves falls thrown released rests slides rolls "
    "determine calculate show prove estimate what how long much far fast initial "
    "final maximum minimum constant uniform neglect air resistance gravitational "
    "acceleration free fall projectile trajectory surface table floor wall ceiling "
    "observer frame reference relative earth moon satellite orbit planet"
).split()
UNITS = ("m", "kg", "s", "m/s", "cm", "N", "J", "W", "K", "Pa", "V", "A", "Hz", "g", "km/h")
SECTIONS = (
    "Kinematics",
    "Dynamics",
    "Conservation Laws",
    "Oscillations",
    "Waves",
    "Thermodynamics",
    "Electrostatics",
    "Magnetism",
    "Optics",
    "Rigid Bodies",
    "Gravitation",
    "Fluids",
    "Direct Current",
    "Induction",
)


def _sentence(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(6, 16)):
        r = rng.random()
        if r < 0.08:
            words.append(
                f"{rng.randint(1, 99)}{rng.choice(['', '.' + str(rng.randint(0, 9))])}"
                f" {rng.choice(UNITS)}"
            )
        elif r < 0.11:
            words.append(
                rng.choice(
                    [
                        "v = 3 m/s",
                        "F = ma",
                        f"(Fig. {rng.randint(1, 9)}.{rng.randint(1, 20)})",
                        "g = 9.8 m/s²",
                        "t = 2 s",
                        "α = 30°",
                        "μ = 0.2",
                        f"({rng.randint(1, 40)})",
                    ]
                )
            )
        else:
            words.append(rng.choice(WORDS))
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?"])


def _label_style(rng: random.Random) -> tuple[str, float, str]:
    """How one book prints its problem numbers: numbering scheme, marks, end."""
    scheme = rng.choices(["chapter.index", "index", "chapter.section.index"], [0.6, 0.32, 0.08])[0]
    return scheme, rng.choice([0.0, 0.1, 0.25]), rng.choice([".", ".", ".", "", ")"])


def _problem_label(
    rng: random.Random, style: tuple[str, float, str], chapter: int, index: int
) -> tuple[str, str]:
    scheme, mark_rate, end = style
    if scheme == "chapter.index":
        core = f"{chapter}.{index}"
    elif scheme == "index":
        core = str(index)
    else:
        core = f"{chapter}.{(index // 20) % 9 + 1}.{index % 20 + 1}"
    mark = rng.choice(["*", "*", "°"]) if rng.random() < mark_rate else ""
    return core + mark + ("." if mark and end == "" else end), core


@dataclass
class _Style:
    face: Face
    size: int
    leading: float
    bold_numbers: bool
    oldstyle: bool
    indent: int
    hanging: bool
    ink: tuple[int, int, int]


def _draw_text(draw: ImageDraw.ImageDraw, xy, text, font, fill, oldstyle: bool) -> None:
    if oldstyle:
        try:
            draw.text(xy, text, font=font, fill=fill, features=["onum"])
            return
        except (KeyError, OSError, ValueError):
            pass
    draw.text(xy, text, font=font, fill=fill)


def _layout_page(rng: random.Random, fontset: FontSet, width: int, height: int):
    paper = tuple(
        int(c)
        for c in np.clip(
            np.array([246, 243, 234])
            + rng.randint(-18, 8)
            + np.array([rng.randint(-6, 6) for _ in range(3)]),
            150,
            255,
        )
    )
    page = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(page)
    face = rng.choice(fontset.faces)
    size = rng.randint(max(14, width // 60), max(16, width // 34))
    ink_level = rng.randint(0, 60)
    style = _Style(
        face=face,
        size=size,
        leading=rng.uniform(1.15, 1.6),
        bold_numbers=rng.random() < 0.7,
        oldstyle=face.oldstyle and rng.random() < 0.6,
        indent=rng.choice([0, 0, size, 2 * size]),
        hanging=rng.random() < 0.3,
        ink=(ink_level, ink_level, ink_level + rng.randint(0, 10)),
    )
    regular = _font(face.regular, size)
    bold = _font(face.bold if style.bold_numbers else face.regular, size)
    margin_x = rng.randint(width // 14, width // 7)
    margin_top = rng.randint(height // 18, height // 9)
    margin_bottom = rng.randint(height // 18, height // 10)
    columns = 2 if rng.random() < 0.35 else 1
    gutter = rng.randint(size, 3 * size)
    col_w = (width - 2 * margin_x - (columns - 1) * gutter) // columns
    numbers: list[tuple[Box, str]] = []
    chapter = rng.randint(1, 30)
    index = rng.randint(1, 120) if rng.random() < 0.7 else rng.randint(100, 990)
    label_style = _label_style(rng)

    # Running header and page number, numbers that are not problem numbers.
    small = _font(face.regular, max(10, int(size * 0.8)))
    header = rng.choice(
        [
            f"Chapter {chapter}. {rng.choice(SECTIONS)}",
            rng.choice(SECTIONS).upper(),
            f"§ {chapter}.{rng.randint(1, 9)} {rng.choice(SECTIONS)}",
            "PROBLEMS",
        ]
    )
    page_no = str(rng.randint(3, 480))
    hy = margin_top - int(2.2 * size)
    if rng.random() < 0.85:
        if rng.random() < 0.5:
            _draw_text(draw, (margin_x, hy), header, small, style.ink, style.oldstyle)
            _draw_text(
                draw,
                (width - margin_x - small.getlength(page_no), hy),
                page_no,
                small,
                style.ink,
                style.oldstyle,
            )
        else:
            _draw_text(
                draw, ((width - small.getlength(header)) / 2, hy), header, small, style.ink, False
            )
            _draw_text(
                draw,
                ((width - small.getlength(page_no)) / 2, height - margin_bottom + size),
                page_no,
                small,
                style.ink,
                style.oldstyle,
            )
        if rng.random() < 0.5:
            draw.line(
                (margin_x, hy + int(1.4 * size), width - margin_x, hy + int(1.4 * size)),
                fill=style.ink,
                width=1,
            )

    line_h = int(size * style.leading)
    for col in range(columns):
        x_left = margin_x + col * (col_w + gutter)
        y = margin_top
        while y < height - margin_bottom - line_h:
            r = rng.random()
            if r < 0.07:  # a section heading
                head_font = _font(face.bold, int(size * rng.uniform(1.0, 1.4)))
                title = rng.choice(
                    [
                        f"{chapter}.{rng.randint(1, 9)}. {rng.choice(SECTIONS)}",
                        rng.choice(SECTIONS),
                        f"§ {rng.randint(1, 40)}. {rng.choice(SECTIONS)}",
                    ]
                )
                y += line_h // 2
                _draw_text(
                    draw,
                    (x_left + (col_w - head_font.getlength(title)) / 2 * rng.choice([0, 1]), y),
                    title,
                    head_font,
                    style.ink,
                    style.oldstyle,
                )
                y += int(line_h * 1.6)
                continue
            if r < 0.1:  # a small figure
                fh = rng.randint(3, 7) * line_h
                if y + fh < height - margin_bottom:
                    cx = x_left + rng.randint(col_w // 4, 3 * col_w // 4)
                    draw.ellipse(
                        (cx - fh // 4, y + fh // 4, cx + fh // 4, y + 3 * fh // 4),
                        outline=style.ink,
                        width=2,
                    )
                    draw.line(
                        (x_left + col_w // 6, y + fh - 6, x_left + 5 * col_w // 6, y + fh // 5),
                        fill=style.ink,
                        width=2,
                    )
                    _draw_text(
                        draw,
                        (cx - size, y + fh - size // 2),
                        f"Fig. {chapter}.{rng.randint(1, 30)}",
                        small,
                        style.ink,
                        style.oldstyle,
                    )
                    y += fh + line_h
                continue
            # A problem: its number, then a paragraph.
            printed, core = _problem_label(rng, label_style, chapter, index)
            index += 1
            text = " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
            num_x = x_left - (
                int(size * 1.8) if style.hanging and col == 0 and x_left > 2 * size else 0
            )
            num_x += 0 if style.hanging else style.indent
            _draw_text(draw, (num_x, y), printed, bold, style.ink, style.oldstyle)
            bb = draw.textbbox(
                (num_x, y), printed, font=bold, features=["onum"] if style.oldstyle else None
            )
            numbers.append(((float(bb[0]), float(bb[1]), float(bb[2]), float(bb[3])), core))
            x = max(bb[2] + size * rng.uniform(0.3, 0.8), x_left + (0 if style.hanging else 0))
            words = text.split()
            line_start = x
            while words and y < height - margin_bottom - line_h:
                line = []
                cur = line_start
                while words:
                    wlen = regular.getlength(words[0] + " ")
                    if cur + wlen > x_left + col_w and line:
                        break
                    line.append(words.pop(0))
                    cur += wlen
                _draw_text(
                    draw, (line_start, y), " ".join(line), regular, style.ink, style.oldstyle
                )
                y += line_h
                line_start = x_left
            y += int(line_h * rng.uniform(0.2, 0.8))
    return page, numbers, face


def _background(rng: random.Random, w: int, h: int) -> np.ndarray:
    nrng = np.random.default_rng(rng.randrange(2**32))
    base = np.array([rng.randint(20, 230) for _ in range(3)], dtype=np.float32)
    kind = rng.random()
    img = np.ones((h, w, 3), np.float32) * base
    if kind < 0.4:  # wood-like grain
        y = np.linspace(0, rng.uniform(20, 80), h)[:, None]
        x = np.linspace(0, rng.uniform(2, 8), w)[None, :]
        grain = np.sin(y + 3 * np.sin(x + nrng.normal(0, 0.5))) * rng.uniform(8, 25)
        img += grain[..., None]
    elif kind < 0.7:  # fabric / noise
        noise = cv2.GaussianBlur(
            nrng.normal(0, 25, (h // 4 + 1, w // 4 + 1)).astype(np.float32), (0, 0), 2
        )
        img += cv2.resize(noise, (w, h))[..., None]
    img += nrng.normal(0, 4, (h, w, 1))
    return np.clip(img, 0, 255)


def _photograph(rng: random.Random, page: Image.Image, numbers: list[tuple[Box, str]]):
    nrng = np.random.default_rng(rng.randrange(2**32))
    pw, ph = page.size
    out_h = rng.randint(1100, 1900)
    out_w = int(out_h * rng.uniform(0.68, 0.8))
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32)
    fill = rng.uniform(0.75, 1.02)
    scale = min(out_w / pw, out_h / ph) * fill
    cx, cy = (
        out_w / 2 + rng.uniform(-0.05, 0.05) * out_w,
        out_h / 2 + rng.uniform(-0.05, 0.05) * out_h,
    )
    angle = math.radians(rng.gauss(0, 3) if rng.random() < 0.85 else rng.uniform(-15, 15))
    dst = []
    for x, y in src:
        dx, dy = (x - pw / 2) * scale, (y - ph / 2) * scale
        rx = dx * math.cos(angle) - dy * math.sin(angle)
        ry = dx * math.sin(angle) + dy * math.cos(angle)
        jitter = 0.04 * min(out_w, out_h)
        dst.append([cx + rx + rng.uniform(-jitter, jitter), cy + ry + rng.uniform(-jitter, jitter)])
    dst = np.array(dst, np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    bg = _background(rng, out_w, out_h)
    warped = cv2.warpPerspective(
        np.asarray(page, np.float32),
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    mask = cv2.warpPerspective(np.ones((ph, pw), np.float32), matrix, (out_w, out_h))[..., None]
    img = warped * mask + bg * (1 - mask)

    # Light: a gradient, a vignette, sometimes a soft shadow across the page.
    yy, xx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
    gx, gy = rng.uniform(-1, 1), rng.uniform(-1, 1)
    light = 1 + rng.uniform(0.05, 0.35) * ((xx / out_w - 0.5) * gx + (yy / out_h - 0.5) * gy)
    r2 = (xx / out_w - 0.5) ** 2 + (yy / out_h - 0.5) ** 2
    light *= 1 - rng.uniform(0, 0.5) * r2
    if rng.random() < 0.4:
        sx, sy = rng.uniform(0, out_w), rng.uniform(0, out_h)
        shadow = np.exp(
            -(
                ((xx - sx) / (out_w * rng.uniform(0.2, 0.5))) ** 2
                + ((yy - sy) / (out_h * rng.uniform(0.2, 0.5))) ** 2
            )
        )
        light *= 1 - rng.uniform(0.15, 0.5) * shadow
    light *= rng.uniform(0.7, 1.15)
    tint = np.array([rng.uniform(0.9, 1.08), 1.0, rng.uniform(0.85, 1.08)], np.float32)
    img = img * light[..., None] * tint
    blur = rng.choice([0, 0, 0.6, 1.0, 1.5, 2.2])
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += nrng.normal(0, rng.uniform(1, 7), img.shape).astype(np.float32)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(45, 95))
    im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    boxes = []
    for (x0, y0, x1, y1), text in numbers:
        pts = np.array([[[x0, y0]], [[x1, y0]], [[x1, y1]], [[x0, y1]]], np.float32)
        t = cv2.perspectiveTransform(pts, matrix).reshape(-1, 2)
        bx0, by0 = float(t[:, 0].min()), float(t[:, 1].min())
        bx1, by1 = float(t[:, 0].max()), float(t[:, 1].max())
        if bx0 >= 0 and by0 >= 0 and bx1 <= out_w and by1 <= out_h:
            boxes.append(((bx0, by0, bx1, by1), text))
        elif bx1 > 0 and by1 > 0 and bx0 < out_w and by0 < out_h:
            # Cut by the frame: unreadable, so paint it out of the labels by dropping it
            # only when mostly outside; partly visible numbers stay unlabelled.
            pass
    return im, boxes, float(blur)


def render_page(seed: int, fontset: FontSet) -> PageSample:
    rng = random.Random(seed)
    width = rng.randint(1000, 1400)
    height = int(width * rng.uniform(1.35, 1.5))
    page, numbers, face = _layout_page(rng, fontset, width, height)
    image, boxes, blur = _photograph(rng, page, numbers)
    return PageSample(image, boxes, blur, Path(face.regular).name)


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "coins",
        "camera",
        "moon",
        "retina",
        "cat",
        "colorwheel",
        "grass",
        "gravel",
        "brick",
        "horse",
        "clock",
        "logo",
        "motorcycle_left",
        "rocket",
        "stereo_motorcycle",
        "microaneurysms",
        "cell",
    ]
    photos = []
    for name in names:
        try:
            arr = getattr(data, name)()
        except Exception:  # noqa: BLE001 - some need an optional download; skip those
            continue
        if isinstance(arr, tuple):
            arr = arr[0]
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            arr = (255 * (arr.astype(np.float32) / max(1e-6, float(arr.max())))).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        photos.append(arr[..., :3])
    photos.extend(load_sample_images().images)
    return tuple(photos)


def render_negative(seed: int) -> Image.Image:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    h = rng.randint(400, 1600)
    w = int(h * rng.uniform(0.6, 1.6))
    kind = rng.random()
    if kind < 0.5:
        photo = rng.choice(_photos())
        ph, pw = photo.shape[:2]
        cw, ch = int(pw * rng.uniform(0.5, 1)), int(ph * rng.uniform(0.5, 1))
        x0, y0 = rng.randint(0, pw - cw), rng.randint(0, ph - ch)
        img = cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (w, h)).astype(np.float32)
        if rng.random() < 0.5:
            img = img[:, ::-1]
    elif kind < 0.75:
        img = _background(rng, w, h)
        im = Image.fromarray(img.astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(rng.randint(3, 40)):
            c = tuple(rng.randint(0, 255) for _ in range(3))
            x, y = rng.randint(0, w), rng.randint(0, h)
            s = rng.randint(10, max(11, w // 3))
            shape = rng.random()
            if shape < 0.4:
                d.rectangle((x, y, x + s, y + rng.randint(10, s)), fill=c)
            elif shape < 0.8:
                d.ellipse((x, y, x + s, y + s), fill=c)
            else:
                d.line(
                    (x, y, rng.randint(0, w), rng.randint(0, h)), fill=c, width=rng.randint(1, 12)
                )
        img = np.asarray(im, np.float32)
        if rng.random() < 0.5:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1, 12))
    else:
        img = _background(rng, w, h)
        if rng.random() < 0.5:  # stripes or checks
            period = rng.randint(8, 120)
            yy, xx = np.mgrid[0:h, 0:w]
            pattern = ((xx // period + (yy // period if rng.random() < 0.5 else 0)) % 2).astype(
                np.float32
            )
            img = img * (0.6 + 0.4 * pattern[..., None])
    img = img * rng.uniform(0.6, 1.2) + nrng.normal(0, rng.uniform(1, 8), img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(45, 95))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
