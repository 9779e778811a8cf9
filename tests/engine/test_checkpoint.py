"""Reading Apple's checkpoint layout without torch, and the errors a user sees for broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.synthetic import CheckpointSpec, to_bf16_bits, write_checkpoint, write_safetensors
from glimpse.engine.errors import CheckpointError, ShapeMismatchError, UnsupportedDtypeError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bf16_rounds_to_nearest_even() -> None:
    # 1 + 2^-8 lies exactly between two bfloat16 values (1 and 1 + 2^-7); ties go to the even one (1).
    # 1 + 3 * 2^-8 lies between 1 + 2^-7 (odd mantissa) and 1 + 2^-6 (even): it rounds up to 1 + 2^-6.
    x = np.array([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 3.0e38], np.float32)
    bits = to_bf16_bits(x)
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x7F62]


def test_reads_bf16_f16_f32_exactly(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.25], [0.0078125, 1024.0]], np.float32)  # exact in every format
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": values, "b": values, "c": values}, {"a": "BF16", "c": "F32"})
    folder = tmp_path / "ckpt"
    ckpt_src = write_checkpoint(tmp_path / "src")
    shutil.copytree(ckpt_src, folder)
    (folder / "model.safetensors").unlink()
    # A checkpoint needs vision weights to be recognised; put ours next to them in a second file.
    shutil.copy(ckpt_src / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    shutil.copy(path, folder / "model-00002-of-00002.safetensors")
    with Checkpoint(folder) as ckpt:
        for name in ("a", "b", "c"):
            got = ckpt.tensor(name, expect=(2, 2))
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, values)


def test_sharded_equals_single(tmp_path: Path) -> None:
    single = write_checkpoint(tmp_path / "single", CheckpointSpec(seed=3))
    sharded = write_checkpoint(tmp_path / "sharded", CheckpointSpec(seed=3, shards=3))
    assert (sharded / "model.safetensors.index.json").is_file()
    a, b = Checkpoint(single), Checkpoint(sharded)
    assert sorted(a.names()) == sorted(b.names())
    assert len(b.weight_files) == 3
    for name in a.names():
        if a.info(name).dtype != "I64":
            np.testing.assert_array_equal(a.tensor(name), b.tensor(name))


def test_geometry_from_config(tiny_checkpoint: Path) -> None:
    geo = LlmGeometry.from_checkpoint(Checkpoint(tiny_checkpoint))
    assert (geo.hidden, geo.layers, geo.heads, geo.kv_heads, geo.ffn) == (64, 2, 4, 2, 128)
    assert geo.vocab_rows % 64 == 0 and geo.tied_embeddings


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a folder"):
        Checkpoint(tmp_path / "nope")


def test_no_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        Checkpoint(tmp_path)


def test_plain_qwen_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "c")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "qwen2", ["Qwen2ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"not a FastVLM checkpoint.*'qwen2'"):
        Checkpoint(folder)


def test_missing_shard_is_named(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "c", CheckpointSpec(shards=2))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing 1 of 2 weight shards: model-00002-of-00002"):
        Checkpoint(folder)


def test_truncated_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "c")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(folder)


def test_missing_tokenizer(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "c")
    (folder / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"has no merges\.txt"):
        Checkpoint(folder)


def test_unsupported_dtype(tiny_checkpoint: Path) -> None:
    ckpt = Checkpoint(tiny_checkpoint)
    name = next(n for n in ckpt.names() if n.endswith("num_batches_tracked"))
    with pytest.raises(UnsupportedDtypeError, match="stored as I64"):
        ckpt.tensor(name)


def test_shape_mismatch_names_first_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint, tmp_path / "c")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ShapeMismatchError) as info:
        LlmGeometry.from_checkpoint(Checkpoint(folder))
    assert info.value.name == "model.layers.0.mlp.gate_proj.weight"
    assert "[128, 64]" in str(info.value) and "[96, 64]" in str(info.value)
