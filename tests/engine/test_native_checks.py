"""What llama.cpp and onnxruntime get to see: GGUF headers checked against model.json, ONNX external data kept
inside the model folder, and model.json's own file names."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from glimpse.engine.errors import ModelFolderError
from glimpse.engine.models.gguf_header import check_against_manifest, check_gguf_file, expected_tensors, parse
from glimpse.engine.models.model_folder import LLM_FILE, MANIFEST, VISION_FILE, file_entry, verify
from glimpse.engine.models.onnx_external import check_onnx_file, external_locations
from glimpse.engine.runtime.llm import check_gguf
from glimpse.engine.runtime.model import load_model

# -- a small independent GGUF writer (the format, not the gguf package) -----------------------------------------------

U32, I32, STRING, ARRAY = 4, 5, 8, 9


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(kvs: list[tuple[str, int, Any]], tensors: list[tuple[str, tuple[int, ...], int, int]],
               data: int = 0, version: int = 3, alignment: int = 32) -> bytes:
    """A GGUF file: ``kvs`` as (key, type, value), arrays as (key, ARRAY, (item type, [items])); ``tensors`` as
    (name, dims, ggml type, offset); ``data`` zero bytes of tensor data after the aligned header."""
    parts = [b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        parts.append(_s(key) + struct.pack("<I", vtype))
        if vtype == STRING:
            parts.append(_s(value))
        elif vtype == ARRAY:
            item, items = value
            parts.append(struct.pack("<IQ", item, len(items)))
            parts += (_s(x) if item == STRING else struct.pack("<i" if item == I32 else "<I", x) for x in items)
        else:
            parts.append(struct.pack("<i" if vtype == I32 else "<I", value))
    for name, dims, ggml_type, offset in tensors:
        parts.append(_s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims))
        parts.append(struct.pack("<IQ", ggml_type, offset))
    out = b"".join(parts)
    out += b"\0" * (-len(out) % alignment)
    return out + b"\0" * data


LLM = {"hidden": 8, "heads": 2, "kv_heads": 1, "ffn": 16, "vocab_rows": 3, "layers": 1, "context_length": 64,
       "tied_embeddings": True}


def _good_kvs(**override: Any) -> list[tuple[str, int, Any]]:
    kvs: dict[str, tuple[int, Any]] = {
        "general.architecture": (STRING, "qwen2"),
        "qwen2.block_count": (U32, 1), "qwen2.embedding_length": (U32, 8), "qwen2.attention.head_count": (U32, 2),
        "qwen2.attention.head_count_kv": (U32, 1), "qwen2.feed_forward_length": (U32, 16),
        "qwen2.context_length": (U32, 64),
        "tokenizer.ggml.model": (STRING, "gpt2"), "tokenizer.ggml.pre": (STRING, "qwen2"),
        "tokenizer.ggml.tokens": (ARRAY, (STRING, ["a", "b", "c"])),
        "tokenizer.ggml.token_type": (ARRAY, (I32, [1, 1, 3])),
        "tokenizer.ggml.merges": (ARRAY, (STRING, ["a b"])),
    }
    for name, value in override.items():
        key = name.replace("__", ".")
        if value is None:
            kvs.pop(key)
        else:
            kvs[key] = value
    return [(k, t, v) for k, (t, v) in kvs.items()]


def _good_tensors() -> list[tuple[str, tuple[int, ...], int, int]]:
    """The tensors Glimpse writes for LLM, all F32 (type 0), packed at 32-byte alignment."""
    out, offset = [], 0
    for name, dims in expected_tensors(LLM).items():
        out.append((name, dims, 0, offset))
        offset += -(-int(np.prod(dims)) * 4 // 32) * 32
    return out


def _data_size(tensors: list[tuple[str, tuple[int, ...], int, int]]) -> int:
    return max(o + int(np.prod(d)) * 4 for _, d, _, o in tensors)


def _check(data: bytes) -> None:
    check_against_manifest(parse(data, len(data)), LLM)


def test_the_independent_writer_makes_a_header_that_passes() -> None:
    tensors = _good_tensors()
    _check(gguf_bytes(_good_kvs(), tensors, _data_size(tensors)))


def _hostile_ggufs() -> dict[str, tuple[bytes, str]]:
    t = _good_tensors()
    size = _data_size(t)
    return {
        "architecture": (gguf_bytes(_good_kvs(general__architecture=(STRING, "llama")), t, size), "architecture"),
        "block count": (gguf_bytes(_good_kvs(qwen2__block_count=(U32, 2)), t, size), "block_count"),
        "tokenizer model": (gguf_bytes(_good_kvs(tokenizer__ggml__model=(STRING, "plamo2")), t, size), "plamo2"),
        "token type array type": (gguf_bytes(_good_kvs(tokenizer__ggml__token_type=(ARRAY, (U32, [1, 1, 3]))), t,
                                             size), "token_type is not an array"),
        "tokens count": (gguf_bytes(_good_kvs(tokenizer__ggml__tokens=(ARRAY, (STRING, ["a", "b"]))), t, size),
                         "2 entries"),
        "array of arrays": (gguf_bytes(_good_kvs(tokenizer__ggml__merges=(ARRAY, (ARRAY, []))), t, size),
                            "items of type 9"),
        "extra array": (gguf_bytes([*_good_kvs(), ("x.list", ARRAY, (I32, [1]))], t, size), "does not write"),
        "missing tensor": (gguf_bytes(_good_kvs(), t[:-1], size), "tensors, but model.json describes"),
        "wrong dims": (gguf_bytes(_good_kvs(), [(t[0][0], (8, 2), 0, 0), *t[1:]], size), "dims"),
        "duplicate key": (gguf_bytes([*_good_kvs(), ("qwen2.block_count", U32, 1)], t, size), "twice"),
        "version 2": (gguf_bytes(_good_kvs(), t, size, version=2), "version 2"),
        "truncated data": (gguf_bytes(_good_kvs(), t, size - 4), "past the end"),
        "overlap": (gguf_bytes(_good_kvs(), [(n, d, ty, 0) for n, d, ty, _ in t], size), "overlap"),
        "unaligned": (gguf_bytes(_good_kvs(), [*t[:-1], (t[-1][0], t[-1][1], 0, t[-1][3] + 4)], size + 4),
                      "aligned"),
        "unknown type": (gguf_bytes(_good_kvs(), [(t[0][0], t[0][1], 999, 0), *t[1:]], size), "unknown type"),
        "zero dim": (gguf_bytes(_good_kvs(), [(t[0][0], (8, 0), 0, 0), *t[1:]], size), "dims"),
        "five dims": (gguf_bytes(_good_kvs(), [(t[0][0], (1, 1, 1, 1, 1), 0, 0), *t[1:]], size), "dimensions"),
        "bos out of range": (gguf_bytes([*_good_kvs(), ("tokenizer.ggml.bos_token_id", U32, 7)], t, size),
                             "outside the vocabulary"),
        "huge array": (gguf_bytes(_good_kvs(), t, size)[:40] + b"\0" * 8, "ends early|array"),
        "alignment zero": (gguf_bytes([*_good_kvs(), ("general.alignment", U32, 0)], t, size), "power of two"),
    }


@pytest.mark.parametrize("case", list(_hostile_ggufs()))
def test_hostile_gguf_headers_are_refused(case: str) -> None:
    data, match = _hostile_ggufs()[case]
    with pytest.raises(ValueError, match=match):
        _check(data)


def test_bounded_counts_are_refused_before_reading_on() -> None:
    head = b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1)
    with pytest.raises(ValueError, match="tensors"):
        parse(head, len(head))
    array = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _s("k") + struct.pack("<IIQ", ARRAY, STRING, 2**62)
    with pytest.raises(ValueError, match="items"):
        parse(array, len(array))
    string = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**63)
    with pytest.raises(ValueError, match="key"):
        parse(string, len(string))


# Structural damage (no model.json needed to see it): the language model's own check refuses it with the same reader.
STRUCTURAL = ("duplicate key", "version 2", "truncated data", "overlap", "unaligned", "unknown type", "zero dim",
              "five dims", "huge array", "alignment zero", "array of arrays")


@pytest.mark.parametrize("case", STRUCTURAL)
def test_the_language_model_checks_files_with_the_same_reader(case: str, tmp_path: Path) -> None:
    data, match = _hostile_ggufs()[case]
    path = tmp_path / "llm.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFolderError, match=match):
        check_gguf(path)


def test_the_language_model_check_passes_a_good_file_and_names_truncation(tmp_path: Path) -> None:
    tensors = _good_tensors()
    path = tmp_path / "llm.gguf"
    path.write_bytes(gguf_bytes(_good_kvs(), tensors, _data_size(tensors)))
    check_gguf(path)
    path.write_bytes(_hostile_ggufs()["truncated data"][0])
    with pytest.raises(ModelFolderError, match=r"llm.gguf is truncated: its tensors end at byte [0-9,]+, past"):
        check_gguf(path)
    with pytest.raises(ModelFolderError, match="does not exist"):
        check_gguf(tmp_path / "missing.gguf")
    with pytest.raises(ModelFolderError, match="not a file"):
        check_gguf(tmp_path)


# -- converted model folders ------------------------------------------------------------------------------------------

def _copy_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for stamp in folder.glob(".glimpse-*"):
        stamp.unlink()
    return folder


def _restamp(folder: Path, name: str) -> None:
    """Record ``name``'s new size and sha256 in model.json: a crafted folder is always self-consistent."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"][name] = file_entry(folder / name)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _patch_value(data: bytearray, key: str, skip: int, new: bytes) -> None:
    at = data.index(_s(key)) + len(_s(key)) + skip
    data[at:at + len(new)] = new


def test_the_converted_model_passes(tiny_model_dir: Path) -> None:
    manifest = verify(tiny_model_dir, check_hashes=False)
    header = check_gguf_file(tiny_model_dir / LLM_FILE, manifest.raw["llm"])
    assert header.values["general.architecture"] == "qwen2"
    check_onnx_file(tiny_model_dir / VISION_FILE, manifest.files)
    assert external_locations(memoryview((tiny_model_dir / VISION_FILE).read_bytes())) == []


@pytest.mark.parametrize(("key", "skip", "new", "match"), [
    ("qwen2.block_count", 4, struct.pack("<I", 3), "block_count is 3"),
    ("general.architecture", 4 + 8, b"llama", "architecture is 'llama'"),
    ("tokenizer.ggml.token_type", 4, struct.pack("<I", 4), "token_type is not an array"),
])
def test_a_doctored_gguf_is_refused_before_llama_cpp_sees_it(tiny_model_dir: Path, tmp_path: Path, key: str,
                                                              skip: int, new: bytes, match: str) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path)
    data = bytearray((folder / LLM_FILE).read_bytes())
    _patch_value(data, key, skip, new)
    (folder / LLM_FILE).write_bytes(bytes(data))
    _restamp(folder, LLM_FILE)
    with pytest.raises(ModelFolderError, match=match):
        load_model(folder)


def test_manifest_file_names_cannot_leave_the_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("private", encoding="utf-8")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"]["../secret.txt"] = file_entry(secret)
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelFolderError, match="not a plain file name"):
        verify(folder)


# -- ONNX external data -----------------------------------------------------------------------------------------------

def _external(tensor: TensorProto, location: str, length: int) -> None:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _graph_reading(location: str, *, sparse: bool = False) -> onnx.ModelProto:
    """y = x + w, where w's 4 floats live in ``location`` (as a dense or a sparse initializer)."""
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    node = helper.make_node("Add", ["x", "w"], ["y"])
    if sparse:
        values = numpy_helper.from_array(np.zeros(4, np.float32), "w")
        _external(values, location, 16)
        indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "w_idx")
        graph = helper.make_graph([node], "g", [x], [y], sparse_initializer=[
            helper.make_sparse_tensor(values, indices, [4])])
    else:
        _external(w, location, 16)
        graph = helper.make_graph([node], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE", "sub/../../secret.bin", "weights.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str, sparse: bool) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    if location == "ABSOLUTE":
        location = str(secret)
    onnx.save_model(_graph_reading(location, sparse=sparse), folder / VISION_FILE)
    if location == "weights.bin":  # a plain name, but not a file model.json lists
        (folder / "weights.bin").write_bytes(secret.read_bytes())
    with pytest.raises(ModelFolderError, match=r"not a file of this model folder listed in model.json"):
        check_onnx_file(folder / VISION_FILE, {VISION_FILE: {}})


def test_external_data_listed_in_the_manifest_is_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(bytes(16))
    onnx.save_model(_graph_reading("weights.bin"), folder / VISION_FILE)
    check_onnx_file(folder / VISION_FILE, {VISION_FILE: {}, "weights.bin": {}})
    (folder / "weights.bin").unlink()
    (folder / "weights.bin").symlink_to(tmp_path / "elsewhere.bin")
    (tmp_path / "elsewhere.bin").write_bytes(bytes(16))
    with pytest.raises(ModelFolderError, match=r"leads out|not a regular file"):
        check_onnx_file(folder / VISION_FILE, {VISION_FILE: {}, "weights.bin": {}})


def test_load_model_refuses_an_onnx_graph_that_reads_outside(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_model(tiny_model_dir, tmp_path)
    (tmp_path / "secret.bin").write_bytes(bytes(16))
    onnx.save_model(_graph_reading("../secret.bin", sparse=True), folder / VISION_FILE)
    _restamp(folder, VISION_FILE)
    with pytest.raises(ModelFolderError, match=r"not a file of this model folder listed in model\.json"):
        load_model(folder)


@pytest.mark.parametrize("data", [b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b", b"\x3a\x05ab", b"\x80" * 20])
def test_corrupt_onnx_bytes_are_a_sentence(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / VISION_FILE
    path.write_bytes(data)
    with pytest.raises(ModelFolderError, match="not a valid ONNX file"):
        check_onnx_file(path, {})
