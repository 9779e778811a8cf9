"""Working files carry their owner; the next store command reclaims those whose owner is provably gone.

A conversion (``.<name>.partial-<pid>``), an import (``.<name>.import-<pid>``), a replacement (``.<name>.old-<pid>``)
and a removal (``.<name>.removing-<pid>``) work in hidden siblings of the model folder and delete them when they
end, whatever the outcome; a download works in ``downloads/<name>/``. Each writes an owner record into its folder
first (:func:`claim`, ``.glimpse-owner.json``): the host name, the process id and that process's start time
(psutil). Only a process that is killed (a crash, a logout, an OOM kill) or a machine that loses power leaves a
working folder behind, often several GB.

:func:`reclaim` decides from the record alone, no timer: on another host the work is left alone (a network home
folder shared by two computers); on this host it is the owner's while a process with that id runs *and* started at
the recorded time. A missing id, a zombie, or an id reused by a process that started at another time prove the
owner gone, and its working folder is deleted at once. A download's folder is the exception: what it holds is
where the next pull resumes, so only its stale owner record goes. A folder without a record (made by an older
Glimpse, or killed in the instant between creating it and writing the record) is judged by the id in its name.
The vision cache's ``.vision-*.onnx.<pid>.partial`` files carry their id in the name only; one is reclaimed when
no process has that id, or the process that has it started after the file was last written.

It is deliberately narrow: only the store's own folders are looked at, only names of exactly those shapes match,
and links are never followed or deleted through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

log = logging.getLogger(__name__)

OWNER_FILE = ".glimpse-owner.json"
_MAX_OWNER_BYTES = 4096
_SAME_START_S = 1.0  # start times are computed from the boot time, which the clock's adjustments can move by ~1 s
_WORK_FOLDER = re.compile(r"\.[a-z0-9][a-z0-9._-]{0,63}\.(?P<kind>partial|import|old|removing)-(?P<pid>[0-9]{1,10})")
_CACHE_PARTIAL = re.compile(r"\.vision-[0-9a-f]{32}-[0-9a-f]+\.onnx\.(?P<pid>[0-9]{1,10})\.partial")
_KINDS = {"partial": "a conversion", "import": "an import", "old": "a replacement", "removing": "a removal",
          "download": "a download"}

OwnerState = Literal["alive", "gone", "elsewhere"]


def this_host() -> str:
    return socket.gethostname() or "localhost"


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when there is no such process (or a zombie:
    killed, not yet reaped, it can write nothing more). Raises psutil.Error when it exists but cannot be asked."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        return None


@dataclass(frozen=True)
class Owner:
    """The process that made a working folder: where it ran, its id, and when it started."""

    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls) -> Owner:
        return cls(this_host(), os.getpid(), float(psutil.Process().create_time()))

    def state(self) -> OwnerState:
        """"elsewhere" on another host; "gone" only when provably so; "alive" otherwise (when in doubt)."""
        if self.host != this_host():
            return "elsewhere"
        if self.pid <= 0:
            return "alive"  # never an id Glimpse records
        try:
            started = _start_time(self.pid)
        except (psutil.Error, OSError):
            return "alive"  # exists, but belongs to someone else: not provably gone
        if started is None or abs(started - self.started) > _SAME_START_S:
            return "gone"
        return "alive"

    def describe(self) -> str:
        return f"process {self.pid}" + ("" if self.host == this_host() else f" on {self.host}")


def claim(folder: Path) -> None:
    """Record this process as the owner of the working folder ``folder`` (which exists). Best effort: a record
    that cannot be written leaves the folder judged by the id in its name."""
    try:
        me = Owner.this_process()
        (folder / OWNER_FILE).write_text(json.dumps({"host": me.host, "pid": me.pid, "started": me.started}),
                                         encoding="utf-8")
    except (OSError, psutil.Error) as e:
        log.debug("Could not record the owner of %s: %s", folder, e)


def release(folder: Path) -> None:
    """Drop the owner record (when the folder stops being work in progress: published, or about to be deleted)."""
    with contextlib.suppress(OSError):
        (folder / OWNER_FILE).unlink()


def read_owner(folder: Path) -> Owner | None:
    """The owner record of ``folder``, or None when there is none Glimpse could have written."""
    path = folder / OWNER_FILE
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_OWNER_BYTES:
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    host, pid, started = raw.get("host"), raw.get("pid"), raw.get("started")
    if not isinstance(host, str) or type(pid) is not int or not isinstance(started, (int, float)) \
            or isinstance(started, bool):
        return None
    return Owner(host, pid, float(started))


def _pid_state(pid: int, written: float) -> OwnerState:
    """The owner of something named after ``pid`` alone, last written at ``written`` (this host assumed)."""
    if pid <= 0:
        return "alive"
    try:
        started = _start_time(pid)
    except (psutil.Error, OSError):
        return "alive"
    if started is None or started > written + _SAME_START_S:
        return "gone"  # no such process, or one that started after the last write: not the writer
    return "alive"


def process_alive(pid: int) -> bool:
    """True when a process with this id exists (or might: when in doubt, it is treated as alive)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        return _start_time(pid) is not None
    except (psutil.Error, OSError, OverflowError):
        return True


@dataclass(frozen=True)
class WorkEntry:
    """A working folder or partial file found in the store, its owner and what it holds."""

    path: Path
    kind: str  # "a conversion", "an import", ..., "a download", "a vision cache file"
    owner: Owner | None  # None: only the id in the name is known
    state: OwnerState
    size_bytes: int

    def describe(self) -> str:
        who = self.owner.describe() if self.owner is not None else f"process {_name_pid(self.path)}"
        where = " (another computer)" if self.state == "elsewhere" else ""
        return f"{self.path} ({human_bytes(self.size_bytes)}): {self.kind} by {who}{where}, still under way"


@dataclass
class Reclaimed:
    """What :func:`reclaim` deleted (path, bytes) and the work it left because its owner may still be at it."""

    removed: list[tuple[Path, int]] = field(default_factory=list)
    in_use: list[WorkEntry] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(size for _path, size in self.removed)

    def sentence(self) -> str:
        """"Freed 812.00 MB that 2 ended Glimpse processes left behind." or "" when nothing was deleted."""
        if not self.removed:
            return ""
        n = len(self.removed)
        what = "a working folder" if n == 1 else f"{n} working folders and files"
        return (f"Freed {human_bytes(self.freed)}: {what} left by Glimpse work that ended without cleaning up "
                f"({', '.join(p.name for p, _ in self.removed)}).")


def human_bytes(n: float) -> str:
    """``n`` bytes in words: "812 bytes", "1.52 GB" (decimal units, as disks and downloads count)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _name_pid(path: Path) -> int:
    m = _WORK_FOLDER.fullmatch(path.name) or _CACHE_PARTIAL.fullmatch(path.name)
    return int(m["pid"]) if m else 0


def tree_size(path: Path) -> int:
    """Bytes in the regular files at or under ``path``; links are not followed."""
    try:
        info = path.lstat()
    except OSError:
        return 0
    if stat.S_ISREG(info.st_mode):
        return info.st_size
    total = 0
    if stat.S_ISDIR(info.st_mode):
        for root, _dirs, files in os.walk(path, followlinks=False):
            for name in files:
                with contextlib.suppress(OSError):
                    entry = os.lstat(os.path.join(root, name))
                    if stat.S_ISREG(entry.st_mode):
                        total += entry.st_size
    return total


def _last_write(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def working_entries(model_folders: Iterable[Path], downloads: Path | None = None,
                    cache_folder: Path | None = None) -> list[WorkEntry]:
    """Every working folder in ``model_folders`` (the store's models/ and downloads/), every download folder of
    ``downloads`` that has an owner record, and every partial file of ``cache_folder``, each with its owner's state."""
    out: list[WorkEntry] = []
    for parent in model_folders:
        for entry in _scan(parent):
            match = _WORK_FOLDER.fullmatch(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            owner = read_owner(path)
            state = owner.state() if owner is not None else _pid_state(int(match["pid"]), _last_write(path))
            out.append(WorkEntry(path, _KINDS[match["kind"]], owner, state, tree_size(path)))
    if downloads is not None:
        for entry in _scan(downloads):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            owner = read_owner(path)
            if owner is not None:
                out.append(WorkEntry(path, _KINDS["download"], owner, owner.state(), tree_size(path)))
    if cache_folder is not None:
        for entry in _scan(cache_folder):
            match = _CACHE_PARTIAL.fullmatch(entry.name)
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            out.append(WorkEntry(path, "a vision cache file", None, _pid_state(int(match["pid"]), _last_write(path)),
                                 tree_size(path)))
    return out


def reclaim(model_folders: Iterable[Path], downloads: Path | None = None,
            cache_folder: Path | None = None) -> Reclaimed:
    """Delete what ended processes left (see the module's description) and say what is left in use. Failures are
    logged, never raised: a folder that cannot be deleted now is tried again by the next command."""
    result = Reclaimed()
    for work in working_entries(model_folders, downloads, cache_folder):
        if work.state != "gone":
            result.in_use.append(work)
            continue
        if work.kind == _KINDS["download"]:
            release(work.path)  # the download itself stays: the next pull resumes from it
            log.info("%s was being downloaded by %s, which has ended; the next pull resumes it.", work.path,
                     work.owner.describe() if work.owner else "a process")
            continue
        try:
            if work.path.is_dir() and not work.path.is_symlink():
                shutil.rmtree(work.path)  # does not follow links inside the folder
            else:
                work.path.unlink()
        except OSError as e:
            log.warning("Could not delete %s, left by an earlier Glimpse: %s", work.path, e)
            continue
        result.removed.append((work.path, work.size_bytes))
        log.info("Deleted %s (%s), left by a Glimpse process that ended without cleaning up.", work.path,
                 human_bytes(work.size_bytes))
    return result


def clean_leftovers(model_folders: list[Path], cache_folder: Path | None = None) -> list[Path]:
    """:func:`reclaim` for callers that want only the deleted paths."""
    return [path for path, _size in reclaim(model_folders, None, cache_folder).removed]
