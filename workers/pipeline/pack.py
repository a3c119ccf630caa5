"""Model packs: a folder with ``manifest.json`` and the weight files it names.

The manifest says which backend runs each stage and with which settings, and lists
every file with its sha256, checked at load so a truncated copy or a swapped file
is a clear error naming the file rather than a strange answer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PACK_DIR = Path(__file__).resolve().parents[2] / "models" / "reference"
MANIFEST = "manifest.json"
STAGE_KEYS = ("classify", "detect", "crop", "ocr")


class PackError(Exception):
    """A model pack that cannot be used, with a message naming what is wrong."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelPack:
    root: Path
    name: str
    version: str
    classify: dict[str, Any]
    detect: dict[str, Any]
    crop: dict[str, Any] = field(default_factory=dict)
    ocr: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def path(self, name: str) -> Path:
        """The path of a file the manifest lists; anything else is refused."""
        if name not in self.files:
            raise PackError(
                f"{self.root / MANIFEST}: file {name!r} is used but not listed in 'files'"
            )
        return self.root / name

    @classmethod
    def load(cls, root: str | os.PathLike[str] | None = None, *, verify: bool = True) -> ModelPack:
        root = Path(root or os.environ.get("SNAPREAD_PACK") or DEFAULT_PACK_DIR).resolve()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise PackError(f"{manifest_path}: no manifest; is {root} a model pack?")
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise PackError(f"{manifest_path}: must hold a JSON object")
        missing = [k for k in ("name", "version", "classify", "detect", "files") if k not in data]
        if missing:
            raise PackError(f"{manifest_path}: missing key(s) {', '.join(missing)}")
        for key in STAGE_KEYS:
            if key in data and not isinstance(data[key], dict):
                raise PackError(f"{manifest_path}: '{key}' must be an object")
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise PackError(f"{manifest_path}: 'files' must map file names to sha256 hex digests")
        pack = cls(
            root=root,
            name=str(data["name"]),
            version=str(data["version"]),
            classify=data["classify"],
            detect=data["detect"],
            crop=data.get("crop", {}),
            ocr=data.get("ocr", {}),
            files=files,
            description=str(data.get("description", "")),
        )
        if verify:
            pack.verify()
        return pack

    def verify(self) -> None:
        for name, expected in self.files.items():
            path = self.root / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise PackError(
                    f"{self.root / MANIFEST}: file name {name!r} must stay inside the pack"
                )
            if not path.is_file():
                raise PackError(f"{path}: listed in the manifest but missing")
            actual = sha256_of(path)
            if actual != expected.lower():
                raise PackError(
                    f"{path}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
                    "the file is damaged or not the one this pack was built with"
                )


def write_manifest(root: Path, manifest: dict[str, Any], weight_files: list[str]) -> Path:
    """Write ``manifest.json`` for a pack whose weight files are already in ``root``."""
    manifest = dict(manifest)
    manifest["files"] = {name: sha256_of(root / name) for name in sorted(weight_files)}
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path
