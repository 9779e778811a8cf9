"""Publishing writes that survive a power cut: data reaches the disk before the rename that makes it visible.

A rename is recorded in the folder's metadata, which file systems may write before the file's data (ext4 with
``data=writeback``, XFS, btrfs, APFS): after a crash the published name can point at a truncated or zero-filled
file that every later check trusts by its name. So every rename that publishes something (a download, a model
folder, an export, a settings or state file) goes through :func:`publish`, which syncs the new file or folder
first and the parent folder after. Windows cannot open folders for syncing and does not need it (NTFS journals
its renames), so folder syncs are skipped there.

The other half is reading such a file back: :func:`read_state_file` is how every file Glimpse can rebuild (the
window's settings, the tuning cache, the kernel canary's cache) is read. A damaged one is set aside beside itself
(``<name>.damaged``), said once (a log warning and a sentence the caller can show), and the caller rebuilds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

_CAN_SYNC_DIRS = sys.platform != "win32"
log = logging.getLogger("glimpse")
T = TypeVar("T")
DAMAGED_SUFFIX = ".damaged"


def sync_file(path: Path) -> None:
    """Flush one file's data and metadata to the disk (raises OSError if that fails)."""
    # Windows flushes only handles opened for writing; elsewhere a read-only descriptor flushes the file too.
    fd = os.open(path, (os.O_RDWR | getattr(os, "O_BINARY", 0)) if sys.platform == "win32" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """Flush a folder's entries (the names created, renamed or removed in it) to the disk."""
    if not _CAN_SYNC_DIRS:
        return
    # Best effort: the rename has happened by now, and some file systems (certain FUSE and network mounts) or a
    # folder without read permission refuse this; failing the whole write for it would report a saved file as lost.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """Sync every regular file under ``folder`` and every folder in it, deepest first. Links are not followed."""
    for root, dirs, files in os.walk(folder, topdown=False, followlinks=False):
        for name in files:
            path = Path(root) / name
            if stat.S_ISREG(path.lstat().st_mode):
                sync_file(path)
        for name in dirs:
            if not (Path(root) / name).is_symlink():
                sync_dir(Path(root) / name)
    sync_dir(folder)


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` (a file, or a folder that ``final`` does not exist as) to ``final``, durably.

    A file replaces an existing ``final`` atomically; a folder needs ``final`` to be absent (callers move an old
    one aside first, see :func:`publish_folder`)."""
    if tmp.is_dir() and not tmp.is_symlink():
        sync_tree(tmp)
    else:
        sync_file(tmp)
    os.replace(tmp, final)
    sync_dir(final.parent)


def publish_folder(tmp: Path, final: Path, *, aside: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``final``, which may exist: the old one is renamed to ``aside``
    and deleted only once the new one is in place, and put back if that fails."""
    sync_tree(tmp)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
        try:
            tmp.rename(final)
        except OSError:
            aside.rename(final)
            raise
        sync_dir(final.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(final)
        sync_dir(final.parent)


def write_text(path: Path, text: str, *, tmp: Path | None = None) -> None:
    """Replace ``path`` by ``text`` (UTF-8) so that a crash leaves either the old file or the whole new one: write
    a temporary file beside it (``tmp``, by default ``.<name>.partial-<pid>``), sync it, rename it over."""
    partial = tmp or path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    sync_dir(path.parent)


# -- state files that can be rebuilt -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StateRead(Generic[T]):
    """What :func:`read_state_file` found: ``value`` (None when there was no usable file), ``damaged`` (where a bad
    file was set aside, if one was) and ``notice`` (one sentence for the user; "" when nothing needs saying)."""

    value: T | None
    damaged: Path | None = None
    notice: str = ""


def set_aside(path: Path, what: str, reason: str) -> StateRead[T]:
    """Rename the damaged ``path`` to ``<name>.damaged`` (``.damaged-2`` ... when older copies are there), log a
    warning and return the sentence that says so. The file is kept, not deleted: it may be the user's work (a
    hand-edited preset list) or evidence for a bug report. A file that cannot even be renamed is left in place."""
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    for n in range(2, 10):
        if not os.path.lexists(aside):
            break
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}-{n}")
    try:
        os.replace(path, aside)
    except OSError as e:
        notice = (f"The {what} {path} is damaged ({reason}) and could not be set aside ({e.strerror or e}); "
                  "Glimpse ignores it and starts afresh.")
        log.warning("%s", notice)
        return StateRead(None, None, notice)
    sync_dir(path.parent)
    notice = (f"The {what} {path} was damaged ({reason}); Glimpse set it aside as {aside.name} and starts "
              "afresh with a new one.")
    log.warning("%s", notice)
    return StateRead(None, aside, notice)


def read_state_file(path: Path, parse: Callable[[bytes], T], *, what: str,
                    max_bytes: int = 1 << 20) -> StateRead[T]:
    """Read a file Glimpse can rebuild: ``parse`` turns its bytes into the value, or raises ValueError (or
    TypeError, KeyError, RecursionError) for bytes that are not one. No file: ``StateRead(None)``, silently. A file
    that is half-written, garbage, bigger than ``max_bytes``, not a regular file, or unreadable is set aside
    (:func:`set_aside`), so the next read finds nothing and the caller's rebuilt file replaces it: the damage is
    said once, never again and never as an error."""
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):  # no file (or no folder for one): nothing to say
        return StateRead(None)
    except OSError as e:
        return set_aside(path, what, e.strerror or str(e))
    if not stat.S_ISREG(info.st_mode):
        return set_aside(path, what, "it is not a regular file")
    if info.st_size > max_bytes:
        return set_aside(path, what, f"{info.st_size:,} bytes, more than the {max_bytes:,} it can be")
    try:
        data = path.read_bytes()
    except OSError as e:
        return set_aside(path, what, e.strerror or str(e))
    try:
        return StateRead(parse(data))
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        return set_aside(path, what, _short(e) or "it cannot be parsed")


def _short(e: Exception) -> str:
    text = str(e).strip().rstrip(".")
    return text if len(text) <= 120 else text[:117] + "..."
