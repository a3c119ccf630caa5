"""Stage 4: read each crop: the pack's own line reader (``ctc``) or Tesseract."""

from __future__ import annotations

import glob
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from workers.pipeline.numbering import Numbering, follow, gaps, runs
from workers.pipeline.pack import PackError

NUMBER = re.compile(r"\d+(?:\.\d+)*")


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float  # 0-100 (Tesseract: mean word confidence; ctc: see CtcReader); 0: no text
    raw: str = ""
    # ctc: the network's output for the crop, (columns, classes) probabilities
    columns: np.ndarray | None = field(default=None, repr=False, compare=False)


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
    # A reading less sure than this is reported as no text (unless a ctc reader's second
    # look keeps it).
    min_confidence: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> OcrSettings:
        known = ("languages", "psm", "allow", "timeout_ms", "threads", "pattern", "min_confidence")
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


def prepare_crop(crop: Image.Image, height: int) -> np.ndarray:
    """A crop as the line reader sees it: ``height`` pixels high, paper 0, ink 1."""
    gray = crop.convert("L")
    if gray.height != height:
        width = max(1, round(gray.width * height / gray.height))
        gray = gray.resize((width, height), Image.BILINEAR)
    arr = np.asarray(gray, dtype=np.float32)
    paper = float(np.median(arr))
    ink = float(np.percentile(arr, 2))
    return np.clip((paper - arr) / max(paper - ink, 24.0), -0.5, 1.5)


def pad_batch(arrays: list[np.ndarray], margin: int, stride: int) -> tuple[np.ndarray, list[int]]:
    """Prepared crops as one ``(N, 1, H, W)`` batch, each padded on the right with
    background (0) to the widest plus ``margin``; and each crop's number of output
    columns, the only ones that belong to it."""
    width = max(a.shape[1] for a in arrays) + margin
    width += -width % stride
    batch = np.zeros((len(arrays), 1, arrays[0].shape[0], width), np.float32)
    for row, a in enumerate(arrays):
        batch[row, 0, :, : a.shape[1]] = a
    return batch, [-(-a.shape[1] // stride) for a in arrays]


def ctc_probability(probs: np.ndarray, labels: list[int]) -> float:
    """The probability that ``(columns, classes)`` output spells ``labels`` (class
    indices, blank 0): the sum over every CTC alignment, by the forward algorithm in
    log space."""
    if probs.shape[0] == 0:
        return 0.0
    ext = np.zeros(2 * len(labels) + 1, dtype=np.int64)
    ext[1::2] = labels
    logp = np.log(np.maximum(probs[:, ext], 1e-30))
    # A path may skip the blank between two different characters.
    skip = np.zeros(len(ext), bool)
    skip[2:] = (ext[2:] != 0) & (ext[2:] != ext[:-2])
    alpha = np.full(len(ext), -np.inf)
    alpha[: min(2, len(ext))] = logp[0, : min(2, len(ext))]
    for t in range(1, probs.shape[0]):
        step = alpha.copy()
        step[1:] = np.logaddexp(step[1:], alpha[:-1])
        step[2:] = np.where(skip[2:], np.logaddexp(step[2:], alpha[:-2]), step[2:])
        alpha = step + logp[t]
    end = alpha[-1] if len(ext) == 1 else np.logaddexp(alpha[-1], alpha[-2])
    return float(np.exp(end))


def ctc_greedy(probs: np.ndarray, alphabet: str) -> tuple[str, list[float]]:
    """Greedy CTC over ``(columns, classes)`` probabilities, class 0 the blank: the best
    class per column, repeats merged, blanks dropped. Returns the text and each
    character's probability (its best column's)."""
    best = probs.argmax(-1)
    chars: list[str] = []
    sure: list[float] = []
    previous = 0
    for column, cls in enumerate(best):
        if cls != 0 and cls != previous:
            chars.append(alphabet[cls - 1])
            sure.append(float(probs[column, cls]))
        elif cls != 0 and sure:
            sure[-1] = max(sure[-1], float(probs[column, cls]))
        previous = cls
    return "".join(chars), sure


class CtcReader:
    """A line recogniser trained with the pack (``workers.training train-reader``).

    Reads a batch of crops in one forward pass: each crop is scaled to the network's
    height, its contrast stretched so paper is 0 and ink 1, and padded on the right
    with background. The network is convolutional (``nets.LineReader``), so what it
    reads in a crop does not depend on the other crops in the batch. Confidence is
    the probability of the least sure character, 0-100 (for a reading kept by the
    second look, the best of the agreeing readings').

    There is no per-crop time limit to enforce: the work is bounded by the crop
    stage's ``max_width``, a few milliseconds for the widest crop on a CPU.
    """

    STRIDE = 4  # input pixels per output column

    def __init__(
        self,
        module: Any,
        alphabet: str,
        settings: OcrSettings,
        device: Any,
        second_look: SecondLook | None = None,
        numbering: Numbering | None = None,
    ) -> None:
        self.module = module
        self.alphabet = alphabet
        self.settings = settings
        self.device = device
        self.second_look = second_look
        self.numbering = numbering
        self.height = int(module.height)
        self.margin = int(module.RECEPTIVE_FIELD) // 2
        self.chunk = 64

    @classmethod
    def from_pack(cls, pack: Any, cfg: dict[str, Any], device: Any) -> CtcReader:
        from workers.pipeline.classify import load_module
        from workers.pipeline.nets import ReaderEnsemble

        look = SecondLook.from_config(cfg["second_look"]) if "second_look" in cfg else None
        sequence = Numbering.from_config(cfg["numbering"]) if "numbering" in cfg else None
        alphabet = cfg.get("alphabet")
        if not isinstance(alphabet, str) or not alphabet:
            raise PackError(
                f"{pack.root}: ocr backend 'ctc' needs 'alphabet' (the classes after blank)"
            )
        args = {"num_classes": len(alphabet) + 1, **cfg.get("arch_args", {})}
        files = reader_files(cfg, pack.root)
        members = [
            load_module(pack, {"arch": "line_reader", **cfg, "file": f, "arch_args": args}, device)
            for f in files
        ]
        try:
            module = members[0] if len(members) == 1 else ReaderEnsemble(members).eval()
        except ValueError as exc:
            raise PackError(f"{pack.root}: ocr 'file' {files}: {exc}") from None
        return cls(module, alphabet, OcrSettings.from_config(cfg), device, look, sequence)

    def prepare(self, crop: Image.Image) -> np.ndarray:
        return prepare_crop(crop, self.height)

    def read(self, crops: list[Image.Image]) -> list[Reading]:
        readings = self._read_arrays([self.prepare(c) for c in crops])
        threshold = self.settings.min_confidence
        unsure = [k for k, r in enumerate(readings) if r.text and r.confidence < threshold]
        kept: dict[int, Reading] = {}
        if unsure and self.second_look is not None:
            kept = self._look_again(crops, readings, unsure)
        # Every crop keeps the columns of its first reading, for the page's numbering
        # to weigh.
        return [
            replace(r, confidence=round(r.confidence, 2))
            if r.confidence >= threshold
            else replace(kept.get(k) or Reading("", 0.0, r.raw), columns=r.columns)
            for k, r in enumerate(readings)
        ]

    def follow_numbering(self, readings: list[Reading]) -> list[Reading]:
        """One page's readings in reading order; where one is unsure (no text, or less
        sure than the pack's `min_confidence`) and its crop gives the number the sure
        numbers around it expect (workers.pipeline.numbering) at least
        `numbering.min_probability`, that number, with that probability as confidence.
        Then, where the pack asks for it, the same for the number a run of readings
        around it agrees on (`numbering.runs`)."""
        if self.numbering is None:
            return readings
        threshold = self.settings.min_confidence
        sure = [bool(r.text) and r.confidence >= threshold for r in readings]
        probability = self._probability_of(readings)
        texts = [r.text for r in readings]
        readings = _taking(
            readings, follow(texts, sure, probability, self.numbering.min_probability)
        )
        if self.numbering.runs is not None:
            sure = [bool(r.text) and r.confidence >= threshold for r in readings]
            # Each unsure crop's own best reading, whatever its confidence.
            own = [
                "" if s or r.columns is None else self.decode(r.columns).text
                for r, s in zip(readings, sure, strict=True)
            ]
            texts = [r.text for r in readings]
            readings = _taking(readings, runs(texts, sure, own, probability, self.numbering.runs))
        return readings

    def fill_gaps(self, readings: list[Reading], candidate: list[bool]) -> dict[int, Reading]:
        """One page's readings in reading order over every box, `candidate` marking the
        boxes under the detector's threshold: the candidates that are the number their
        read neighbours say belongs there (`numbering.gaps`), by position, with the
        crop's probability of it as confidence. The others are to be dropped."""
        check = None if self.numbering is None else self.numbering.gaps
        if check is None:
            return {}
        texts = [None if c else r.text for r, c in zip(readings, candidate, strict=True)]
        taken = gaps(texts, self._probability_of(readings), check)
        return {k: r for k, r in enumerate(_taking(readings, taken)) if k in taken}

    def _probability_of(self, readings: list[Reading]) -> Callable[[int, str], float]:
        """How likely the crop at a position of `readings` says a text (0 without its
        columns)."""

        def probability(position: int, text: str) -> float:
            columns = readings[position].columns
            return 0.0 if columns is None else self.probability(columns, text)

        return probability

    def probability(self, columns: np.ndarray, text: str) -> float:
        """How likely the crop with this output says `text`, bare or with the full stop
        problem books print after a number (what the pack's pattern leaves out)."""
        if not text or any(ch not in self.alphabet for ch in text):
            return 0.0
        labels = [self.alphabet.index(ch) + 1 for ch in text]
        total = ctc_probability(columns, labels)
        if "." in self.alphabet:
            total += ctc_probability(columns, [*labels, self.alphabet.index(".") + 1])
        return min(1.0, total)

    def _look_again(
        self, crops: list[Image.Image], readings: list[Reading], unsure: list[int]
    ) -> dict[int, Reading]:
        """Read each unsure crop again, stretched and squeezed; where enough readings agree,
        each sure enough, keep that text: the kept readings, by crop index."""
        look = self.second_look
        assert look is not None
        n = len(look.stretch)
        again = self._read_arrays(
            [self.prepare(_stretched(crops[k], f)) for k in unsure for f in look.stretch]
        )
        kept = {}
        for j, k in enumerate(unsure):
            votes = [
                r
                for r in [readings[k], *again[j * n : (j + 1) * n]]
                if r.text and r.confidence >= look.min_confidence
            ]
            ranked = Counter(r.text for r in votes).most_common(2)
            if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):  # no tie
                text, count = ranked[0]
                if count >= look.agree:
                    best = max((r for r in votes if r.text == text), key=lambda r: r.confidence)
                    kept[k] = Reading(best.text, round(best.confidence, 2), best.raw)
        return kept

    def _read_arrays(self, arrays: list[np.ndarray]) -> list[Reading]:
        """Prepared crops, read in batches of similar width; no threshold applied."""
        import torch

        order = sorted(range(len(arrays)), key=lambda k: arrays[k].shape[1])
        out: list[Reading | None] = [None] * len(arrays)
        for start in range(0, len(order), self.chunk):
            part = order[start : start + self.chunk]
            batch, columns = pad_batch([arrays[k] for k in part], self.margin, self.STRIDE)
            with torch.inference_mode():
                logits = self.module(torch.from_numpy(batch).to(self.device))
                probs = logits.float().softmax(-1).cpu().numpy()
            for row, k in enumerate(part):
                out[k] = self.decode(probs[row, : columns[row]])
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def decode(self, probs: np.ndarray) -> Reading:
        """One crop's columns as a reading: greedy CTC and the pack's pattern; the
        confidence is the least sure character's probability (the threshold is `read`'s)."""
        raw, sure = ctc_greedy(probs, self.alphabet)
        text = self.settings.clean(raw)
        confidence = 100.0 * min(sure) if text else 0.0
        return Reading(text, confidence, raw, probs)


def _taking(readings: list[Reading], taken: dict[int, tuple[str, float]]) -> list[Reading]:
    """The readings with the numbering's (text, probability) where it took one; the
    probability becomes the confidence (0-100)."""
    return [
        replace(r, text=taken[k][0], confidence=round(100 * taken[k][1], 2)) if k in taken else r
        for k, r in enumerate(readings)
    ]


@dataclass(frozen=True)
class SecondLook:
    """How a `ctc` reader reads a crop again when its first reading is below the pack's
    `min_confidence` (manifest: ``ocr.second_look``): the crop stretched by each factor
    in `stretch` and read each time; a text given by at least `agree` of the readings
    (the first included), each at least `min_confidence` sure and more of them than give
    any other text, is kept, with the best of their confidences."""

    # The reference pack's settings, chosen on validation pages with pack 1.2.0's reader
    # (docs/models.md); `workers.training pack` writes them.
    stretch: tuple[float, ...] = (0.85, 1.15)
    agree: int = 2
    min_confidence: float = 70.0

    @classmethod
    def from_config(cls, cfg: Any) -> SecondLook:
        if not isinstance(cfg, dict):
            raise PackError("ocr.second_look must be an object (stretch, agree, min_confidence)")
        try:
            look = cls(
                stretch=tuple(float(f) for f in cfg.get("stretch", cls.stretch)),
                agree=int(cfg.get("agree", cls.agree)),
                min_confidence=float(cfg.get("min_confidence", cls.min_confidence)),
            )
        except (TypeError, ValueError) as exc:
            raise PackError(
                "ocr.second_look: stretch is a list of numbers, agree an integer, "
                f"min_confidence a number ({exc})"
            ) from None
        if not look.stretch or not all(0.25 <= f <= 4 for f in look.stretch):
            raise PackError("ocr.second_look.stretch: one or more factors from 0.25 to 4")
        if not 0 <= look.min_confidence <= 100:
            raise PackError("ocr.second_look.min_confidence: from 0 to 100")
        if not 2 <= look.agree <= len(look.stretch) + 1:
            raise PackError(
                "ocr.second_look.agree: at least 2 and at most the number of readings "
                f"({len(look.stretch) + 1})"
            )
        return look


def reader_files(cfg: dict[str, Any], where: Any = "the pack") -> list[str]:
    """The weight files a `ctc` reader's ``ocr.file`` names: one, or several readers'
    read as one (nets.ReaderEnsemble)."""
    files = cfg.get("file")
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise PackError(
            f"{where}: ocr 'file' must name the reader's weights, or list several"
            " readers' to read as one"
        )
    return files


def _stretched(crop: Image.Image, factor: float) -> Image.Image:
    width = max(4, round(crop.width * factor))
    return crop.resize((width, crop.height), Image.BILINEAR)


def load_reader(cfg: dict[str, Any], pack: Any = None, device: Any = None) -> Reader:
    settings = OcrSettings.from_config(cfg)
    backend = cfg.get("backend", "tesserocr")
    for ctc_only in ("second_look", "numbering"):
        if ctc_only in cfg and backend != "ctc":
            raise PackError(f"ocr.{ctc_only} is for the 'ctc' reader, not {backend!r}")
    if backend == "tesserocr":
        return TesserocrReader(settings)
    if backend == "pytesseract":
        return PytesseractReader(settings)
    if backend == "ctc":
        if pack is None:
            raise PackError("the 'ctc' ocr backend loads its weights from a pack")
        import torch

        return CtcReader.from_pack(pack, cfg, device or torch.device("cpu"))
    raise PackError(f"unknown ocr backend {backend!r} (tesserocr, pytesseract, ctc)")
