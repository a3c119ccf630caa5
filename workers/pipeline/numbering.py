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
least `min_probability` (manifest: ``ocr.numbering``). Sure readings are never changed.

Two more checks follow the same idea where that one cannot speak (``runs``, ``gaps``):

- Runs: on a blurred page few readings are sure, but unsure readings next to one
  another often still spell consecutive numbers. Each unsure region hears what its
  neighbours within `radius` positions say it must be (a sure neighbour's text, or an
  unsure one's own best reading, plus the count between them) and its own best
  reading; the text said by at least `votes` of them, and by more than any other, is
  taken when the crop gives it `min_probability`.
- Gaps: a box the detector scored under the pack's threshold (down to `min_score`) that
  sits between read numbers in reading order, with no other box between, is the number
  they say belongs there, when its crop gives that number `min_probability`; otherwise
  it is dropped as before. A problem number printed a little unlike the rest (a
  heavier face, a smudge) is found this way without lowering the threshold for
  everything else (a section heading "11.5" scores as high as a number but seldom fits
  the sequence around it).

A number none of them expects keeps what the reader said.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from workers.pipeline.pack import PackError

_NUMBER = re.compile(r"(.*?)(\d+)")


@dataclass(frozen=True)
class Runs:
    radius: int = 3
    votes: int = 3
    min_probability: float = 0.2


@dataclass(frozen=True)
class Gaps:
    min_score: float = 0.5
    min_probability: float = 0.5


@dataclass(frozen=True)
class Numbering:
    """The defaults are what `workers.training pack` writes for one reader (chosen with
    pack 1.2.1's models: docs/models.md), `READ_TOGETHER` what it writes for several; in
    a manifest, a check left out is off."""

    min_probability: float = 0.05
    runs: Runs | None = field(default_factory=Runs)
    gaps: Gaps | None = field(default_factory=Gaps)

    @classmethod
    def from_config(cls, cfg: Any) -> Numbering:
        if not isinstance(cfg, dict) or set(cfg) - {"min_probability", "runs", "gaps"}:
            raise PackError("ocr.numbering must be an object with min_probability, runs, gaps")
        min_probability = _probability(cfg, "min_probability", cls.min_probability, "")
        runs = gaps = None
        if "runs" in cfg:
            runs = _section(cfg["runs"], Runs, "runs")
            if not 1 <= runs.radius <= 20 or not 2 <= runs.votes <= 2 * runs.radius + 1:
                raise PackError(
                    "ocr.numbering.runs: radius from 1 to 20, votes from 2 to 2 * radius + 1"
                )
        if "gaps" in cfg:
            gaps = _section(cfg["gaps"], Gaps, "gaps")
        return cls(min_probability, runs, gaps)


# What `workers.training pack` writes for two or more readers read as one
# (nets.ReaderEnsemble): their mean is less sure than either reader where they
# disagree, so the checks ask less of it (chosen with pack 1.2.5's readers on both
# validation sets: docs/models.md).
READ_TOGETHER = Numbering(min_probability=0.01, runs=Runs(min_probability=0.02))


def _probability(cfg: dict, key: str, default: float, where: str) -> float:
    name = f"ocr.numbering.{where}{key}"
    try:
        value = float(cfg.get(key, default))
    except (TypeError, ValueError):
        raise PackError(f"{name} must be a number") from None
    if not 0 < value <= 1:
        raise PackError(f"{name}: above 0, at most 1")
    return value


def _section(cfg: Any, kind: type, name: str) -> Any:
    names = [f.name for f in fields(kind)]
    if not isinstance(cfg, dict) or set(cfg) - set(names):
        raise PackError(f"ocr.numbering.{name} must be an object with {', '.join(names)}")
    values: dict[str, Any] = {}
    for f in fields(kind):
        if f.type == "int":
            value = cfg.get(f.name, f.default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise PackError(f"ocr.numbering.{name}.{f.name} must be a whole number")
            values[f.name] = value
        else:
            values[f.name] = _probability(cfg, f.name, f.default, f"{name}.")
    return kind(**values)


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


def runs(
    texts: list[str],
    sure: list[bool],
    own: list[str],
    probability: Callable[[int, str], float],
    check: Runs,
) -> dict[int, tuple[str, float]]:
    """For the positions not `sure`, a number their neighbours' readings and their own
    agree on (module docstring): that number and the crop's probability of it, by
    position. `own[k]` is position k's own best reading (whatever its confidence);
    `texts` are what the sure positions read. Left to right, twice: a number taken
    speaks for its neighbours as a sure one does."""
    taken: dict[int, tuple[str, float]] = {}
    count = len(texts)
    for _ in range(2):
        for position in range(count):
            if sure[position] or position in taken:
                continue
            votes: Counter[str] = Counter()
            for j in range(
                max(0, position - check.radius), min(count, position + check.radius + 1)
            ):
                if j == position:
                    continue
                said = texts[j] if sure[j] else taken[j][0] if j in taken else own[j]
                parsed = _parse(said)
                if parsed is not None and parsed[1] + position - j > 0:
                    votes[f"{parsed[0]}{parsed[1] + position - j}"] += 1
            if own[position] in votes:
                votes[own[position]] += 1
            ranked = votes.most_common(2)
            if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
                continue
            text, support = ranked[0]
            if (
                support >= check.votes
                and (p := probability(position, text)) >= check.min_probability
            ):
                taken[position] = (text, p)
    return taken


def gaps(
    texts: list[str | None],
    probability: Callable[[int, str], float],
    check: Gaps,
) -> dict[int, tuple[str, float]]:
    """In one page's reading order over every box, `texts[k]` None for a box under the
    pack's threshold (a candidate) and the text read for the others (empty when none):
    for each candidate whose read neighbours (the boxes just before and after it) say
    the same number belongs there, and whose crop gives it at least `min_probability`,
    that number and its probability, by position."""
    taken: dict[int, tuple[str, float]] = {}
    for position, text in enumerate(texts):
        if text is not None:
            continue
        said = set()
        for step in (-1, 1):
            j = position + step
            neighbour = texts[j] if 0 <= j < len(texts) else None
            parsed = _parse(neighbour) if neighbour else None
            if parsed is not None and parsed[1] - step > 0:
                said.add(f"{parsed[0]}{parsed[1] - step}")
        if len(said) == 1:
            number = said.pop()
            if (p := probability(position, number)) >= check.min_probability:
                taken[position] = (number, p)
    return taken
