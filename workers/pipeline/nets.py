"""Network definitions of the reference pack, torchvision style.

Both are small enough to train from scratch on a CPU and to run a 1200x1600 photo
in a fraction of a second on two cores; a state dict saved from them loads back
here by architecture name (``ARCHITECTURES``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.resnet import BasicBlock
from torchvision.ops import MultiScaleRoIAlign


def _stage(cin: int, cout: int, stride: int, blocks: int = 1) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
        )
    layers: list[nn.Module] = [BasicBlock(cin, cout, stride=stride, downsample=down)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResNet8(nn.Module):
    """A ResNet with three basic blocks (eight weight layers), for page-or-not."""

    def __init__(self, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn(3, width, stride=2)
        self.layer1 = _stage(width, width, stride=2)
        self.layer2 = _stage(width, width * 2, stride=2)
        self.layer3 = _stage(width * 2, width * 4, stride=2)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class TinyFPNBackbone(nn.Module):
    """Stride-8 features with stride-16 and stride-32 context folded in.

    Problem numbers are told from other numbers by where they sit (the start of a
    paragraph, the left edge of a column), so the stride-8 map gets a wide receptive
    field from the coarser levels, FPN style, instead of a deeper stride-8 stack.
    """

    def __init__(self, out_channels: int = 96) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, 24, 2), _conv_bn(24, 32, 2))  # stride 4
        self.c3 = _stage(32, 64, stride=2, blocks=2)  # stride 8
        self.c4 = _stage(64, 128, stride=2, blocks=2)  # stride 16
        self.c5 = _stage(128, 160, stride=2, blocks=1)  # stride 32
        self.lat3 = nn.Conv2d(64, out_channels, 1)
        self.lat4 = nn.Conv2d(128, out_channels, 1)
        self.lat5 = nn.Conv2d(160, out_channels, 1)
        self.smooth = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True)
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p4 = self.lat4(c4) + F.interpolate(self.lat5(c5), size=c4.shape[-2:], mode="nearest")
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        return OrderedDict([("0", self.smooth(p3))])


def fasterrcnn_tiny(num_classes: int = 2, image_size: int = 800) -> FasterRCNN:
    """Faster R-CNN on :class:`TinyFPNBackbone`, anchors shaped for printed numbers.

    The caller resizes images so their long side is ``image_size``; the model's own
    transform then leaves the scale alone (min_size = max_size = image_size).
    """
    backbone = TinyFPNBackbone()
    anchors = AnchorGenerator(sizes=((12, 20, 32, 52, 84),), aspect_ratios=((0.25, 0.4, 0.7),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    resolution = roi_pool.output_size[0]
    box_head = TwoMLPHead(backbone.out_channels * resolution**2, 256)
    return FasterRCNN(
        backbone,
        num_classes=None,
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=400,
        rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=128,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(256, num_classes),
        box_score_thresh=0.05,
        box_nms_thresh=0.3,
        box_detections_per_img=100,
        box_batch_size_per_image=128,
    )


class LineReader(nn.Module):
    """A convolutional CTC recogniser for one short printed line (a problem number).

    Input: ``(N, 1, H, W)`` crops, ink bright on a zero background (see
    ``workers.pipeline.ocr.CtcReader``). Output: ``(N, W // 4, classes)`` logits, one
    column of the crop every 4 pixels, class 0 the CTC blank.

    Convolutions only, no recurrent layer: a column's answer depends on the pixels
    within its receptive field and on nothing else, so padding a crop on the right
    with background never changes what is read inside it. A job's text is then the
    same whichever other jobs' crops share its batch.
    """

    RECEPTIVE_FIELD = 96  # pixels, generously: the 2-D stack and the 1-D context

    def __init__(self, num_classes: int = 12, height: int = 36, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(1, w, 1),
            nn.MaxPool2d(2),  # H/2, W/2
            _conv_bn(w, 2 * w, 1),
            nn.MaxPool2d(2),  # H/4, W/4
            _conv_bn(2 * w, 4 * w, 1),
            _conv_bn(4 * w, 4 * w, 1),
            nn.MaxPool2d((2, 1)),  # H/8, W/4
            _conv_bn(4 * w, 4 * w, 1),
        )
        rows = height // 8
        self.context = nn.Sequential(
            nn.Conv1d(4 * w * rows, 128, 3, padding=1, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Conv1d(128, 128, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Conv1d(128, 128, 3, padding=4, dilation=4, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Conv1d(128, num_classes, 1)
        self.height = height

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # N, C, H/8, W/4
        f = f.flatten(1, 2)  # N, C * H/8, W/4
        return self.head(self.context(f)).transpose(1, 2)


class ReaderEnsemble(nn.Module):
    """Line readers of one input height (and `LineReader`'s stride) read as one:
    each column's class probabilities are the mean of the members', returned as
    log-probabilities, so a softmax over the output gives that mean back. Where two
    readers err differently (a reader and its fine-tune do), the mean is sure where they
    agree and less sure where they do not (docs/models.md)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one reader")
        first = members[0]
        for other in members[1:]:
            if int(other.height) != int(first.height):
                raise ValueError(
                    f"readers of different heights ({int(first.height)}, {int(other.height)})"
                    " cannot be read together"
                )
        self.members = nn.ModuleList(members)
        self.height = first.height
        self.RECEPTIVE_FIELD = max(int(m.RECEPTIVE_FIELD) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return mean.clamp_min(1e-12).log()


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet8": ResNet8,
    "fasterrcnn_tiny": fasterrcnn_tiny,
    "line_reader": LineReader,
}


def build(arch: str, **kwargs: object) -> nn.Module:
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {arch!r}; known: {known}") from None
    return factory(**kwargs)
