"""Where Glimpse keeps things: the user folders (models, caches, logs) and the bundled ``assets/`` folder.

Every path Glimpse writes outside a folder the user named comes from :func:`user_folder`, so ``$GLIMPSE_HOME``
means the same thing to the model store, the onnxruntime graph cache and the app's log.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Literal

import platformdirs

from glimpse.engine.errors import FolderError

APP_NAME = "Glimpse"
UserFolder = Literal["data", "cache", "logs", "config"]


def user_folder(kind: UserFolder) -> Path:
    """The folder for ``kind``: under ``$GLIMPSE_HOME`` when it is set (data is the root itself, caches in
    ``cache/``, logs in ``logs/``), else the per-user folder platformdirs gives for "Glimpse". ``config`` is where
    the window's settings file is (Qt's per-user location, which GLIMPSE_HOME does not move). Read on every call,
    not cached, so a test or a user can point it elsewhere at any time."""
    override = os.environ.get("GLIMPSE_HOME", "").strip()
    if override and kind != "config":
        root = Path(override).expanduser()
        return root if kind == "data" else root / kind
    if kind == "data":
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    if kind == "cache":
        return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    if kind == "config":
        return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def graph_cache() -> Path:
    """Where onnxruntime's optimized vision graphs are cached (``cache/onnx``). Here rather than in the vision module
    so the model store can clean it without importing onnxruntime."""
    return user_folder("cache") / "onnx"


def assets_root() -> Path:
    """The ``assets`` folder: inside a PyInstaller bundle when running from one, else beside the sources."""
    bundle = getattr(sys, "_MEIPASS", None)  # PyInstaller's unpack folder
    if bundle is not None and (Path(bundle) / "assets").is_dir():
        return Path(bundle) / "assets"
    return Path(__file__).resolve().parent.parent / "assets"


# -- is a folder usable ------------------------------------------------------------------------------------------------

_SET_HOME = "set GLIMPSE_HOME to a folder you can write to"
_SET_HOME_GUI = "start Glimpse with GLIMPSE_HOME set to a folder you can write to"


def _unusable(path: Path, what: str, problem: str, fix: str, movable: bool) -> FolderError:
    if not movable:  # GLIMPSE_HOME does not move it: only fixing the folder helps
        return FolderError(f"Glimpse cannot use {path}, its {what}: {problem}.", f"{fix}.")
    home = os.environ.get("GLIMPSE_HOME", "").strip()
    named = f" (GLIMPSE_HOME is {home})" if home else ""
    return FolderError(f"Glimpse cannot use {path}, its {what}{named}: {problem}.",
                       f"{fix}, or {_SET_HOME}.", gui_hint=f"{fix}, or {_SET_HOME_GUI}.")


def check_folder(path: Path, what: str, *, movable: bool = True) -> None:
    """Raise FolderError, naming ``path`` and what to do, unless ``path`` is a folder this process can list and
    write in, or does not exist yet and can be created (its nearest existing parent is such a folder).
    ``movable``: whether GLIMPSE_HOME moves it (the advice then offers that too).

    Writing is tried for real (a file created and deleted), because permission bits do not tell about read-only
    mounts, access control lists or a full disk, and do not bind the superuser."""
    probe_in = path
    while not os.path.lexists(probe_in):
        if probe_in.parent == probe_in:
            return  # nothing of it exists, not even a root: nothing to check against
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        where = "is a file" if probe_in == path else f"cannot be created: {probe_in} is a file"
        raise _unusable(path, what, f"it {where}, not a folder", f"Move {probe_in} away", movable)
    try:
        os.listdir(probe_in)
        probe = probe_in / f".glimpse-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0")  # a byte, not only a name: a full disk still has room for empty files
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            problem = "permission denied" if probe_in == path else f"{probe_in} does not let it create the folder"
            raise _unusable(path, what, problem, f"Give your account read and write access to {probe_in}",
                            movable) from e
        if e.errno == errno.EROFS:
            raise _unusable(path, what, "it is on a read-only file system", "Mount it writable", movable) from e
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise _unusable(path, what, "the disk holding it is full", "Free some space", movable) from e
        raise _unusable(path, what, e.strerror or str(e), f"Check {probe_in}", movable) from e


def check_home() -> None:
    """Check every folder the engine keeps things in (the model store, its models and downloads, the caches)
    before a command uses them, so that an unusable one is said in one sentence instead of being taken for an
    empty store. ``models`` and ``downloads`` are engine.models.store's names for its subfolders."""
    data = user_folder("data")
    check_folder(data, "data folder")
    check_folder(data / "models", "model store")
    check_folder(data / "downloads", "download folder")
    check_folder(user_folder("cache"), "cache folder")
