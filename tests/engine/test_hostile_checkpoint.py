"""Hostile or damaged checkpoints: config.json values, safetensors headers, tokenizer files, NaN weights and shard
names. Each one must end in one CheckpointError (or ConversionError) sentence, never another exception, a hang, a
huge allocation or a read outside the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.llm_gguf import read_vocab
from glimpse.engine.convert.synthetic import write_safetensors
from glimpse.engine.errors import CheckpointError, GlimpseError

SHARD_1 = "model-00001-of-00002.safetensors"
SHARD_2 = "model-00002-of-00002.safetensors"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- safetensors headers ----------------------------------------------------------------------------------------------

def _with_second_shard(tiny_checkpoint: Path, tmp_path: Path, header: str | bytes, data: bytes = b"") -> Path:
    """The tiny checkpoint with its weights as shard 1 and a second shard whose header is ``header``."""
    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / SHARD_1)
    raw = header.encode() if isinstance(header, str) else header
    (folder / SHARD_2).write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return folder


def _entry(dtype: Any = "F32", shape: Any = (4,), offsets: Any = (0, 16)) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


HOSTILE_HEADERS = {
    "shape Infinity": ('{"t": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 16]}}', "Infinity"),
    "negative shape and begin > end": (json.dumps({"t": _entry(shape=[-4], offsets=[16, 0])}), "shape|range"),
    "int64 wrap-around": (json.dumps({"t": _entry(shape=[2**32, 2**32], offsets=[0, 0])}), "needs"),
    "huge shape": (json.dumps({"t": _entry(shape=[10**18], offsets=[0, 16])}), "needs"),
    "bool shape": (json.dumps({"t": _entry(shape=[True, 4], offsets=[0, 16])}), "shape"),
    "nested shape": (json.dumps({"t": _entry(shape=[[4]], offsets=[0, 16])}), "shape"),
    "too many dims": (json.dumps({"t": _entry(shape=[1] * 9 + [4], offsets=[0, 16])}), "dimensions"),
    "unknown dtype": (json.dumps({"t": _entry(dtype="X9")}), "unknown dtype"),
    "overlap": (json.dumps({"a": _entry(offsets=[0, 16]), "b": _entry(offsets=[8, 24])}), "overlap"),
    "duplicate name": ('{"a": ' + json.dumps(_entry()) + ', "a": ' + json.dumps(_entry()) + "}", "twice"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested"),
    "giant integer": ('{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1' + "0" * 5000 + "]}}", "digits"),
    "offsets not a pair": (json.dumps({"t": _entry(offsets=[0, 16, 32])}), "data_offsets"),
    "entry not an object": ('{"t": 5}', "not a JSON object"),
    "not UTF-8": (b'{"t\xff": 1}', "JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_safetensors_headers_are_one_sentence(tiny_checkpoint: Path, tmp_path: Path, case: str) -> None:
    header, match = HOSTILE_HEADERS[case]
    folder = _with_second_shard(tiny_checkpoint, tmp_path, header, bytes(24))
    with pytest.raises(CheckpointError, match=match) as info:
        Checkpoint(folder)
    assert SHARD_2 in str(info.value) or "The header" in str(info.value)


def test_a_tensor_in_two_shards_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (folder / "model.safetensors").rename(folder / SHARD_1)
    write_safetensors(folder / SHARD_2, {"model.norm.weight": np.ones(64, np.float32)}, {})
    with pytest.raises(CheckpointError, match=r"'model\.norm\.weight' is in both"):
        Checkpoint(folder)


def test_a_good_second_shard_is_still_read(tiny_checkpoint: Path, tmp_path: Path) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"}, "x": _entry(offsets=[0, 16]), "y": _entry(offsets=[16, 32])})
    data = np.arange(8, dtype="<f4").tobytes()
    with Checkpoint(_with_second_shard(tiny_checkpoint, tmp_path, header, data)) as ckpt:
        np.testing.assert_array_equal(ckpt.tensor("y"), [4, 5, 6, 7])


def test_nan_and_inf_weights_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    name = "model.layers.1.mlp.up_proj.weight"
    with Checkpoint(folder) as ckpt:
        start = ckpt.info(name).start
    with (folder / "model.safetensors").open("r+b") as f:
        f.seek(start + 2 * 5)
        f.write((0x7FC0).to_bytes(2, "little"))  # bfloat16 NaN as element 5
    with Checkpoint(folder) as ckpt, pytest.raises(CheckpointError, match=rf"'{name}'.*nan at element 5\b"):
        ckpt.tensor(name)
    with (folder / "model.safetensors").open("r+b") as f:
        f.seek(start + 2 * 5)
        f.write((0xFF80).to_bytes(2, "little"))  # -inf
    with Checkpoint(folder) as ckpt, pytest.raises(CheckpointError, match=rf"'{name}'.*-inf"):
        ckpt.tensor(name)


def test_index_shard_names_cannot_leave_the_folder(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    shutil.move(folder / "model.safetensors", tmp_path / "outside.safetensors")
    weight_map = dict.fromkeys(["model.norm.weight"], "../outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a plain file name"):
        Checkpoint(folder)


# -- config.json ------------------------------------------------------------------------------------------------------

def _with_config(tiny_checkpoint: Path, tmp_path: Path, text: str | None = None, **changes: Any) -> Path:
    folder = _copy(tiny_checkpoint, tmp_path / "ckpt")
    if text is None:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config.update(changes)
        text = json.dumps(config)
    (folder / "config.json").write_text(text, encoding="utf-8")
    return folder


BAD_CONFIG_VALUES = [
    ("num_attention_heads", 0, "num_attention_heads"),  # was a ZeroDivisionError
    ("num_attention_heads", -4, "num_attention_heads"),
    ("num_hidden_layers", 2.5, "whole number"),  # was silently truncated to 2
    ("num_hidden_layers", "2", "whole number"),
    ("num_hidden_layers", True, "whole number"),
    ("intermediate_size", [128], "whole number"),
    ("rms_norm_eps", "abc", "not a number"),  # was a ValueError
    ("rms_norm_eps", 0, "rms_norm_eps"),
    ("rope_theta", -1.0, "rope_theta"),
    ("tie_word_embeddings", "false", "true or false"),  # was bool("false") == True
    ("num_key_value_heads", 3, "divide evenly"),
]


@pytest.mark.parametrize(("key", "value", "match"), BAD_CONFIG_VALUES)
def test_bad_config_values(tiny_checkpoint: Path, tmp_path: Path, key: str, value: Any, match: str) -> None:
    folder = _with_config(tiny_checkpoint, tmp_path, **{key: value})
    with pytest.raises(CheckpointError, match=match):
        LlmGeometry.from_checkpoint(Checkpoint(folder))


def test_a_billion_layers_is_refused_before_anything_is_built(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # Before the check, this built 12 billion expected-shape entries (the process ran out of memory).
    folder = _with_config(tiny_checkpoint, tmp_path, num_hidden_layers=1e9)
    with pytest.raises(CheckpointError, match=r"num_hidden_layers.*1000000000.*outside the range 1 to 1,024"):
        LlmGeometry.from_checkpoint(Checkpoint(folder))


@pytest.mark.parametrize(("text", "match"), [
    ('{"model_type": "llava_qwen2", "hidden_size": Infinity}', "Infinity"),  # was an OverflowError
    ('{"model_type": "llava_qwen2", "hidden_size": NaN}', "NaN"),
    ('{"model_type": "llava_qwen2", "rms_norm_eps": 1e999}', "out of range"),
    ('{"model_type": "llava_qwen2", "hidden_size": 1' + "0" * 5000 + "}", "digits"),  # was a bare ValueError
    ('{"model_type": "llava_qwen2", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested"),  # was a RecursionError
    ('{"model_type": "llava_qwen2", "model_type": "qwen2"}', "twice"),
    ("[1, 2]", "not a JSON object"),
])
def test_malformed_config_json(tiny_checkpoint: Path, tmp_path: Path, text: str, match: str) -> None:
    folder = _with_config(tiny_checkpoint, tmp_path, text)
    with pytest.raises(CheckpointError, match=match):
        LlmGeometry.from_checkpoint(Checkpoint(folder))


# -- tokenizer files --------------------------------------------------------------------------------------------------

def _tokenizer_folder(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return _copy(tiny_checkpoint, tmp_path / "tok")


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _rows(folder: Path) -> int:
    return len(json.loads((folder / "vocab.json").read_text(encoding="utf-8"))) + 64


TOKENIZER_CASES: dict[str, tuple[str, Any, str]] = {
    "superscript id key": ("tokenizer_config.json",
                           lambda d: d["added_tokens_decoder"].update({"²": {"content": "<x>"}}), "token id|²"),
    "decoder not an object": ("tokenizer_config.json", lambda d: d.update(added_tokens_decoder=[1]), "not a JSON"),
    "duplicate vocab id": ("vocab.json", lambda d: d.update({"zzzz": 0}), "both"),
    "bool id": ("vocab.json", lambda d: d.update({"zzzz": True}), "token id"),
    "negative id": ("added_tokens.json", lambda d: d.update({"<x>": -1}), "token id"),
    "id past the embedding": ("added_tokens.json", lambda d: d.update({"<x>": 10**9}), "only"),
    "NUL in a token": ("vocab.json", lambda d: d.update({"a\x00b": max(d.values()) + 1}), "NUL"),
    "empty token": ("added_tokens.json", lambda d: d.update({"": 3}), "non-empty"),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_hostile_tokenizer_files(tiny_checkpoint: Path, tmp_path: Path, case: str) -> None:
    name, edit, match = TOKENIZER_CASES[case]
    folder = _tokenizer_folder(tiny_checkpoint, tmp_path)
    rows = _rows(folder)
    _edit_json(folder / name, edit)
    with pytest.raises(GlimpseError, match=match):
        read_vocab(folder, rows, {})


def test_tokenizer_json_added_tokens_not_a_list(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _tokenizer_folder(tiny_checkpoint, tmp_path)
    (folder / "tokenizer.json").write_text('{"added_tokens": 5}', encoding="utf-8")  # was a TypeError
    with pytest.raises(CheckpointError, match="added_tokens is not a list"):
        read_vocab(folder, _rows(folder), {})


def test_deeply_nested_vocab_json(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _tokenizer_folder(tiny_checkpoint, tmp_path)
    (folder / "vocab.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")  # was a RecursionError
    with pytest.raises(CheckpointError, match=r"vocab.json is nested"):
        read_vocab(folder, 1000, {})


def test_chat_template_file_that_is_not_utf8(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _tokenizer_folder(tiny_checkpoint, tmp_path)
    _edit_json(folder / "tokenizer_config.json", lambda d: d.pop("chat_template"))
    (folder / "chat_template.jinja").write_bytes(b"{{ \xff }}")  # was a UnicodeDecodeError
    with pytest.raises(CheckpointError, match=r"chat_template.jinja cannot be read"):
        read_vocab(folder, _rows(folder), {})


def test_merges_with_a_nul_byte(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _tokenizer_folder(tiny_checkpoint, tmp_path)
    with (folder / "merges.txt").open("a", encoding="utf-8") as f:
        f.write("a\x00 b\n")
    with pytest.raises(CheckpointError, match="not a pair of tokens"):
        read_vocab(folder, _rows(folder), {})


def test_the_real_tokenizer_files_still_read(tiny_checkpoint: Path) -> None:
    vocab = read_vocab(tiny_checkpoint, _rows(tiny_checkpoint), {})
    assert len(vocab.tokens) == _rows(tiny_checkpoint) and vocab.merges
