"""Model folders damaged in every way a disk, an interrupted copy or a hand edit can: for the store and the window.

``DAMAGE`` maps a short id to a function that damages a healthy folder made by ``healthy_model``. The files are
small stand-ins (the store's listing checks model.json and sizes, never the runtimes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def healthy_model(folder: Path, name: str = "mine") -> Path:
    folder.mkdir(parents=True)
    files = {}
    for file, data in (("vision.onnx", b"onnx" * 100), ("llm.gguf", b"GGUF" * 100), ("NOTICE", b"notice\n")):
        (folder / file).write_bytes(data)
        files[file] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format_version": 1, "name": name, "template": "qwen_2",
                "vision": {"default_image_size": 1024, "patch_size": 64, "precision": "fp32"},
                "llm": {"quant": "q8_0", "hidden": 896}, "files": files}
    (folder / "model.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        change(manifest)
        (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return damage


def _raw(text: str | bytes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        (folder / "model.json").write_bytes(data)
    return damage


def _replace_raw(old: str, new: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        text = json.dumps(json.loads((folder / "model.json").read_text(encoding="utf-8")))
        assert old in text
        (folder / "model.json").write_text(text.replace(old, new, 1), encoding="utf-8")
    return damage


def _outside_link(folder: Path) -> None:
    """llm.gguf becomes a link to a file of the recorded size outside the folder."""
    outside = folder.parent.parent / "outside.bin"
    outside.write_bytes((folder / "llm.gguf").read_bytes())
    (folder / "llm.gguf").unlink()
    (folder / "llm.gguf").symlink_to(outside)


def _escape(folder: Path) -> None:
    """model.json lists a path that leaves the folder, with the size of a file that exists there."""
    outside = folder.parent.parent / "secret.txt"
    outside.write_bytes(b"secret")
    _edit(lambda m: m["files"].update({"../../secret.txt": {"size": 6, "sha256": "0" * 64}}))(folder)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "not-json": _raw("{this is not json"),
    "empty-file": _raw(b""),
    "not-utf8": _raw(b"\xff\xfe{\x00}"),
    "json-array": _raw("[1, 2, 3]"),
    "deeply-nested": _raw("[" * 100_000 + "]" * 100_000),
    "huge-file": _raw("{" + " " * (3 << 20) + "}"),
    "no-files-key": _edit(lambda m: m.pop("files")),
    "files-is-a-list": _edit(lambda m: m.update(files=["vision.onnx", "llm.gguf"])),
    "entry-without-sha256": _edit(lambda m: m["files"]["llm.gguf"].pop("sha256")),
    "entry-without-size": _edit(lambda m: m["files"]["llm.gguf"].pop("size")),
    "size-is-a-string": _edit(lambda m: m["files"]["llm.gguf"].update(size="400")),
    "entry-is-null": _edit(lambda m: m["files"].update({"llm.gguf": None})),
    "llm-is-a-string": _edit(lambda m: m.update(llm="q8_0")),
    "hidden-is-infinite": _replace_raw('"hidden": 896', '"hidden": 1e400'),
    "hidden-is-nan": _replace_raw('"hidden": 896', '"hidden": NaN'),
    "version-is-a-string": _edit(lambda m: m.update(format_version="1")),
    "name-missing": _edit(lambda m: m.pop("name")),
    "file-missing": lambda folder: (folder / "llm.gguf").unlink(),
    "file-truncated": lambda folder: (folder / "llm.gguf").write_bytes(b"GGUF"),
    "file-is-a-link-outside": _outside_link,
    "path-leaves-the-folder": _escape,
}
