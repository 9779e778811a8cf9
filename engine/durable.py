"""Publishing writes that survive a power cut: data reaches the disk before the rename that makes it visible.

A rename is recorded in the folder's metadata, which file systems may write before the file's data (ext4 with
``data=writeback``, XFS, btrfs, APFS): after a crash the published name can point at a truncated or zero-filled
file that every later check trusts by its name. So every rename that publishes something (a download, a model
folder, an export, a settings or state file) goes through :func:`publish`, which syncs the new file or folder
first and the parent folder after. Windows cannot open folders for syncing and does not need it (NTFS journals
its renames), so folder syncs are skipped there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from pathlib import Path

_CAN_SYNC_DIRS = sys.platform != "win32"


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
