"""Plain result types of the reading chain. No Django, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in input pixels

STAGES = ("classify", "detect", "crop", "ocr")


@dataclass(frozen=True)
class Classification:
    label: str
    score: float
    relevant: bool


@dataclass(frozen=True)
class Detection:
    box: Box
    label: str
    score: float


@dataclass(frozen=True)
class Region:
    box: Box
    label: str
    score: float
    text: str
    confidence: float


@dataclass
class ImageResult:
    """What the chain says about one image."""

    classification: Classification
    regions: list[Region] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    # Crops handed to OCR, in region order; kept so a caller can store them.
    crops: list[object] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "classification": asdict(self.classification),
            "regions": [
                {
                    "box": [round(v, 1) for v in r.box],
                    "label": r.label,
                    "score": round(r.score, 4),
                    "text": r.text,
                    "confidence": round(r.confidence, 2),
                }
                for r in self.regions
            ],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }
