"""Read Apple's FastVLM checkpoint layout without PyTorch.

A checkpoint folder holds ``config.json``, tokenizer files and bfloat16 safetensors, either one
``model.safetensors`` or shards listed in ``model.safetensors.index.json``. Tensors are read one at a time
into private buffers, so converting the 7B model never holds its 15 GB at once.

The safetensors format is read by hand (an 8-byte header length, a JSON header, raw little-endian data) because
the ``safetensors`` package's numpy front end cannot return bfloat16, which numpy lacks; widening bfloat16 to
float32 is a 16-bit shift.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from glimpse.engine.convert.safetensors_header import read_header
from glimpse.engine.errors import CheckpointError, ShapeMismatchError, UnsupportedDtypeError
from glimpse.engine.limits import bounded_float, bounded_int, json_object, load_json
from glimpse.engine.names import safe_child

VISION_PREFIX = "model.vision_tower.vision_tower.model."
PROJECTOR_PREFIX = "model.mm_projector."
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
OPTIONAL_TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json", "special_tokens_map.json", "tokenizer.json")

# Byte widths of the safetensors dtypes we can widen to float32. Others are named in the error.
_FLOAT_DTYPES = {"BF16": 2, "F16": 2, "F32": 4}
_MAX_CONFIG_BYTES = 16 << 20  # config.json is 2 KB; the 7B index 60 KB
_REDOWNLOAD = "Download the checkpoint again."
_FINITE_CHUNK = 1 << 22  # elements per NaN/Inf check: a bounded temporary even for a 500M-element embedding

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and byte range within the file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _read_header(path: Path) -> list[TensorInfo]:
    """Parse one safetensors file's header and check the file holds every byte the header promises."""
    return [TensorInfo(t.name, path, t.dtype, t.shape, t.start, t.end) for t in read_header(path)]


def _widen(raw: npt.NDArray[Any], dtype: str) -> F32Array:
    if dtype == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return raw.view("<f2").astype(np.float32)
    return raw.view("<f4").astype(np.float32)


class Checkpoint:
    """A FastVLM checkpoint folder in Apple's (LLaVA) layout.

    Opening one checks the folder is a FastVLM checkpoint and that every weight file is complete; reading a
    tensor then cannot fail half-way through a conversion for those reasons.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is not a folder.",
                                  "Give the folder that holds config.json and the .safetensors weights.")
        self.config = self._read_config()
        self._tensors: dict[str, TensorInfo] = {}
        for path in self._weight_files():
            for info in _read_header(path):
                if info.name in self._tensors:
                    first = self._tensors[info.name].file.name
                    raise CheckpointError(f"The tensor {info.name[:100]!r} is in both {first} and {path.name}.",
                                          _REDOWNLOAD)
                self._tensors[info.name] = info
        self._files: dict[Path, BinaryIO] = {}
        for name in TOKENIZER_FILES:
            if not (self.folder / name).is_file():
                raise CheckpointError(f"{self.folder} has no {name}; the tokenizer cannot be converted.",
                                      "Copy the complete checkpoint folder, including its tokenizer files.")
        if not any(n.startswith(VISION_PREFIX) for n in self._tensors):
            raise CheckpointError(
                f"{self.folder} has no vision tower weights ({VISION_PREFIX}...).",
                "This looks like a plain language model; use a FastVLM checkpoint (llava-fastvithd_*_stage3).")

    # -- folder structure -------------------------------------------------------------------------------------------

    def _read_config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            raise CheckpointError(
                f"{self.folder} has no config.json, so it is not a FastVLM checkpoint folder.",
                "Point to the folder that holds config.json and model.safetensors "
                "(for example the unzipped llava-fastvithd_0.5b_stage3).")
        config = json_object(load_json(path, str(path), CheckpointError, _REDOWNLOAD, max_bytes=_MAX_CONFIG_BYTES),
                             str(path), CheckpointError, _REDOWNLOAD)
        model_type = config.get("model_type")
        archs = config.get("architectures") or []
        if model_type != "llava_qwen2" and "LlavaQwen2ForCausalLM" not in archs:
            raise CheckpointError(
                f"{self.folder} is not a FastVLM checkpoint: its config.json says model_type "
                f"'{model_type}' and architectures {archs}, not 'llava_qwen2'.",
                "Use Apple's FastVLM release (apple/FastVLM-0.5B, -1.5B or -7B, or a llava-fastvithd_*_stage3 folder).")
        projector = config.get("mm_projector_type", "mlp2x_gelu")
        if projector != "mlp2x_gelu":
            raise CheckpointError(f"Projector type '{projector}' is not supported (only 'mlp2x_gelu').",
                                  "Use Apple's FastVLM release.")
        return config

    def _weight_files(self) -> list[Path]:
        index = self.folder / INDEX_FILE
        single = self.folder / SINGLE_FILE
        if index.is_file():
            raw = load_json(index, index.name, CheckpointError, _REDOWNLOAD, max_bytes=_MAX_CONFIG_BYTES)
            weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index.name} is corrupt (no weight_map of tensor names to file names).",
                                      _REDOWNLOAD)
            names = sorted(set(weight_map.values()))
            for n in names:  # names from a file: only plain names inside this folder are ever opened
                safe_child(self.folder, n, index.name, CheckpointError, _REDOWNLOAD)
            missing = [n for n in names if not (self.folder / n).is_file()]
            if missing:
                raise CheckpointError(
                    f"{self.folder} is missing {len(missing)} of {len(names)} weight shards: {', '.join(missing)}.",
                    "Download the missing files (glimpse models pull resumes), then try again.",
                    gui_hint="Download the model in the model manager (it resumes), or import a complete "
                             "checkpoint folder.")
            return [self.folder / n for n in names]
        if single.is_file():
            return [single]
        others = sorted(self.folder.glob("*.safetensors"))
        if others:
            return others
        raise CheckpointError(f"{self.folder} has no weights (model.safetensors or {INDEX_FILE}).",
                              "Download the complete checkpoint, including its .safetensors files.")

    @property
    def weight_files(self) -> list[Path]:
        return sorted({t.file for t in self._tensors.values()})

    # -- tensors ----------------------------------------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        return iter(self._tensors)

    def has(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"The checkpoint has no tensor '{name}'.",
                                  "The checkpoint is incomplete or not a FastVLM release.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def tensor(self, name: str, expect: tuple[int, ...] | None = None) -> F32Array:
        """Read one tensor as a new float32 array, checking its shape against ``expect`` if given."""
        info = self.info(name)
        if expect is not None and info.shape != tuple(expect):
            raise ShapeMismatchError(name, tuple(expect), info.shape)
        if info.dtype not in _FLOAT_DTYPES:
            raise UnsupportedDtypeError(
                f"Tensor '{name}' is stored as {info.dtype}; Glimpse reads only BF16, F16 and F32 weights.",
                "Use Apple's original FastVLM checkpoint, not a re-quantized copy.")
        f = self._files.get(info.file)
        if f is None:
            f = self._files[info.file] = info.file.open("rb")
        try:
            # A plain read into a private buffer rather than a memory map: mapped pages of a 15 GB file would
            # count towards the process's resident memory until the kernel chose to drop them.
            f.seek(info.start)
            data = f.read(info.nbytes)
        except OSError as e:
            raise CheckpointError(f"Cannot read {info.file.name}: {e.strerror or e}.",
                                  "Check the disk and download the checkpoint again.") from e
        if len(data) != info.nbytes:
            raise CheckpointError(f"{info.file.name} ended early while reading '{name}'.",
                                  "The file is truncated; download the checkpoint again.")
        out = _widen(np.frombuffer(data, dtype=np.uint8), info.dtype).reshape(info.shape)
        _check_finite(out, name, info.file.name)
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def vision_tensors(self) -> Mapping[str, tuple[int, ...]]:
        """Vision tower tensor names (without the prefix) and their shapes."""
        n = len(VISION_PREFIX)
        return {k[n:]: v.shape for k, v in self._tensors.items() if k.startswith(VISION_PREFIX)}


def _check_finite(arr: F32Array, name: str, file: str) -> None:
    """Refuse NaN or infinite weights by tensor name: converted silently they make every answer garbage."""
    flat = arr.reshape(-1)
    for i in range(0, flat.size, _FINITE_CHUNK):
        chunk = flat[i:i + _FINITE_CHUNK]
        if not np.isfinite(chunk).all():
            bad = i + int(np.flatnonzero(~np.isfinite(chunk))[0])
            raise CheckpointError(f"Tensor '{name}' in {file} holds {flat[bad]} at element {bad:,}: the weights are "
                                  "damaged (NaN or infinite values).", _REDOWNLOAD)


# Generous bounds: FastVLM 7B has 28 layers of 3584 with 28 heads; nothing real comes near these limits, and a
# value beyond them would make the converter build or allocate absurd amounts before any other check fails.
_CONFIG_RANGES: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 65_536),
    "num_attention_heads": (1, 1024),
    "num_hidden_layers": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "intermediate_size": (1, 1 << 20),
    "max_position_embeddings": (1, 1 << 24),
    "mm_hidden_size": (1, 65_536),
}


def _cfg_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"config.json has no '{key}'.", "The checkpoint's config.json is incomplete.")
    low, high = _CONFIG_RANGES[key]
    return bounded_int(value, f"config.json's '{key}'", low, high, CheckpointError,
                       "The checkpoint's config.json is corrupt.")


def _vocab_rows(ckpt: Checkpoint) -> int:
    shape = ckpt.shape("model.embed_tokens.weight")
    if len(shape) != 2 or not 1 <= shape[0] <= 1 << 22:
        raise CheckpointError(f"The token embedding has the shape {list(shape)}, not [vocabulary rows, width].",
                              _REDOWNLOAD)
    return shape[0]


def _cfg_bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise CheckpointError(f"config.json's '{key}' is {str(value)[:40]!r}, not true or false.",
                              "The checkpoint's config.json is corrupt.")
    return value


def _cfg_float(config: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    return bounded_float(config.get(key, default), f"config.json's '{key}'", low, high, CheckpointError,
                         "The checkpoint's config.json is corrupt.")


@dataclass(frozen=True)
class LlmGeometry:
    """The Qwen2 language model's shape, from config.json, checked against the weights."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab_rows: int
    context_length: int
    rms_eps: float
    rope_theta: float
    tied_embeddings: bool
    mm_hidden: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> LlmGeometry:
        c = ckpt.config
        hidden = _cfg_int(c, "hidden_size")
        heads = _cfg_int(c, "num_attention_heads")
        geo = cls(
            hidden=hidden,
            layers=_cfg_int(c, "num_hidden_layers"),
            heads=heads,
            kv_heads=_cfg_int(c, "num_key_value_heads", heads),
            ffn=_cfg_int(c, "intermediate_size"),
            vocab_rows=_vocab_rows(ckpt),
            context_length=_cfg_int(c, "max_position_embeddings", 32768),
            rms_eps=_cfg_float(c, "rms_norm_eps", 1e-6, 1e-12, 1.0),
            rope_theta=_cfg_float(c, "rope_theta", 1_000_000.0, 1.0, 1e12),
            tied_embeddings=_cfg_bool(c, "tie_word_embeddings"),
            mm_hidden=_cfg_int(c, "mm_hidden_size", 3072),
        )
        if hidden % heads or heads % geo.kv_heads:
            raise CheckpointError(f"config.json has hidden_size {hidden} with {heads} heads and {geo.kv_heads} "
                                  "key/value heads, which do not divide evenly.", "The config.json is corrupt.")
        geo.check(ckpt)
        return geo

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every language-model and projector tensor the checkpoint must have, with its shape."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_rows, h),
            "model.norm.weight": (h,),
            f"{PROJECTOR_PREFIX}0.weight": (h, self.mm_hidden),
            f"{PROJECTOR_PREFIX}0.bias": (h,),
            f"{PROJECTOR_PREFIX}2.weight": (h, h),
            f"{PROJECTOR_PREFIX}2.bias": (h,),
        }
        for i in range(self.layers):
            p = f"model.layers.{i}."
            shapes.update({
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.q_proj.bias": (h,),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (self.ffn, h),
                p + "mlp.up_proj.weight": (self.ffn, h),
                p + "mlp.down_proj.weight": (h, self.ffn),
            })
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_rows, h)
        return shapes

    def check(self, ckpt: Checkpoint) -> None:
        """Raise on the first tensor that is missing or has the wrong shape (config.json order)."""
        for name, shape in self.expected_shapes().items():
            actual = ckpt.shape(name)
            if actual != shape:
                raise ShapeMismatchError(name, shape, actual)
