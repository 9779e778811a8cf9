"""The converted model folder: ``vision.onnx``, ``llm.gguf``, ``model.json`` and the model licence.

``model.json`` is the folder's manifest. It records the format version, the geometry both halves must agree on,
the quantization, and the size and sha256 of every file, so a truncated copy or a bit flip is caught before either
runtime sees the file. Unknown keys are ignored (newer Glimpse versions may add some); a missing key is an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import REDO_MODEL, REDO_MODEL_GUI, ModelFolderError

FORMAT_VERSION = 1
MANIFEST = "model.json"
VISION_FILE = "vision.onnx"
LLM_FILE = "llm.gguf"
LICENSE_FILE = "LICENSE_MODEL"
NOTICE_FILE = "NOTICE"
ATTRIBUTION = ("Apple Machine Learning Research Model is licensed under the "
               "Apple Machine Learning Research Model License Agreement.")
LICENSE_URL = "https://github.com/apple/ml-fastvlm/blob/main/LICENSE_MODEL"

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass(frozen=True)
class ModelManifest:
    """What model.json promises about the folder."""

    name: str
    format_version: int
    llm_hidden: int
    image_size: int
    patch_size: int
    template: str
    quant: str
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @property
    def vision_precision(self) -> str:
        return str(self.raw.get("vision", {}).get("precision", "fp32"))

    @property
    def vision_reason(self) -> str:
        """Why the converter wrote the vision encoder in its precision, one sentence ("" for older folders)."""
        return str(self.raw.get("vision", {}).get("precision_reason") or "")


def is_model_folder(path: str | Path) -> bool:
    """True when ``path`` looks like a converted model folder (has model.json); says nothing about its health."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> ModelManifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a Glimpse model folder (no {MANIFEST}).",
                               "Convert a checkpoint with `glimpse convert` or get one with `glimpse models pull`.",
                               gui_hint="Download a model or import a model folder in the model manager.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path} is corrupt ({e}).", REDO_MODEL, gui_hint=REDO_MODEL_GUI) from e
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{path} is corrupt (not a JSON object).", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format version {version!r}; this Glimpse reads version {FORMAT_VERSION}.",
            "Update Glimpse, or convert the model again with this version.",
            gui_hint="Update Glimpse, or remove the model in the model manager and download or import it again.")
    try:
        return ModelManifest(
            name=str(raw["name"]),
            format_version=version,
            llm_hidden=int(raw["llm"]["hidden"]),
            image_size=int(raw["vision"]["default_image_size"]),
            patch_size=int(raw["vision"]["patch_size"]),
            template=str(raw["template"]),
            quant=str(raw["llm"]["quant"]),
            files={str(k): dict(v) for k, v in raw["files"].items()},
            raw=raw,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFolderError(f"{path} is missing a required entry ({e}).", REDO_MODEL,
                               gui_hint=REDO_MODEL_GUI) from e


def verify(folder: str | Path, *, check_hashes: bool = True) -> ModelManifest:
    """Check every file model.json lists exists with the recorded size (and sha256 unless ``check_hashes`` is off).

    Raises ModelFolderError naming the first bad file.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for required in (VISION_FILE, LLM_FILE):
        if required not in manifest.files:
            raise ModelFolderError(f"{folder / MANIFEST} does not list {required}.", "Convert the model again.",
                                   gui_hint=REDO_MODEL_GUI)
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ModelFolderError(f"{path} has {size:,} bytes but model.json records {entry.get('size'):,}; "
                                   "the file is truncated or was replaced.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
        if check_hashes and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            raise ModelFolderError(f"{path} is corrupt: its sha256 does not match model.json.", REDO_MODEL,
                                   gui_hint=REDO_MODEL_GUI)
    return manifest
