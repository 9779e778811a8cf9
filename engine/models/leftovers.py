"""Clean up after Glimpse processes that died mid-work: their hidden working folders and files in the store.

A conversion (``.<name>.partial-<pid>``), an import (``.<name>.import-<pid>``), a replacement (``.<name>.old-<pid>``)
and a removal (``.<name>.removing-<pid>``) work in hidden siblings of the model folder and delete them when they
end, whatever the outcome; only a process that is killed (or a machine that loses power) leaves one behind, often
several GB. The same goes for the vision cache's ``.vision-*.onnx.<pid>.partial`` files. This module finds those
whose process is gone and deletes them.

It is deliberately narrow: only the store's own folders are looked at, only names of exactly those shapes match,
links are never followed or deleted through, and nothing whose process id belongs to a live process (this one, a
second Glimpse, or an unrelated process that reused the id) is touched. A process id means nothing on another
computer sharing the store (a network home folder), so anything written to in the last ``QUIET_S`` seconds is
left alone too: a live conversion writes every few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

QUIET_S = 15 * 60
_WORK_FOLDER = re.compile(r"\.[a-z0-9][a-z0-9._-]{0,63}\.(?:partial|import|old|removing)-(?P<pid>[0-9]{1,10})")
_CACHE_PARTIAL = re.compile(r"\.vision-[0-9a-f]{32}-[0-9a-f]+\.onnx\.(?P<pid>[0-9]{1,10})\.partial")


def process_alive(pid: int) -> bool:
    """True when a process with this id exists (or might: when in doubt, it is treated as alive)."""
    if pid <= 0:
        return True  # never a process of ours; kill(0) would mean "this process group"
    if pid == os.getpid():
        return True
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        return _windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists but belongs to someone else, or the id is out of range for this system
    return True


if sys.platform == "win32":  # pragma: no cover - Windows only
    def _windows_process_alive(pid: int) -> bool:
        import ctypes  # noqa: PLC0415 (Windows only)
        from ctypes import wintypes  # noqa: PLC0415

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return bool(ctypes.get_last_error() == 5)  # ERROR_ACCESS_DENIED: it exists
        try:
            code = wintypes.DWORD()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return bool(code.value == 259)  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)


def stale_entries(folder: Path, pattern: re.Pattern[str], want_dir: bool) -> list[Path]:
    """Entries of ``folder`` (not below it) whose name matches ``pattern`` and whose process has ended."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            mode = entry.stat(follow_symlinks=False).st_mode
        except OSError:
            continue
        if (stat.S_ISDIR(mode) if want_dir else stat.S_ISREG(mode)) and not process_alive(int(match["pid"])) \
                and time.time() - _last_write(Path(entry.path)) > QUIET_S:
            out.append(Path(entry.path))
    return out


def _last_write(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it (links not followed); now if unknown."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return time.time()
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def clean_leftovers(model_folders: list[Path], cache_folder: Path | None = None) -> list[Path]:
    """Delete dead processes' working folders in ``model_folders`` (the store's models/ and downloads/) and their
    partial files in ``cache_folder``; returns what was deleted. Failures are logged, never raised: this runs at
    start-up, and a folder that cannot be deleted now will be tried again next time."""
    removed = []
    for parent in model_folders:
        for path in stale_entries(parent, _WORK_FOLDER, want_dir=True):
            try:
                shutil.rmtree(path)  # does not follow links inside the folder
            except OSError as e:
                log.warning("Could not delete %s, left by an earlier Glimpse: %s", path, e)
                continue
            removed.append(path)
    if cache_folder is not None:
        for path in stale_entries(cache_folder, _CACHE_PARTIAL, want_dir=False):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    for path in removed:
        log.info("Deleted %s, left by a Glimpse process that ended without cleaning up.", path)
    return removed
