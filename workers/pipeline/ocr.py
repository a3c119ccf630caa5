"""Stage 4: read each crop with Tesseract."""

from __future__ import annotations

import glob
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from workers.pipeline.pack import PackError

NUMBER = re.compile(r"\d+(?:\.\d+)*")


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float  # 0-100, Tesseract's mean word confidence; 0 when nothing was read
    raw: str = ""


class Reader(Protocol):
    def read(self, crops: list[Image.Image]) -> list[Reading]: ...


@dataclass(frozen=True)
class OcrSettings:
    languages: str = "eng"
    psm: int = 7  # a single text line
    allow: str = ""  # character allow-list; empty allows everything
    timeout_ms: int = 500  # per crop
    threads: int = 2
    pattern: str = ""  # when set, the text is the first match of this regex in the raw reading

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> OcrSettings:
        known = ("languages", "psm", "allow", "timeout_ms", "threads", "pattern")
        return cls(**{k: cfg[k] for k in known if k in cfg})

    def clean(self, raw: str) -> str:
        raw = " ".join(raw.split())
        if not self.pattern:
            return raw
        match = re.search(self.pattern, raw)
        return match.group(0) if match else ""


def tessdata_dir() -> str:
    """Where Tesseract's language data lives: $TESSDATA_PREFIX, else Debian's place."""
    env = os.environ.get("TESSDATA_PREFIX")
    candidates = (
        ([env] if env else [])
        + sorted(glob.glob("/usr/share/tesseract-ocr/*/tessdata"), reverse=True)
        + ["/usr/share/tessdata", "/usr/local/share/tessdata"]
    )
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "eng.traineddata")):
            return path
    raise PackError(
        "no Tesseract language data found; install it with "
        "'apt-get install tesseract-ocr-eng' or set TESSDATA_PREFIX"
    )


class TesserocrReader:
    """Tesseract in-process: one engine per thread, made once and reused.

    Tesseract's engine is not thread-safe but is cheap to reuse, so each pool thread
    owns one; the work runs without the GIL, so the pool really reads in parallel.
    """

    def __init__(self, settings: OcrSettings) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        self.settings = settings
        self.path = tessdata_dir()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ocr")
        self._engine()  # fail now, not on the first job, when the data is unusable

    def _engine(self) -> Any:
        api = getattr(self._local, "api", None)
        if api is None:
            tesserocr = self._tesserocr
            try:
                api = tesserocr.PyTessBaseAPI(
                    path=self.path,
                    lang=self.settings.languages,
                    psm=self.settings.psm,
                    oem=tesserocr.OEM.LSTM_ONLY,
                )
            except RuntimeError as exc:
                raise PackError(
                    f"Tesseract could not start with languages {self.settings.languages!r} "
                    f"from {self.path}: {exc}"
                ) from exc
            if self.settings.allow:
                api.SetVariable("tessedit_char_whitelist", self.settings.allow)
            self._local.api = api
        return api

    def read_one(self, crop: Image.Image) -> Reading:
        api = self._engine()
        api.SetImage(crop)
        if not api.Recognize(timeout=self.settings.timeout_ms):
            api.Clear()
            return Reading("", 0.0, "")
        raw = api.GetUTF8Text() or ""
        confidence = float(api.MeanTextConf())
        api.Clear()
        text = self.settings.clean(raw)
        return Reading(text, max(confidence, 0.0) if text else 0.0, raw.strip())

    def read(self, crops: list[Image.Image]) -> list[Reading]:
        if len(crops) <= 1:
            return [self.read_one(c) for c in crops]
        return list(self._pool.map(self.read_one, crops))


class PytesseractReader:
    """The ``tesseract`` program, one process per crop: slower, but no extension needed."""

    def __init__(self, settings: OcrSettings) -> None:
        import pytesseract

        self._pytesseract = pytesseract
        self.settings = settings
        self.path = tessdata_dir()
        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError as exc:
            raise PackError(
                "the pytesseract backend needs the tesseract program: "
                "'apt-get install tesseract-ocr'"
            ) from exc
        self._pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="ocr")

    def read_one(self, crop: Image.Image) -> Reading:
        pt = self._pytesseract
        config = f"--psm {self.settings.psm} --oem 1 --tessdata-dir {self.path}"
        if self.settings.allow:
            config += f" -c tessedit_char_whitelist={self.settings.allow}"
        try:
            data = pt.image_to_data(
                crop,
                lang=self.settings.languages,
                config=config,
                timeout=self.settings.timeout_ms / 1000.0,
                output_type=pt.Output.DICT,
            )
        except RuntimeError:  # pytesseract's way of saying the time ran out
            return Reading("", 0.0, "")
        words = [
            (w, float(c)) for w, c in zip(data["text"], data["conf"], strict=True) if w.strip()
        ]
        raw = " ".join(w for w, _ in words)
        text = self.settings.clean(raw)
        conf = sum(c for _, c in words) / len(words) if words and text else 0.0
        return Reading(text, max(conf, 0.0), raw)

    def read(self, crops: list[Image.Image]) -> list[Reading]:
        return list(self._pool.map(self.read_one, crops))


def load_reader(cfg: dict[str, Any]) -> Reader:
    settings = OcrSettings.from_config(cfg)
    backend = cfg.get("backend", "tesserocr")
    if backend == "tesserocr":
        return TesserocrReader(settings)
    if backend == "pytesseract":
        return PytesseractReader(settings)
    raise PackError(f"unknown ocr backend {backend!r} (tesserocr, pytesseract)")
