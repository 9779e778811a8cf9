"""A safetensors header, parsed and checked before a single tensor byte is read or allocated.

The format is an 8-byte little-endian header length, a JSON object ``{name: {dtype, shape, data_offsets}}`` and
the raw data. Every entry is checked for type, range and consistency: a known dtype, at most 8 non-negative
dimensions, offsets inside the data, a byte count that is exactly ``width * prod(shape)`` (computed in Python
integers, so no int64 wrap-around turns a giant shape into zero bytes), and no two tensors sharing bytes. Any
malformed header is one :class:`CheckpointError` sentence, whatever ``json`` or ``int`` raised underneath.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.errors import CheckpointError
from glimpse.engine.limits import parse_json

MAX_HEADER_BYTES = 100_000_000  # the 7B shards' headers are about 30 KB
MAX_DIMS = 8
MAX_TENSORS = 1_000_000
DTYPE_WIDTHS = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_HINT = "The file is corrupt or not a safetensors file; download the checkpoint again."


@dataclass(frozen=True)
class RawTensor:
    """One header entry: offsets are absolute positions in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def _entry(file: str, name: str, meta: Any) -> tuple[str, tuple[int, ...], int, int]:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{file}: the entry for tensor {name[:100]!r} {why}.", _HINT)

    if not isinstance(meta, dict):
        raise bad("is not a JSON object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_WIDTHS:
        raise bad(f"has the unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise bad(f"has no shape of at most {MAX_DIMS} dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"has the shape {str(shape)[:60]}, which is not a list of non-negative whole numbers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise bad("has no data_offsets pair of whole numbers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise bad(f"has data offsets {begin} to {end}, which are not a range")
    nbytes = DTYPE_WIDTHS[dtype] * math.prod(shape)  # Python ints: exact for any shape
    if end - begin != nbytes:
        raise bad(f"has {end - begin:,} bytes for shape {shape} in {dtype}, which needs {nbytes:,}")
    return dtype, tuple(shape), begin, end


def read_header(path: Path) -> list[RawTensor]:
    """Parse and check ``path``'s header (reads only the header). Raises CheckpointError with a sentence."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path.name} is empty or truncated ({size} bytes).",
                                      "Download the checkpoint again.")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{path.name} is not a valid safetensors file (header length {n}, "
                                      f"file {size} bytes).", "Download the checkpoint again.")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}.",
                              "Check the file exists and is readable.") from e
    header = parse_json(text, f"The header of {path.name}", CheckpointError, _HINT)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt header (not a JSON object).", _HINT)
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path.name} lists {len(header):,} tensors, more than any model has.", _HINT)
    base = 8 + n
    tensors: list[RawTensor] = []
    for name, meta in header.items():
        if name == "__metadata__":
            if not isinstance(meta, dict):
                raise CheckpointError(f"{path.name} has a __metadata__ entry that is not a JSON object.", _HINT)
            continue
        dtype, shape, begin, end = _entry(path.name, name, meta)
        tensors.append(RawTensor(name, dtype, shape, base + begin, base + end))
    data_end = max((t.end for t in tensors), default=base)
    if data_end > size:
        raise CheckpointError(
            f"{path.name} is truncated: it has {size:,} bytes but its header describes {data_end:,}.",
            "The download was probably interrupted; download the checkpoint again (pull resumes where it stopped).",
            gui_hint="The download was probably interrupted; download it again in the model manager (it resumes "
                     "where it stopped).")
    # Tensors may not share bytes: sorted by position, each must start at or after the previous one's end.
    ordered = sorted(tensors, key=lambda t: (t.start, t.end))
    for before, after in itertools.pairwise(ordered):
        if after.start < before.end:
            raise CheckpointError(f"{path.name}: tensors {before.name[:100]!r} and {after.name[:100]!r} overlap "
                                  f"(bytes {after.start:,} to {before.end:,}).", _HINT)
    return tensors
