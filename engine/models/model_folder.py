"""The converted model folder: ``vision.onnx``, ``llm.gguf``, ``model.json`` and the model licence.

``model.json`` is the folder's manifest. It records the format version, the geometry both halves must agree on,
the quantization, and the size and sha256 of every file, so a truncated copy or a bit flip is caught before either
runtime sees the file. Unknown keys are ignored (newer Glimpse versions may add some); a missing key is an error.
"""

from __future__ import annotations

import hashlib
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.errors import REDO_MODEL, REDO_MODEL_GUI, ModelFolderError
from glimpse.engine.limits import load_json
from glimpse.engine.names import safe_child
from glimpse.engine.progress import check_cancel

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
# model.json is a few KB; anything far bigger is not one, and is not read into memory.
MAX_MANIFEST_BYTES = 1 << 20
# What a manifest may name: a plain file in the folder itself, never a path, a hidden file or model.json.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    """The file's sha256; ``cancel`` is checked between MB-sized chunks (hashing a 3 GB model takes seconds)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            check_cancel(cancel, "Loading the model")
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
    quant: str
    files: dict[str, dict[str, Any]]
    raw: dict[str, Any]

    @property
    def vision_precision(self) -> str:
        return _precision(self.raw)

    @property
    def vision_reason(self) -> str:
        """Why the converter wrote the vision encoder in its precision, one sentence ("" for older folders)."""
        vision = self.raw.get("vision")
        return str(vision.get("precision_reason") or "") if isinstance(vision, dict) else ""


def is_model_folder(path: str | Path) -> bool:
    """True when ``path`` looks like a converted model folder (has model.json); says nothing about its health."""
    return (Path(path) / MANIFEST).is_file()


def _manifest_json(folder: Path) -> dict[str, Any]:
    """model.json as a JSON object: the one place it is read."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a Glimpse model folder (no {MANIFEST}).",
                               "Convert a checkpoint with `glimpse convert` or get one with `glimpse models pull`.",
                               gui_hint="Download a model or import a model folder in the model manager.")
    # Bounded parse: deep nesting, giant integers and NaN are a sentence here, not a RecursionError later.
    raw = load_json(path, str(path), ModelFolderError, REDO_MODEL, max_bytes=MAX_MANIFEST_BYTES,
                    gui_hint=REDO_MODEL_GUI)
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{path} is corrupt (not a JSON object).", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
    return raw


def _precision(raw: dict[str, Any]) -> str:
    vision = raw.get("vision")
    return str(vision.get("precision", "fp32")) if isinstance(vision, dict) else "fp32"


def recorded_file(path: Path) -> tuple[str | None, str]:
    """(the sha256 the model.json beside ``path`` records for it, the vision precision it records), for callers
    that only key a cache on them: (None, "fp32") outside a model folder or when model.json does not say."""
    try:
        raw = _manifest_json(path.parent)
    except ModelFolderError:
        return None, "fp32"
    try:
        sha = raw["files"][path.name]["sha256"]
    except (KeyError, TypeError):
        sha = None
    return (sha if isinstance(sha, str) and _SHA256.fullmatch(sha) else None), _precision(raw)


def read_manifest(folder: str | Path) -> ModelManifest:
    folder = Path(folder)
    path = folder / MANIFEST
    raw = _manifest_json(folder)
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ModelFolderError(
            f"{path} has format version {version!r}; this Glimpse reads version {FORMAT_VERSION}.",
            "Update Glimpse, or convert the model again with this version.",
            gui_hint="Update Glimpse, or remove the model in the model manager and download or import it again.")
    llm, vision = _section(path, raw, "llm"), _section(path, raw, "vision")
    return ModelManifest(
        name=_typed(path, raw, "name", str),
        format_version=version,
        llm_hidden=_count(path, llm, "llm", "hidden"),
        image_size=_count(path, vision, "vision", "default_image_size"),
        quant=_typed(path, llm, "quant", str, "llm"),
        files=_files(path, raw),
        raw=raw,
    )


def _damaged(path: Path, why: str) -> ModelFolderError:
    return ModelFolderError(f"{path} is damaged: {why}.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)


def _section(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise _damaged(path, f"'{key}' is missing or not an object")
    return value


def _typed(path: Path, raw: dict[str, Any], key: str, kind: type, section: str = "") -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        where = f"{section}.{key}" if section else key
        raise _damaged(path, f"'{where}' is missing or not {'a whole number' if kind is int else 'text'}")
    return value


def _count(path: Path, raw: dict[str, Any], section: str, key: str) -> int:
    value = _typed(path, raw, key, int, section)
    if not 0 < value <= 1 << 20:
        raise _damaged(path, f"'{section}.{key}' is {value}, outside 1..{1 << 20}")
    return int(value)


def _files(path: Path, raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    files = _section(path, raw, "files")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in files.items():
        if not _FILE_NAME.fullmatch(name) or name == MANIFEST:
            raise _damaged(path, f"it lists {name[:80]!r}, which is not a plain file name in the folder")
        if not isinstance(entry, dict):
            raise _damaged(path, f"the entry for {name} is not an object")
        size, sha = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _damaged(path, f"the entry for {name} has no valid size")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise _damaged(path, f"the entry for {name} has no valid sha256")
        out[name] = dict(entry)
    return out


def verify(folder: str | Path, *, check_hashes: bool = True, cancel: threading.Event | None = None) -> ModelManifest:
    """Check every file model.json lists exists with the recorded size (and sha256 unless ``check_hashes`` is off).

    Raises ModelFolderError naming the first bad file; Cancelled when ``cancel`` is set while hashing.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for required in (VISION_FILE, LLM_FILE):
        if required not in manifest.files:
            raise ModelFolderError(f"{folder / MANIFEST} does not list {required}.", "Convert the model again.",
                                   gui_hint=REDO_MODEL_GUI)
    for name, entry in manifest.files.items():
        path = safe_child(folder, name, str(folder / MANIFEST), ModelFolderError, REDO_MODEL)
        try:
            info = path.lstat()
        except OSError:
            raise ModelFolderError(f"{path} is missing.", REDO_MODEL, gui_hint=REDO_MODEL_GUI) from None
        if not stat.S_ISREG(info.st_mode):
            # Glimpse writes regular files only: a link could make the runtimes read a file outside the folder.
            raise ModelFolderError(f"{path} is not a regular file (a link or a special file).", REDO_MODEL,
                                   gui_hint=REDO_MODEL_GUI)
        size = info.st_size
        if size != entry["size"]:
            raise ModelFolderError(f"{path} has {size:,} bytes but model.json records {entry['size']:,}; "
                                   "the file is truncated or was replaced.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
        if check_hashes and sha256_file(path, cancel) != entry["sha256"]:
            raise ModelFolderError(f"{path} is corrupt: its sha256 does not match model.json.", REDO_MODEL,
                                   gui_hint=REDO_MODEL_GUI)
    return manifest
