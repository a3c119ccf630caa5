from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.pipeline import ModelPack, PackError, load_pipeline
from workers.pipeline.pack import write_manifest


def _manifest(pack: Path) -> dict:
    return json.loads((pack / "manifest.json").read_text())


def test_it_loads_the_reference_pack_and_checks_every_file(pack_copy: Path) -> None:
    pack = ModelPack.load(pack_copy)
    assert pack.name == "reference"
    assert set(pack.files) == {"classifier.pt", "detector.pt", "reader.pt", "reader-2.pt"}
    total = sum((pack_copy / name).stat().st_size for name in pack.files)
    assert total <= 25 * 1024 * 1024


def test_it_names_the_file_whose_sha256_does_not_match(pack_copy: Path) -> None:
    with (pack_copy / "detector.pt").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(PackError, match=r"detector\.pt: sha256 mismatch"):
        ModelPack.load(pack_copy)


def test_it_names_a_missing_file(pack_copy: Path) -> None:
    (pack_copy / "classifier.pt").unlink()
    with pytest.raises(PackError, match=r"classifier\.pt: listed in the manifest but missing"):
        ModelPack.load(pack_copy)


def test_it_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="no manifest"):
        ModelPack.load(tmp_path)


def test_it_refuses_a_manifest_that_is_not_json(pack_copy: Path) -> None:
    (pack_copy / "manifest.json").write_text("{name: reference")
    with pytest.raises(PackError, match="not valid JSON"):
        ModelPack.load(pack_copy)


def test_it_names_missing_manifest_keys(pack_copy: Path) -> None:
    manifest = _manifest(pack_copy)
    del manifest["detect"], manifest["version"]
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="missing key.*version.*detect|missing key.*detect"):
        ModelPack.load(pack_copy)


def test_it_refuses_files_outside_the_pack(pack_copy: Path) -> None:
    manifest = _manifest(pack_copy)
    manifest["files"]["../secret"] = "0" * 64
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="must stay inside the pack"):
        ModelPack.load(pack_copy)


def test_it_refuses_an_unknown_detect_backend(pack_copy: Path) -> None:
    manifest = _manifest(pack_copy)
    manifest["detect"]["backend"] = "yolo9000"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="unknown detect backend 'yolo9000'"):
        load_pipeline(pack_copy, "cpu")


def test_it_refuses_weights_that_do_not_fit_the_architecture(pack_copy: Path) -> None:
    manifest = _manifest(pack_copy)
    manifest["classify"]["file"] = "detector.pt"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackError, match="do not fit architecture 'resnet8'"):
        load_pipeline(pack_copy, "cpu")


def test_it_uses_the_pack_named_in_the_environment(
    pack_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(pack_copy)
    manifest["version"] = "9.9.9-test"
    (pack_copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SNAPREAD_PACK", str(pack_copy))
    assert ModelPack.load().version == "9.9.9-test"


def test_it_loads_a_torchscript_classifier(pack_copy: Path, pipeline) -> None:
    import torch

    from workers.training.synth import fonts, render_page

    scripted = torch.jit.script(pipeline.classifier.model.cpu())
    scripted.save(str(pack_copy / "classifier.ts"))
    manifest = _manifest(pack_copy)
    manifest["classify"] = {
        **manifest["classify"],
        "format": "torchscript",
        "file": "classifier.ts",
    }
    write_manifest(
        pack_copy, manifest, ["classifier.ts", "detector.pt", "reader.pt", "reader-2.pt"]
    )

    page = render_page(90_000_900, fonts("heldout")).image
    [ours] = load_pipeline(pack_copy, "cpu").classifier.classify([page])
    [theirs] = pipeline.classifier.classify([page])
    assert (ours.label, ours.relevant) == (theirs.label, theirs.relevant)
    assert abs(ours.score - theirs.score) < 1e-5


def test_it_loads_a_torchvision_detection_model_by_builder_name(pack_copy: Path) -> None:
    import torch
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=2
    )
    torch.save(model.state_dict(), pack_copy / "mobilenet.pt")
    manifest = _manifest(pack_copy)
    manifest["detect"] = {
        **manifest["detect"],
        "builtin": True,
        "arch": "fasterrcnn_mobilenet_v3_large_320_fpn",
        "file": "mobilenet.pt",
        "score_threshold": 0.0,
    }
    write_manifest(
        pack_copy, manifest, ["classifier.pt", "mobilenet.pt", "reader.pt", "reader-2.pt"]
    )

    from PIL import Image

    detector = load_pipeline(pack_copy, "cpu").detector
    [dets] = detector.detect([Image.new("RGB", (640, 480), "white")])
    assert all(0 <= d.box[0] <= d.box[2] <= 640 and 0 <= d.box[1] <= d.box[3] <= 480 for d in dets)
    assert all(d.label in ("__background__", "number") for d in dets)
