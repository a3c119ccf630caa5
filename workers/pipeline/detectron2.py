"""Detect with a model trained in Detectron2: its config plus ``model_final.pth``.

Detectron2 is not on PyPI; install it by its official guide
(https://detectron2.readthedocs.io/en/latest/tutorials/install.html). This module
imports it only when a pack asks for the ``detectron2`` backend.

Pack settings (``detect`` in the manifest)::

    {"backend": "detectron2", "config": "config.yaml" | "cfg.pkl",
     "file": "model_final.pth", "classes": [...], "score_threshold": 0.5}

``config`` is a Detectron2 YAML config or the pickled ``CfgNode`` that older
deployments saved next to the weights; both must be listed in ``files``.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from PIL import Image

from workers.pipeline.pack import ModelPack, PackError
from workers.pipeline.results import Detection


def _import_detectron2() -> Any:
    try:
        import detectron2  # noqa: F401
        from detectron2 import config, modeling
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.data import transforms
    except ImportError as exc:
        raise PackError(
            "this pack uses the detectron2 backend, but Detectron2 is not installed; see "
            "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
        ) from exc
    return config, modeling, DetectionCheckpointer, transforms


def load_config(pack: ModelPack, name: str) -> Any:
    config, *_ = _import_detectron2()
    path = pack.path(name)
    if path.suffix in (".yaml", ".yml"):
        cfg = config.get_cfg()
        cfg.set_new_allowed(True)
        cfg.merge_from_file(str(path))
        return cfg
    if path.suffix in (".pkl", ".pickle"):
        # A pickle runs code when loaded: it is trusted exactly as far as the pack's
        # weights are, and its sha256 was checked against the manifest already.
        with path.open("rb") as fh:
            cfg = pickle.load(fh)
        if not isinstance(cfg, config.CfgNode):
            raise PackError(f"{path}: holds {type(cfg).__name__}, not a Detectron2 CfgNode")
        return cfg
    raise PackError(f"{path}: a Detectron2 config must be .yaml or a pickled CfgNode (.pkl)")


class Detectron2Detector:
    """Detectron2's ``DefaultPredictor`` made to take a batch."""

    def __init__(
        self,
        cfg: Any,
        weights: str,
        classes: list[str],
        *,
        score_threshold: float,
        max_regions: int,
        device: torch.device,
    ) -> None:
        _, modeling, checkpointer, transforms = _import_detectron2()
        cfg = cfg.clone()
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.WEIGHTS = weights
        self.cfg = cfg
        self.model = modeling.build_model(cfg).eval()
        checkpointer(self.model).load(weights)
        self.resize = transforms.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        self.classes = classes
        self.score_threshold = score_threshold
        self.max_regions = max_regions
        self.device = device

    @classmethod
    def from_pack(cls, pack: ModelPack, device: torch.device) -> Detectron2Detector:
        cfg_spec: dict[str, Any] = pack.detect
        if "config" not in cfg_spec or "file" not in cfg_spec:
            raise PackError(f"{pack.root}: the detectron2 backend needs 'config' and 'file'")
        return cls(
            load_config(pack, cfg_spec["config"]),
            str(pack.path(cfg_spec["file"])),
            list(cfg_spec.get("classes", [])),
            score_threshold=float(cfg_spec.get("score_threshold", 0.5)),
            max_regions=int(cfg_spec.get("max_regions", 100)),
            device=device,
        )

    def _input(self, im: Image.Image) -> dict[str, Any]:
        arr = np.asarray(im)  # RGB
        if self.input_format == "BGR":
            arr = arr[:, :, ::-1]
        h, w = arr.shape[:2]
        resized = self.resize.get_transform(arr).apply_image(arr)
        tensor = torch.as_tensor(np.ascontiguousarray(resized).transpose(2, 0, 1))
        return {"image": tensor, "height": h, "width": w}

    @torch.inference_mode()
    def detect(
        self, images: list[Image.Image], min_score: float | None = None
    ) -> list[list[Detection]]:
        if not images:
            return []
        threshold = self.score_threshold if min_score is None else min_score
        outputs = self.model([self._input(im) for im in images])
        results = []
        for out in outputs:
            inst = out["instances"].to("cpu")
            keep = inst.scores >= threshold
            boxes = inst.pred_boxes.tensor[keep].tolist()
            scores = inst.scores[keep].tolist()
            labels = inst.pred_classes[keep].tolist()
            dets = [
                Detection(
                    box=tuple(b),  # type: ignore[arg-type]
                    label=self.classes[c] if 0 <= c < len(self.classes) else str(c),
                    score=s,
                )
                for b, s, c in zip(boxes, scores, labels, strict=True)
            ]
            results.append(sorted(dets, key=lambda d: -d.score)[: self.max_regions])
        return results
