"""The reading chain: classify -> detect -> crop -> OCR.

A plain Python package: it never imports Django, so it is tested, benchmarked and
run from the command line alone (``python -m workers.pipeline``).

    from workers.pipeline import load_pipeline
    pipeline = load_pipeline()                 # the pack in $SNAPREAD_PACK, else models/reference
    [result] = pipeline.run([pil_image])       # a batch in, a batch out
    result.classification.label, result.regions, result.crops, result.timings_ms

Names are imported on first use, so ``workers.pipeline.results`` (plain dataclasses)
can be used without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Pipeline": "workers.pipeline.chain",
    "load_pipeline": "workers.pipeline.chain",
    "DEFAULT_PACK_DIR": "workers.pipeline.pack",
    "ModelPack": "workers.pipeline.pack",
    "PackError": "workers.pipeline.pack",
    "STAGES": "workers.pipeline.results",
    "Classification": "workers.pipeline.results",
    "Detection": "workers.pipeline.results",
    "ImageResult": "workers.pipeline.results",
    "Region": "workers.pipeline.results",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    try:
        home = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module 'workers.pipeline' has no attribute {name!r}") from None
    return getattr(importlib.import_module(home), name)
