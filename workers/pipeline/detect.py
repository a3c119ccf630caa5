"""Stage 2: where are the things worth reading?"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torchvision
from PIL import Image

from workers.pipeline.classify import load_module
from workers.pipeline.pack import ModelPack, PackError
from workers.pipeline.results import Detection


class Detector(Protocol):
    """Boxes scored at least the detector's `score_threshold`, or `min_score` when
    given (the chain asks for lower ones as candidates: workers.pipeline.numbering)."""

    def detect(
        self, images: list[Image.Image], min_score: float | None = None
    ) -> list[list[Detection]]: ...


def resize_long_side(im: Image.Image, long_side: int) -> tuple[Image.Image, float]:
    """Resize so the long side is ``long_side``; returns the image and the scale used."""
    w, h = im.size
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == im.size:
        return im, 1.0
    return im.resize(size, Image.BILINEAR, reducing_gap=2.0), scale


def _builtin_torchvision(arch: str, num_classes: int) -> torch.nn.Module:
    """A torchvision detection builder by name, weights from the pack, never a hub."""
    builder = getattr(torchvision.models.detection, arch, None)
    if builder is None:
        raise PackError(f"unknown detection architecture {arch!r}")
    return builder(weights=None, weights_backbone=None, num_classes=num_classes)


class TorchvisionDetector:
    """Any torchvision detection model (Faster R-CNN family and friends)."""

    def __init__(
        self,
        model: torch.nn.Module,
        classes: list[str],
        *,
        image_size: int = 800,
        score_threshold: float = 0.5,
        max_regions: int = 100,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.classes = classes
        self.image_size = image_size
        self.score_threshold = score_threshold
        self.max_regions = max_regions
        self.device = device or torch.device("cpu")

    @classmethod
    def from_pack(cls, pack: ModelPack, device: torch.device) -> TorchvisionDetector:
        cfg: dict[str, Any] = pack.detect
        classes = list(cfg["classes"])
        image_size = int(cfg.get("image_size", 800))
        if cfg.get("builtin"):
            model = _builtin_torchvision(cfg["arch"], len(classes))
            path = pack.path(cfg["file"])
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model = model.to(device).eval()
        else:
            cfg = {**cfg, "arch_args": {"num_classes": len(classes), "image_size": image_size}}
            model = load_module(pack, cfg, device)
        return cls(
            model,
            classes,
            image_size=image_size,
            score_threshold=float(cfg.get("score_threshold", 0.5)),
            max_regions=int(cfg.get("max_regions", 100)),
            device=device,
        )

    def preprocess(self, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[float]]:
        tensors, scales = [], []
        for im in images:
            small, scale = resize_long_side(im, self.image_size)
            arr = np.array(small, dtype=np.uint8)  # a writable copy for torch
            tensors.append(torch.from_numpy(arr).permute(2, 0, 1))
            scales.append(scale)
        return tensors, scales

    def prepare(self, image: Image.Image) -> tuple[torch.Tensor, float]:
        """One image's input and scale, made ahead (off the accelerator's thread)."""
        [tensor], [scale] = self.preprocess([image])
        return (tensor.pin_memory() if self.device.type == "cuda" else tensor), scale

    def detect(
        self, images: list[Image.Image], min_score: float | None = None
    ) -> list[list[Detection]]:
        if not images:
            return []
        tensors, scales = self.preprocess(images)
        return self._detect(tensors, scales, [im.size for im in images], min_score)

    def detect_prepared(
        self,
        inputs: list[tuple[torch.Tensor, float]],
        sizes: list[tuple[int, int]],
        min_score: float | None = None,
    ) -> list[list[Detection]]:
        """`detect` on inputs made by `prepare`; `sizes` are the images' own (w, h)."""
        if not inputs:
            return []
        return self._detect([t for t, _ in inputs], [s for _, s in inputs], sizes, min_score)

    @torch.inference_mode()
    def _detect(
        self,
        tensors: list[torch.Tensor],
        scales: list[float],
        sizes: list[tuple[int, int]],
        min_score: float | None = None,
    ) -> list[list[Detection]]:
        threshold = self.score_threshold if min_score is None else min_score
        batch = [t.to(self.device, non_blocking=True).float().div_(255.0) for t in tensors]
        outputs = self.model(batch)
        if isinstance(outputs, tuple):  # TorchScript detection models return (losses, dets)
            outputs = outputs[1]
        results = []
        for out, scale, (w, h) in zip(outputs, scales, sizes, strict=True):
            keep = out["scores"] >= threshold
            boxes = (out["boxes"][keep].float().cpu() / scale).tolist()
            scores = out["scores"][keep].float().cpu().tolist()
            labels = out["labels"][keep].cpu().tolist()
            dets = [
                Detection(
                    box=(
                        min(max(b[0], 0.0), w),
                        min(max(b[1], 0.0), h),
                        min(max(b[2], 0.0), w),
                        min(max(b[3], 0.0), h),
                    ),
                    label=self.classes[lab] if 0 <= lab < len(self.classes) else str(lab),
                    score=s,
                )
                for b, s, lab in zip(boxes, scores, labels, strict=True)
            ]
            dets = [d for d in dets if d.box[2] - d.box[0] >= 1 and d.box[3] - d.box[1] >= 1]
            results.append(sorted(dets, key=lambda d: -d.score)[: self.max_regions])
        return results


def load_detector(pack: ModelPack, device: torch.device) -> Detector:
    backend = pack.detect.get("backend", "torchvision")
    if backend == "torchvision":
        return TorchvisionDetector.from_pack(pack, device)
    if backend == "detectron2":
        from workers.pipeline.detectron2 import Detectron2Detector

        return Detectron2Detector.from_pack(pack, device)
    raise PackError(f"{pack.root}: unknown detect backend {backend!r} (torchvision, detectron2)")
