"""The Detectron2 backend, with a tiny detector trained here for a few iterations.

Detectron2 is not on PyPI; these tests skip where it is not installed (see
docs/models.md for its official install guide).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from workers.pipeline import DEFAULT_PACK_DIR, load_pipeline
from workers.pipeline.ocr import reader_files
from workers.pipeline.pack import write_manifest
from workers.training.synth import fonts, render_page

detectron2 = pytest.importorskip("detectron2", reason="Detectron2 is not installed")
pytestmark = pytest.mark.detectron2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A Faster R-CNN (R-18 FPN) trained by Detectron2's own trainer for 6 iterations."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.structures import BoxMode

    root = tmp_path_factory.mktemp("d2")
    records = []
    for k in range(4):
        sample = render_page(91_000_000 + k, fonts("train"))
        path = root / f"page{k}.jpg"
        sample.image.save(path, quality=90)
        records.append(
            {
                "file_name": str(path),
                "image_id": k,
                "height": sample.image.height,
                "width": sample.image.width,
                "annotations": [
                    {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}
                    for box, _ in sample.numbers
                ],
            }
        )
    name = "snapread_test_pages"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).thing_classes = ["number"]

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.INPUT.MIN_SIZE_TRAIN = (320,)
    cfg.INPUT.MAX_SIZE_TRAIN = 480
    cfg.INPUT.MIN_SIZE_TEST = 320
    cfg.INPUT.MAX_SIZE_TEST = 480
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.005
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.OUTPUT_DIR = str(root / "out")
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    weights = Path(cfg.OUTPUT_DIR) / "model_final.pth"
    assert weights.is_file()
    return cfg, weights, records


def _pack(tmp_path: Path, cfg, weights: Path, config_name: str) -> Path:
    pack = tmp_path / "d2pack"
    pack.mkdir()
    shutil.copyfile(weights, pack / "model_final.pth")
    manifest = json.loads((DEFAULT_PACK_DIR / "manifest.json").read_text())
    readers = reader_files(manifest["ocr"])
    for name in ("classifier.pt", *readers):
        shutil.copyfile(DEFAULT_PACK_DIR / name, pack / name)
    if config_name.endswith(".yaml"):
        (pack / config_name).write_text(cfg.dump())
    else:
        with (pack / config_name).open("wb") as fh:
            pickle.dump(cfg, fh)
    manifest["name"] = "d2-test"
    manifest["detect"] = {
        "backend": "detectron2",
        "config": config_name,
        "file": "model_final.pth",
        "classes": ["number"],
        "score_threshold": 0.0,
    }
    write_manifest(pack, manifest, ["classifier.pt", *readers, "model_final.pth", config_name])
    return pack


@pytest.mark.parametrize("config_name", ["config.yaml", "cfg.pkl"])
def test_it_detects_like_detectron2s_own_predictor(tmp_path: Path, trained, config_name) -> None:
    from detectron2.engine import DefaultPredictor

    cfg, weights, records = trained
    pipeline = load_pipeline(_pack(tmp_path, cfg, weights, config_name), "cpu")
    image = render_page(91_000_100, fonts("heldout")).image

    [ours] = pipeline.detector.detect([image])
    reference_cfg = cfg.clone()
    reference_cfg.MODEL.WEIGHTS = str(weights)
    theirs = DefaultPredictor(reference_cfg)(np.asarray(image)[:, :, ::-1])["instances"]
    assert len(ours) == len(theirs)
    if len(ours):
        boxes = np.array([d.box for d in ours])
        expected = theirs.pred_boxes.tensor.numpy()
        np.testing.assert_allclose(boxes, expected, atol=1.0)
        assert {d.label for d in ours} == {"number"}


def test_it_runs_the_whole_chain_with_a_detectron2_detector(tmp_path: Path, trained) -> None:
    cfg, weights, _ = trained
    pipeline = load_pipeline(_pack(tmp_path, cfg, weights, "config.yaml"), "cpu")
    image = render_page(91_000_101, fonts("heldout")).image
    [result] = pipeline.run([image])
    assert result.classification.relevant
    assert len(result.crops) == len(result.regions)
    for region in result.regions:
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
