"""Bounded readers for JSON written by someone else (config.json, tokenizer files, indexes, model.json).

Python's ``json`` accepts things no model file needs and fails in ways that are not ``JSONDecodeError``:
``Infinity``/``NaN``, integers of thousands of digits (a plain ValueError above 4300 digits, and slow below),
nesting deep enough for a RecursionError, duplicate keys (the last one silently wins). ``load_json`` refuses all
of them, and a file larger than its budget, with one GlimpseError sentence, before anything is built from it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from glimpse.engine.errors import GlimpseError

MAX_DEPTH = 64  # tokenizer.json, the deepest file Glimpse reads, nests 6 levels
MAX_INT_DIGITS = 30  # 2**64 has 20 digits; nothing in a model file is larger


class _Refused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > 64:
        raise _Refused(f"a number of {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:20]} is out of range")
    return value


def _parse_constant(text: str) -> Any:
    raise _Refused(f"'{text}' is not a number JSON allows")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {key[:40]!r} appears twice")
        out[key] = value
    return out


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (a recursive walk would itself hit the recursion limit)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def parse_json(text: str | bytes, what: str, error: type[GlimpseError], hint: str, *,
               gui_hint: str | None = None) -> Any:
    """Parse JSON text with the limits above; ``what`` names the file in the error."""

    def fail(message: str) -> GlimpseError:
        return error(message, hint, gui_hint=gui_hint)

    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant,
                           object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise fail(f"{what} is nested too deeply to be a model file.") from None
    except _Refused as e:
        raise fail(f"{what} is not a valid model file: {e}.") from None
    except (ValueError, UnicodeDecodeError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise fail(f"{what} is corrupt, not valid JSON ({e}).") from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise fail(f"{what} is nested more than {MAX_DEPTH} levels deep, deeper than any model file.")
    return value


def read_bounded(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it has more than ``max_bytes``. Unlike ``f.read(max_bytes + 1)``, which
    reserves the whole budget up front, this allocates only what the file holds. Raises OSError."""
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size > max_bytes:
            return None
        chunks = []
        total = 0
        while chunk := f.read(1 << 20):
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def load_json(path: Path, what: str, error: type[GlimpseError], hint: str, *, max_bytes: int,
              gui_hint: str | None = None) -> Any:
    """Read and parse ``path`` (at most ``max_bytes``); every failure is ``error`` with a sentence."""
    try:
        data = read_bounded(path, max_bytes)
    except OSError as e:
        raise error(f"Cannot read {what} ({path}): {e.strerror or e}.", hint, gui_hint=gui_hint) from e
    if data is None:
        raise error(f"{what} is larger than {max_bytes:,} bytes, far larger than such a file ever is.", hint,
                    gui_hint=gui_hint)
    return parse_json(data, what, error, hint, gui_hint=gui_hint)


def json_object(value: Any, what: str, error: type[GlimpseError], hint: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object.", hint)
    return value


def bounded_int(value: Any, what: str, low: int, high: int, error: type[GlimpseError], hint: str) -> int:
    """``value`` as an int from ``low`` to ``high``; bools, fractions, strings and out-of-range numbers refused."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 896.0 is written by some exporters
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} is {str(value)[:40]!r}, not a whole number.", hint)
    if not low <= value <= high:
        raise error(f"{what} is {value}, outside the range {low} to {high:,} that Glimpse accepts.", hint)
    return value


def bounded_float(value: Any, what: str, low: float, high: float, error: type[GlimpseError], hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} is {str(value)[:40]!r}, not a number.", hint)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not (math.isfinite(number) and low <= number <= high):
        raise error(f"{what} is {value}, outside the range {low:g} to {high:g} that Glimpse accepts.", hint)
    return number
