"""File names that come from files or servers, checked before they touch the disk.

Shard names in ``model.safetensors.index.json``, the ``files`` of ``model.json``, names in a download's state
file and ONNX external-data locations are all written by someone else. Each one must be a plain file name (no
folder part, no ``..``, no drive, no control characters) matching an allow-list pattern, and must resolve to a
path directly inside its folder, so a hostile index cannot make Glimpse read or write anywhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

from glimpse.engine.errors import GlimpseError

# Letters, digits, '.', '_' and '-', starting with a letter, digit or '_'; no dot-only names. Every file name
# Glimpse and Apple's checkpoints use fits (model-00001-of-00004.safetensors, tokenizer_config.json, LICENSE_MODEL).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# Names Windows maps to devices whatever the extension; refusing them everywhere keeps folders portable.
_WINDOWS_DEVICES = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)


def is_plain_name(name: object) -> bool:
    """True when ``name`` is a string that is a plain file name by Glimpse's allow-list."""
    return (isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None
            and not name.endswith(".") and _WINDOWS_DEVICES.fullmatch(name) is None)


def safe_child(folder: Path, name: object, what: str, error: type[GlimpseError], hint: str) -> Path:
    """``folder / name`` after checking that ``name`` is a plain file name and the path stays inside ``folder``.

    ``what`` says where the name came from (e.g. "model.safetensors.index.json"); ``error`` is raised with ``hint``
    when the name is refused. A symlink named ``name`` that points out of the folder is refused too.
    """
    if not is_plain_name(name):
        shown = repr(name)[:80] if isinstance(name, str) else f"a {type(name).__name__}"
        raise error(f"{what} names the file {shown}, which is not a plain file name; Glimpse only reads and writes "
                    "plain names (letters, digits, '.', '_', '-') inside its own folders.", hint)
    assert isinstance(name, str)
    path = folder / name
    base = folder.resolve()
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise error(f"{what} names the file {name!r}, which cannot be resolved ({e}).", hint) from e
    if resolved.parent != base:
        raise error(f"{what} names the file {name!r}, which leads out of {folder}.", hint)
    return path
