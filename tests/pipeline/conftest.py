from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workers.pipeline import DEFAULT_PACK_DIR, Pipeline, load_pipeline


@pytest.fixture(scope="session")
def pipeline() -> Pipeline:
    """The shipped reference pack on the CPU, loaded once for the whole session."""
    return load_pipeline(DEFAULT_PACK_DIR, "cpu")


@pytest.fixture
def pack_copy(tmp_path: Path) -> Path:
    """A private copy of the reference pack that a test may damage."""
    target = tmp_path / "pack"
    shutil.copytree(DEFAULT_PACK_DIR, target)
    return target
