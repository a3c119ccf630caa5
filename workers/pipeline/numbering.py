"""Problem numbers run in sequence: an unsure reading between sure ones is checked
against the number the sequence says belongs there.

A problem book numbers its problems one after another (3.14, 3.15, 3.16, or 214, 215,
216), and a page shows them in reading order. Where the reader is unsure of a number
(a blurred or unfamiliar print), the nearest sure number before it in reading order
says what it should be (that number plus the count of regions between them), and so
does the nearest sure number after it. When both speak they must agree: if they do
not, the count between them is broken (a number the detector missed, a box that is no
number, a sure reading that is wrong) and nothing is expected there. The crop itself
decides: the expected text is taken only when the reader gives it a probability of at
least `min_probability` (manifest: ``ocr.numbering``). Sure readings are never changed,
and a page without sure numbers, or a number no neighbour predicts, keeps what the
reader said.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.pipeline.pack import PackError

_NUMBER = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class Numbering:
    # Chosen with pack 1.2.1's reader (docs/models.md); `workers.training pack`
    # writes it.
    min_probability: float = 0.05

    @classmethod
    def from_config(cls, cfg: Any) -> Numbering:
        if not isinstance(cfg, dict) or set(cfg) - {"min_probability"}:
            raise PackError("ocr.numbering must be an object with min_probability")
        try:
            numbering = cls(min_probability=float(cfg.get("min_probability", cls.min_probability)))
        except (TypeError, ValueError):
            raise PackError("ocr.numbering.min_probability must be a number") from None
        if not 0 < numbering.min_probability <= 1:
            raise PackError("ocr.numbering.min_probability: above 0, at most 1")
        return numbering


def _parse(text: str) -> tuple[str, int] | None:
    """ "17.31" -> ("17.", 31); "215" -> ("", 215); None when it does not end in digits."""
    match = _NUMBER.fullmatch(text)
    return (match.group(1), int(match.group(2))) if match else None


def expected(texts: list[str], sure: list[bool], position: int) -> str | None:
    """The number the nearest sure numbers before and after `position` (in reading
    order) say belongs there; None when neither says, or the two disagree."""
    numbers = [(j, parsed) for j, t in enumerate(texts) if sure[j] and (parsed := _parse(t))]
    said: set[str] = set()
    before = next((x for x in reversed(numbers) if x[0] < position), None)
    if before is not None:
        j, (prefix, n) = before
        said.add(f"{prefix}{n + position - j}")
    after = next((x for x in numbers if x[0] > position), None)
    if after is not None:
        j, (prefix, n) = after
        if n - (j - position) <= 0:
            return None  # the count runs out before it: broken
        said.add(f"{prefix}{n - (j - position)}")
    return said.pop() if len(said) == 1 else None


def follow(
    texts: list[str],
    sure: list[bool],
    probability: Callable[[int, str], float],
    min_probability: float,
) -> dict[int, tuple[str, float]]:
    """For the unsure positions (reading order) whose crop gives the expected number at
    least `min_probability`: that number and its probability, by position."""
    taken: dict[int, tuple[str, float]] = {}
    for position, is_sure in enumerate(sure):
        text = None if is_sure else expected(texts, sure, position)
        if text is not None and (p := probability(position, text)) >= min_probability:
            taken[position] = (text, p)
    return taken
