"""The runner's wire format: one message is a small JSON header and, optionally, the raw bytes of one array.

    frame = u32 header length | u64 payload length | header (UTF-8 JSON object) | payload

A header with an ``"array"`` entry (``{"dtype": "float32", "shape": [256, 896]}``) carries that array's bytes as the
payload, so pictures and image rows cross the pipe as one ``write`` of their own buffer: no base64, no pickling,
nothing the other side could be made to execute. Both ends are this same program, but the reader still checks
lengths, dtypes and shapes, so a truncated or garbled frame is an error, never a huge allocation.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np
import numpy.typing as npt

_PREFIX = struct.Struct("<IQ")
MAX_HEADER = 1 << 24  # a header is a few hundred bytes; a tuning report a few kB
MAX_PAYLOAD = 1 << 31  # a 2048 px picture is 12 MB; image rows of a 7x7 tiling of a 7B model about 50 MB
_DTYPES = {"uint8": np.uint8, "float32": np.float32}


class ProtocolError(Exception):
    """The other end sent something that is not a frame of this protocol, or went away mid-frame."""


class PeerGone(ProtocolError):
    """The pipe ended: the other process closed it or died."""


def encode(header: dict[str, Any], array: npt.NDArray[Any] | None = None) -> list[bytes | memoryview]:
    """The frame for ``header`` (and ``array``) as buffers to write in order."""
    payload: memoryview | bytes = b""
    if array is not None:
        if array.dtype.name not in _DTYPES:
            raise ValueError(f"arrays of {array.dtype} are not sent")
        array = np.ascontiguousarray(array)
        header = {**header, "array": {"dtype": array.dtype.name, "shape": list(array.shape)}}
        payload = memoryview(array.reshape(-1).view(np.uint8).data)  # the array's own bytes, not a copy
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return [_PREFIX.pack(len(head), len(payload)), head, payload]


def write_message(fd: int, header: dict[str, Any], array: npt.NDArray[Any] | None = None) -> None:
    """Write one frame to the file descriptor ``fd`` (blocking until all of it is written)."""
    for part in encode(header, array):
        view = memoryview(part)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def _read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise PeerGone("the pipe ended" if got == 0 else "the pipe ended in the middle of a message")
        got += k
    return buf


def read_message(fd: int) -> tuple[dict[str, Any], npt.NDArray[Any] | None]:
    """Read one frame from ``fd``: its header and its array (None when it carries none)."""
    try:
        head_len, payload_len = _PREFIX.unpack(_read_exact(fd, _PREFIX.size))
    except PeerGone:
        raise
    if head_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"a frame of {head_len} + {payload_len} bytes is larger than any message")
    try:
        header = json.loads(bytes(_read_exact(fd, head_len)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"a header that is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ProtocolError("a header that is not a JSON object")
    spec = header.pop("array", None)
    if spec is None:
        if payload_len:
            raise ProtocolError("a payload without an array description")
        return header, None
    try:
        dtype = np.dtype(_DTYPES[spec["dtype"]])
        shape = tuple(int(d) for d in spec["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"an array description that is not valid ({e})") from e
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != payload_len:
        raise ProtocolError(f"an array of shape {shape} does not fill {payload_len} bytes")
    array = np.frombuffer(_read_exact(fd, payload_len), dtype=dtype).reshape(shape)
    return header, array
