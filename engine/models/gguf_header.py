"""Read a GGUF header ourselves, bounded, and check it against what Glimpse wrote before llama.cpp sees the file.

llama.cpp's GGUF and vocabulary loaders had memory-safety bugs reachable from a crafted file through 2025
(integer overflows in tensor sizes and array lengths, out-of-bounds reads of token pieces). A model folder may come
from anywhere (an import, a copy, a crafted download), and its ``model.json`` hashes only prove the files match
each other. So before loading, the header is parsed here with hard limits and compared with ``model.json``: GGUF
version 3, architecture ``qwen2``, block count, widths, tensor count and names with their dims, tensor types and
aligned, non-overlapping extents inside the file, and exactly the arrays Glimpse writes (tokens as strings,
token types as int32, merges as strings), of the lengths the vocabulary has. Anything else is refused with a
:class:`ModelFolderError` sentence.
"""

from __future__ import annotations

import itertools
import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glimpse.engine.errors import REDO_MODEL, REDO_MODEL_GUI, ModelFolderError

MAGIC = b"GGUF"
MAX_HEADER_BYTES = 256 << 20  # a 152k-token vocabulary with merges is about 6 MB of header
MAX_KEYS = 4096
MAX_TENSORS = 65_536
MAX_ARRAY = 1 << 22
MAX_STRING = 16 << 20  # a chat template; keys and tensor names are far shorter (below)
MAX_KEY = 256
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME is 64 bytes with the terminating NUL
MAX_DIMS = 4  # GGML_MAX_DIMS

# GGUF value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALARS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
            I64: "<q", F64: "<d"}
# The arrays Glimpse's converter (and llama.cpp's quantizer, which copies them) writes, with their item type.
EXPECTED_ARRAYS = {"tokenizer.ggml.tokens": STRING, "tokenizer.ggml.token_type": I32,
                   "tokenizer.ggml.merges": STRING}
ARCH = "qwen2"


_U64 = struct.Struct("<Q")


class _Corrupt(ValueError):
    pass


class _Truncated(_Corrupt):
    """The header describes more tensor data than the file holds: a copy or download that stopped early."""


@dataclass(frozen=True)
class Array:
    item_type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: dims[0] is the row width
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class GgufHeader:
    version: int
    values: dict[str, Any] = field(default_factory=dict)  # scalars and strings; arrays as Array
    tensors: list[TensorInfo] = field(default_factory=list)
    data_start: int = 0
    file_size: int = 0


class _Reader:
    """Reads from a bytes object or a memory map; only the bytes touched are copied."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.end = min(len(data), MAX_HEADER_BYTES)
        self.pos = 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise _Corrupt("the header ends early" if self.end == len(self.data)
                           else f"the header is larger than {MAX_HEADER_BYTES:,} bytes")

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    def scalar(self, vtype: int) -> Any:
        fmt = _SCALARS[vtype]
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self, limit: int, what: str) -> str:
        n = self.scalar(U64)
        if n > limit:
            raise _Corrupt(f"{what} of {n:,} bytes")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} that is not UTF-8 text") from None

    def skip_strings(self, count: int) -> None:
        # The hot loop of a 152k-token vocabulary (two string arrays): kept to local names and one unpack per item.
        data, pos, end = self.data, self.pos, self.end
        unpack = _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self._need(8)
            (n,) = unpack(data, pos)
            if n > MAX_STRING:
                raise _Corrupt(f"an array string of {n:,} bytes")
            pos += 8 + n
        self.pos = pos
        self._need(0)


def _type_sizes() -> dict[int, tuple[int, int]]:
    import gguf  # noqa: PLC0415 (about 0.35 s at start-up; only loading a model needs the sizes)

    return {int(k): v for k, v in gguf.GGML_QUANT_SIZES.items()}


def tensor_bytes(tensor: TensorInfo) -> int:
    """The bytes a tensor's data takes in the file (its ggml type's block size and bytes per block)."""
    block, size = _type_sizes().get(tensor.ggml_type, (1, 0))
    count = 1
    for d in tensor.dims:
        count *= d
    return count // block * size


def parse(data: bytes | mmap.mmap, file_size: int) -> GgufHeader:
    """Parse the header at the start of ``data`` (a prefix of the file). Raises ValueError with a reason."""
    r = _Reader(data)
    if r.take(4) != MAGIC:
        raise _Corrupt("it does not start with 'GGUF'")
    header = GgufHeader(version=r.scalar(U32), file_size=file_size)
    if header.version != 3:
        raise _Corrupt(f"it is GGUF version {header.version}; Glimpse writes version 3")
    n_tensors, n_kv = r.scalar(U64), r.scalar(U64)
    if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
        raise _Corrupt(f"it declares {n_tensors:,} tensors and {n_kv:,} keys")
    for _ in range(n_kv):
        key = r.string(MAX_KEY, "a key")
        if key in header.values:
            raise _Corrupt(f"the key {key!r} appears twice")
        vtype = r.scalar(U32)
        if vtype in _SCALARS:
            header.values[key] = r.scalar(vtype)
        elif vtype == STRING:
            header.values[key] = r.string(MAX_STRING, f"the string {key!r}")
        elif vtype == ARRAY:
            item, count = r.scalar(U32), r.scalar(U64)
            if count > MAX_ARRAY:
                raise _Corrupt(f"the array {key!r} has {count:,} items")
            if item == STRING:
                r.skip_strings(count)
            elif item in _SCALARS:
                r.skip(struct.calcsize(_SCALARS[item]) * count)
            else:  # arrays of arrays: Glimpse never writes them, and llama.cpp's handling of them was a bug source
                raise _Corrupt(f"the array {key!r} holds items of type {item}")
            header.values[key] = Array(item, count)
        else:
            raise _Corrupt(f"the key {key!r} has the unknown type {vtype}")
    alignment = header.values.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
            or alignment & (alignment - 1) or alignment > 1 << 20:
        raise _Corrupt(f"its alignment {alignment!r} is not a power of two")
    sizes = _type_sizes()
    names: set[str] = set()
    for _ in range(n_tensors):
        name = r.string(MAX_TENSOR_NAME, "a tensor name")
        if name in names:
            raise _Corrupt(f"the tensor {name!r} appears twice")
        names.add(name)
        n_dims = r.scalar(U32)
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(f"the tensor {name!r} has {n_dims} dimensions")
        dims = tuple(r.scalar(U64) for _ in range(n_dims))
        ggml_type, offset = r.scalar(U32), r.scalar(U64)
        if ggml_type not in sizes:
            raise _Corrupt(f"the tensor {name!r} has the unknown type {ggml_type}")
        if any(d == 0 or d > 1 << 32 for d in dims) or dims[0] % sizes[ggml_type][0]:
            raise _Corrupt(f"the tensor {name!r} has the dims {list(dims)}")
        if offset % alignment:
            raise _Corrupt(f"the tensor {name!r} is not aligned")
        header.tensors.append(TensorInfo(name, dims, ggml_type, offset))
    header.data_start = -(-r.pos // alignment) * alignment
    # Extents in Python integers (no wrap-around), inside the file and not shared between tensors.
    spans = []
    for t in header.tensors:
        block, type_size = sizes[t.ggml_type]
        nbytes = math.prod(t.dims) // block * type_size
        spans.append((t.offset, t.offset + nbytes, t.name))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise _Corrupt(f"the tensors {a!r} and {b!r} overlap")
    if spans and header.data_start + spans[-1][1] > file_size:
        raise _Truncated(f"its tensors end at byte {header.data_start + spans[-1][1]:,}, past the end of the file "
                         f"({file_size:,} bytes)")
    return header


def read_header(path: Path) -> GgufHeader:
    """Read and parse ``path``'s header (at most ``MAX_HEADER_BYTES``), never the weights. Raises ModelFolderError.

    The one GGUF reader: the store and ``load_model`` check a header against model.json with
    :func:`check_gguf_file`; ``engine.runtime.llm.LanguageModel`` checks any file it opens with this alone."""
    if not path.exists():
        raise ModelFolderError(f"The language model file {path} does not exist.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
    if not path.is_file():
        raise ModelFolderError(f"{path} is not a file.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
    try:
        size = path.stat().st_size
        if size == 0:
            raise _Corrupt("the file is empty")
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return parse(mm, size)
    except OSError as e:
        raise ModelFolderError(f"Cannot read {path}: {e.strerror or e}.",
                               "Check the file exists and is readable.") from e
    except _Truncated as e:
        raise ModelFolderError(f"{path.name} is truncated: {e}.", REDO_MODEL, gui_hint=REDO_MODEL_GUI) from e
    except (ValueError, struct.error, OverflowError) as e:
        raise ModelFolderError(f"{path.name} is not a GGUF file Glimpse wrote: {e}.", REDO_MODEL,
                               gui_hint=REDO_MODEL_GUI) from e


def expected_tensors(llm: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensors (GGUF dims order) Glimpse writes for the language model that ``model.json``'s ``llm`` describes."""
    h, heads, kv_heads = int(llm["hidden"]), int(llm["heads"]), int(llm["kv_heads"])
    ffn, vocab, layers = int(llm["ffn"]), int(llm["vocab_rows"]), int(llm["layers"])
    if heads <= 0 or kv_heads <= 0 or h % heads:
        raise ValueError("its head counts do not divide the width")
    kv = kv_heads * (h // heads)
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (h, vocab), "output_norm.weight": (h,)}
    for i in range(layers):
        p = f"blk.{i}."
        out.update({p + "attn_norm.weight": (h,), p + "ffn_norm.weight": (h,),
                    p + "attn_q.weight": (h, h), p + "attn_q.bias": (h,),
                    p + "attn_k.weight": (h, kv), p + "attn_k.bias": (kv,),
                    p + "attn_v.weight": (h, kv), p + "attn_v.bias": (kv,),
                    p + "attn_output.weight": (h, h),
                    p + "ffn_gate.weight": (h, ffn), p + "ffn_up.weight": (h, ffn), p + "ffn_down.weight": (ffn, h)})
    if not llm.get("tied_embeddings"):
        out["output.weight"] = (h, vocab)
    return out


def check_against_manifest(header: GgufHeader, llm: Any) -> None:
    """Raise ValueError with a reason unless ``header`` is what Glimpse wrote for ``llm`` (model.json's entry)."""
    if not isinstance(llm, dict):
        raise ValueError("model.json has no llm entry to check it against")
    v = header.values
    if v.get("general.architecture") != ARCH:
        raise ValueError(f"its architecture is {str(v.get('general.architecture'))[:40]!r}, not {ARCH!r}")
    try:
        layers = int(llm["layers"])
        wanted: dict[str, object] = {f"{ARCH}.block_count": layers, f"{ARCH}.embedding_length": int(llm["hidden"]),
                  f"{ARCH}.attention.head_count": int(llm["heads"]),
                  f"{ARCH}.attention.head_count_kv": int(llm["kv_heads"]),
                  f"{ARCH}.feed_forward_length": int(llm["ffn"]),
                  f"{ARCH}.context_length": int(llm["context_length"])}
        tensors = expected_tensors(llm)
        vocab = int(llm["vocab_rows"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"model.json's llm entry is incomplete ({e})") from e
    # The tokenizer code llama.cpp runs is chosen by these strings; only Qwen2's byte-level BPE is expected.
    wanted["tokenizer.ggml.model"] = "gpt2"
    wanted["tokenizer.ggml.pre"] = "qwen2"
    for key, want in wanted.items():
        if v.get(key) != want:
            raise ValueError(f"{key} is {repr(v.get(key))[:40]}, but {want!r} was expected")
    for key, item in EXPECTED_ARRAYS.items():
        got = v.get(key)
        if not isinstance(got, Array) or got.item_type != item:
            raise ValueError(f"{key} is not an array of the type Glimpse writes")
    for key, got in v.items():
        if isinstance(got, Array) and key not in EXPECTED_ARRAYS:
            raise ValueError(f"it has an array {key!r} that Glimpse does not write")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        if v[key].count != vocab:
            raise ValueError(f"{key} has {v[key].count:,} entries, but the vocabulary has {vocab:,}")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id"):
        if key in v and not (isinstance(v[key], int) and 0 <= v[key] < vocab):
            raise ValueError(f"{key} is {v[key]}, outside the vocabulary")
    if len(header.tensors) != len(tensors):
        raise ValueError(f"it has {len(header.tensors)} tensors, but model.json describes {len(tensors)}")
    for t in header.tensors:
        if tensors.get(t.name) != t.dims:
            raise ValueError(f"the tensor {t.name!r} has dims {list(t.dims)}, "
                             f"not {list(tensors.get(t.name, ()))} as model.json describes")


def check_gguf_file(path: Path, llm: Any) -> GgufHeader:
    """Read ``path``'s header and check it against ``llm`` (model.json's ``llm``); ModelFolderError otherwise."""
    header = read_header(path)
    try:
        check_against_manifest(header, llm)
    except ValueError as e:
        raise ModelFolderError(f"{path.name} does not match its model.json: {e}.", REDO_MODEL,
                               gui_hint=REDO_MODEL_GUI) from e
    return header
