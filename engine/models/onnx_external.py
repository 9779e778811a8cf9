"""Find every external-data reference in an ONNX file without loading it, and refuse those Glimpse does not own.

An ONNX tensor may keep its bytes in another file (``data_location: EXTERNAL`` with a ``location`` entry), and
onnxruntime opens that path relative to the model, ``..`` and absolute paths included. A model folder from
elsewhere could so make onnxruntime read any file the user can read. Glimpse's own ``vision.onnx`` has no external
data; a location is accepted only when it is a plain file name inside the model folder that ``model.json`` lists
(so its size and sha256 are checked like the rest).

The file is walked as raw protobuf (wire format only), descending into exactly the messages that can hold tensors:
graphs, nodes, attributes, functions, sparse tensors and training info. Weight bytes are skipped by length, so a
500 MB graph is checked in milliseconds and without a copy.
"""

from __future__ import annotations

import mmap
from collections.abc import Container
from pathlib import Path

from glimpse.engine.errors import REDO_MODEL, REDO_MODEL_GUI, ModelFolderError
from glimpse.engine.names import is_plain_name, safe_child

MAX_DEPTH = 64

# message kind -> {field number: message kind of that field}; fields not listed are skipped.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_EXTERNAL = 1


class _Corrupt(ValueError):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt("a number runs past its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) for each field of one message."""
    out = []
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            out.append((number, wire, value, pos))
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            out.append((number, wire, 0, pos))
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt("a field runs past its message")
            out.append((number, wire, pos, pos + n))
            pos += n
        else:
            raise _Corrupt(f"wire type {wire} is not used by ONNX")
        if pos > end:
            raise _Corrupt("a field runs past its message")
    return out


def external_locations(buf: memoryview) -> list[tuple[str, str]]:
    """(tensor name, location) for every tensor stored outside the file; ``location`` is "" when none is given."""
    found: list[tuple[str, str]] = []
    stack = [("model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Corrupt("messages are nested too deeply")
        children = _CHILDREN[kind]
        name, location, external = "", "", False
        for number, wire, a, b in _fields(buf, start, end):
            if kind == "tensor" and number == _TENSOR_LOCATION and wire == 0:
                external = external or a == _EXTERNAL
            elif kind == "tensor" and number == _TENSOR_NAME and wire == 2:
                name = bytes(buf[a:b]).decode("utf-8", "replace")[:100]
            elif kind == "tensor" and number == _TENSOR_EXTERNAL and wire == 2:
                external = True
                key = value = ""
                for n2, w2, a2, b2 in _fields(buf, a, b):
                    if w2 == 2 and n2 in (1, 2):
                        text = bytes(buf[a2:b2]).decode("utf-8", "replace")
                        key, value = (text, value) if n2 == 1 else (key, text)
                if key == "location":
                    location = value
            elif wire == 2 and number in children:
                stack.append((children[number], a, b, depth + 1))
        if external:
            found.append((name, location))
    return found


def check_onnx_file(path: Path, listed: Container[str]) -> None:
    """Refuse ``path`` unless every external-data location is a plain file in its folder that is in ``listed``."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                found = external_locations(view)
            finally:
                view.release()
    except OSError as e:
        raise ModelFolderError(f"Cannot read {path}: {e.strerror or e}.",
                               "Check the file exists and is readable.") from e
    except ValueError as e:  # mmap of an empty file, or _Corrupt
        raise ModelFolderError(f"{path.name} is not a valid ONNX file ({e}).", REDO_MODEL,
                               gui_hint=REDO_MODEL_GUI) from e
    for tensor, location in found:
        what = f"{path.name} (tensor {tensor!r})"
        if not is_plain_name(location) or location not in listed:
            shown = repr(location)[:80]
            raise ModelFolderError(
                f"{what} keeps its data in {shown}, which is not a file of this model folder listed in model.json; "
                "Glimpse does not let a model read other files.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
        target = safe_child(path.parent, location, what, ModelFolderError, REDO_MODEL)
        if target.is_symlink() or not target.is_file():
            raise ModelFolderError(f"{what} keeps its data in {location!r}, which is not a regular file.", REDO_MODEL,
                                   gui_hint=REDO_MODEL_GUI)
