"""Copy a converted model folder for ``glimpse models import``: only what its model.json lists, only regular files,
each hashed as it is copied.

The source folder is not Glimpse's own (a USB stick, a shared drive, an unpacked archive), so nothing in it is
trusted: a listed file that is a link (possibly to a file outside the folder) or a special file (a FIFO would block
the copy forever, a device would never end) is refused; files the manifest does not list, the ``.glimpse-verified``
stamp included, are not copied; and the bytes written are the bytes hashed, so a file changed or replaced during
the copy cannot slip in behind an earlier check: each file is hashed after it is copied, in its new place, which
only Glimpse writes to. The copy itself runs in the kernel where it can (``sendfile``): importing a 1.25 GiB folder
took 5-6 s that way against 10-16 s through a Python read/write loop (2-core VM, fsync included).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from glimpse.engine.errors import ModelFolderError
from glimpse.engine.models.model_folder import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ModelManifest,
    read_manifest,
    sha256_file,
    verify,
)
from glimpse.engine.progress import Progress, ProgressFn, check_cancel

_CHUNK = 1 << 26  # between progress reports and cancel checks
_IMPORT_GUI = "Import an intact copy of the model folder, or download the model in the model manager."
# Open without following a final link and without blocking on a FIFO swapped in after the check.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _refuse(message: str) -> ModelFolderError:
    return ModelFolderError(message, "Import a folder made by `glimpse convert` or `glimpse models pull`, "
                                     "with its files as they were written.", gui_hint=_IMPORT_GUI)


def copy_model_folder(src: Path, dst: Path, *, progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> ModelManifest:
    """Copy the model folder ``src`` into the new folder ``dst`` (created here unless it exists, holding at most an
    owner record) and return its manifest.

    Raises ModelFolderError naming the file for a link, a special file, a size or sha256 that does not match
    model.json, or anything model.json itself gets wrong; Cancelled when ``cancel`` is set. ``dst`` is left for
    the caller to delete on failure."""
    try:
        verify(src, check_hashes=False)  # the manifest's shape, names and sizes: cheap, before any copying
    except ModelFolderError as e:
        e.gui_hint = _IMPORT_GUI
        raise
    manifest_src = src / MANIFEST
    if not stat.S_ISREG(manifest_src.lstat().st_mode):
        raise _refuse(f"{manifest_src} is a link; Glimpse imports regular files only.")
    dst.mkdir(exist_ok=True)  # the caller may have made it to record its owner (engine.models.leftovers.claim)
    _copy_regular(manifest_src, dst / MANIFEST, None, None, None, cancel)
    # From here on the copy's manifest is the one that counts: the source's may have changed since it was read.
    manifest = read_manifest(dst)
    total = sum(int(e["size"]) for e in manifest.files.values())
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        check_cancel(cancel, "The import")
        if progress is not None:
            progress(Progress("import", done[0], total, "B"))

    for name, entry in manifest.files.items():
        _copy_regular(src / name, dst / name, int(entry["size"]), str(entry["sha256"]), advance, cancel)
    verify(dst, check_hashes=False)
    return manifest


def _copy_regular(src: Path, dst: Path, size: int | None, sha256: str | None,
                  advance: Callable[[int], None] | None, cancel: threading.Event | None) -> None:
    """Copy one regular file, then check the copy's size (``None``: at most MAX_MANIFEST_BYTES) and sha256."""
    try:
        before = src.lstat()
    except OSError as e:
        raise _refuse(f"{src} cannot be read: {e.strerror or e}.") from e
    if not stat.S_ISREG(before.st_mode):
        kind = "a link" if stat.S_ISLNK(before.st_mode) else "not a regular file"
        raise _refuse(f"{src} is {kind}; Glimpse imports regular files only.")
    try:
        fd = os.open(src, _OPEN_FLAGS)
    except OSError as e:
        raise _refuse(f"{src} cannot be read: {e.strerror or e}.") from e
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise _refuse(f"{src} was replaced while it was being imported.")
        if size is not None and now.st_size != size:
            raise _refuse(f"{src} has {now.st_size:,} bytes but model.json records {size:,}.")
        if size is None and now.st_size > MAX_MANIFEST_BYTES:
            raise _refuse(f"{src} has {now.st_size:,} bytes, far more than a manifest.")
        limit = size if size is not None else now.st_size
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        try:
            copied = _transfer(fd, out, limit, advance)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    if copied != limit:
        raise _refuse(f"{src} {'grew' if copied > limit else 'shrank'} while it was being imported.")
    if sha256 is not None and sha256_file(dst, cancel) != sha256:
        raise ModelFolderError(f"{src} is corrupt: its sha256 does not match model.json.",
                               "Import an intact copy of the model folder.", gui_hint=_IMPORT_GUI)


def _transfer(src: int, dst: int, limit: int, advance: Callable[[int], None] | None) -> int:
    """Copy from the start of ``src`` to ``dst`` until the end, or one byte past ``limit`` (a file that grew);
    returns the bytes copied."""
    kernel = sys.platform.startswith("linux")
    copied = 0
    while copied <= limit:
        want = min(_CHUNK, limit + 1 - copied)
        if kernel:
            try:
                n = os.sendfile(dst, src, copied, want)
            except OSError as e:  # a file system without sendfile support: copy through a buffer instead
                if copied or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                kernel = False
                continue
        else:
            data = os.read(src, want)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view):]
        if n == 0:
            break
        copied += n
        if advance is not None:
            advance(n)
    return copied
