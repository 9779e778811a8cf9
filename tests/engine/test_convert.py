"""End-to-end conversion of a tiny checkpoint, and every way a conversion can fail without leaving debris."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import glimpse.engine.convert as convert_mod
from glimpse.engine.convert import convert_checkpoint, llm_gguf
from glimpse.engine.errors import Cancelled, ConversionError, DiskFullError, ModelFolderError, OutputExistsError
from glimpse.engine.models.model_folder import ATTRIBUTION, read_manifest, sha256_file, verify
from glimpse.engine.progress import Progress

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def converted(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("out") / "tiny", quant="f16")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_model_folder_contents(converted: Path, tiny_checkpoint: Path) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"vision.onnx", "llm.gguf", "model.json", "NOTICE"} <= names
    manifest = verify(converted)
    raw = json.loads((converted / "model.json").read_text())
    assert raw["format_version"] == 1
    assert raw["template"] == "qwen_2"
    assert manifest.image_size == 1024 and raw["vision"]["patch_size"] == 64
    assert manifest.quant == "f16"
    assert manifest.llm_hidden == 64
    assert raw["llm"]["layers"] == 2 and raw["llm"]["tied_embeddings"] is True
    assert raw["source"]["path"] == str(tiny_checkpoint.resolve())
    for name in ("vision.onnx", "llm.gguf"):
        assert raw["files"][name]["sha256"] == sha256_file(converted / name)
        assert raw["files"][name]["size"] == (converted / name).stat().st_size
    assert ATTRIBUTION in (converted / "NOTICE").read_text()
    assert _leftovers(converted.parent) == []


def test_license_is_copied(tiny_checkpoint: Path, tmp_path: Path) -> None:
    src = shutil.copytree(tiny_checkpoint, tmp_path / "src")
    (src / "LICENSE").write_text("Apple Machine Learning Research Model License Agreement (test copy)\n")
    out = convert_checkpoint(src, tmp_path / "out", quant="f16")
    assert (out / "LICENSE_MODEL").read_text().startswith("Apple Machine Learning Research Model")
    assert "LICENSE_MODEL" in read_manifest(out).files


def test_existing_output_needs_force(converted: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(OutputExistsError, match=r"already exists.*--force"):
        convert_checkpoint(tiny_checkpoint, converted)


def test_force_replaces(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert_checkpoint(tiny_checkpoint, out, quant="f16", force=True)
    assert not (out / "stale.txt").exists()
    verify(out)
    assert _leftovers(tmp_path) == []


def test_unknown_quant(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"Unknown quantization 'q3'.*f16, q8_0, q4_0, q4_k_m"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m", quant="q3")


def test_cancel_leaves_nothing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    seen: list[Progress] = []

    def on_progress(p: Progress) -> None:
        seen.append(p)
        if p.stage == "language model":
            cancel.set()

    with pytest.raises(Cancelled):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m", progress=on_progress, cancel=cancel)
    assert any(p.stage == "vision" for p in seen)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llm_gguf, "write_llm_gguf", full)
    with pytest.raises(DiskFullError, match="disk filled up"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_not_enough_space_is_found_first(tiny_checkpoint: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_mod.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 1000))  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError, match=r"needs about .* GB, but only 0\.00 GB is free"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_verify_catches_corruption(converted: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(converted, tmp_path / "copy")
    gguf = copy / "llm.gguf"
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="sha256 does not match"):
        verify(copy)
    gguf.write_bytes(bytes(data[:-10]))
    with pytest.raises(ModelFolderError, match="truncated"):
        verify(copy)
    (copy / "vision.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"vision\.onnx is missing"):
        verify(copy)


def _glimpse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse.engine", *args], capture_output=True, text=True, cwd=REPO,
                          check=False, timeout=300)


def test_cli_convert(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = _glimpse("convert", str(tiny_checkpoint), str(tmp_path / "m"), "--quant", "q8_0")
    assert result.returncode == 0, result.stderr
    assert "Model folder written to" in result.stdout
    assert verify(tmp_path / "m").quant == "q8_0"


@pytest.mark.parametrize("case", ["not-fastvlm", "exists"])
def test_cli_errors_are_one_sentence(case: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    if case == "not-fastvlm":
        (tmp_path / "qwen").mkdir()
        (tmp_path / "qwen" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
        result = _glimpse("convert", str(tmp_path / "qwen"), str(tmp_path / "m"))
        expected = "is not a FastVLM checkpoint"
    else:
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "x").write_text("x")
        result = _glimpse("convert", str(tiny_checkpoint), str(tmp_path / "m"))
        expected = "already exists"
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("glimpse: error: ")
