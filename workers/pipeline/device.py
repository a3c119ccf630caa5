"""Choosing the torch device: CUDA when present, unless told otherwise."""

from __future__ import annotations

import os

import torch


def choose_device(requested: str | None = None) -> torch.device:
    requested = (requested or os.environ.get("SNAPREAD_DEVICE") or "auto").lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available here")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], not {requested!r}")
    return torch.device(requested)
