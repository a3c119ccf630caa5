"""Stage 1: is this a photo the pack knows how to read?"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from workers.pipeline.nets import build
from workers.pipeline.pack import ModelPack, PackError
from workers.pipeline.results import Classification

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Classifier(Protocol):
    def classify(self, images: list[Image.Image]) -> list[Classification]: ...


def load_module(pack: ModelPack, cfg: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """A TorchScript file, or a state dict for one of our architectures."""
    path = pack.path(cfg["file"])
    fmt = cfg.get("format", "state_dict")
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location=device)
    elif fmt == "state_dict":
        module = build(cfg["arch"], **cfg.get("arch_args", {}))
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise PackError(
                f"{path}: weights do not fit architecture {cfg['arch']!r}: {exc}"
            ) from exc
    else:
        raise PackError(f"{pack.root}: unknown model format {fmt!r} (state_dict or torchscript)")
    return module.to(device).eval()


class TorchClassifier:
    """A torchvision-style CNN over the whole photo, squashed to a square."""

    def __init__(
        self,
        model: torch.nn.Module,
        classes: list[str],
        relevant: list[str],
        *,
        input_size: int = 192,
        threshold: float = 0.5,
        device: torch.device | None = None,
    ) -> None:
        self.model = model
        self.classes = classes
        self.relevant_idx = [classes.index(c) for c in relevant]
        self.input_size = input_size
        self.threshold = threshold
        self.device = device or torch.device("cpu")

    @classmethod
    def from_pack(cls, pack: ModelPack, device: torch.device) -> TorchClassifier:
        cfg = pack.classify
        classes = list(cfg["classes"])
        relevant = list(cfg.get("relevant", classes[:1]))
        unknown = set(relevant) - set(classes)
        if unknown:
            raise PackError(f"{pack.root}: relevant class(es) {sorted(unknown)} not in classes")
        return cls(
            load_module(pack, cfg, device),
            classes,
            relevant,
            input_size=int(cfg.get("input_size", 192)),
            threshold=float(cfg.get("threshold", 0.5)),
            device=device,
        )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        arrays = [
            np.asarray(im.resize(size, Image.BILINEAR, reducing_gap=2.0), dtype=np.float32)
            for im in images
        ]
        batch = (np.stack(arrays) / 255.0 - MEAN) / STD
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One image's input, made ahead (off the accelerator's thread)."""
        tensor = self.preprocess([image])[0]
        return tensor.pin_memory() if self.device.type == "cuda" else tensor

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        return self._probabilities(self.preprocess(images))

    @torch.inference_mode()
    def _probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch.to(self.device, non_blocking=True))
        return torch.softmax(logits.float(), dim=1).cpu()

    def classify(self, images: list[Image.Image]) -> list[Classification]:
        if not images:
            return []
        return self._verdicts(self.probabilities(images))

    def classify_prepared(self, inputs: list[torch.Tensor]) -> list[Classification]:
        """`classify` on inputs made by `prepare`."""
        if not inputs:
            return []
        return self._verdicts(self._probabilities(torch.stack(inputs)))

    def _verdicts(self, probabilities: torch.Tensor) -> list[Classification]:
        out = []
        for probs in probabilities:
            p_relevant = float(probs[self.relevant_idx].sum())
            relevant = p_relevant >= self.threshold
            pool = [
                i for i in range(len(self.classes)) if (i in self.relevant_idx) == relevant
            ] or list(range(len(self.classes)))
            best = max(pool, key=lambda i: float(probs[i]))
            out.append(Classification(self.classes[best], float(probs[best]), relevant))
        return out
