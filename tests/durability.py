"""A recorder of fsyncs and renames, to check that what a rename publishes reached the disk before it.

Linux only: an fsync is attributed to a path through /proc/self/fd.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")


@dataclass
class SyncLog:
    events: list[tuple[str, str, str]] = field(default_factory=list)  # ("fsync", path, "") | ("rename", src, dst)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> SyncLog:
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
            real_fsync(fd)

        def replace(src: str | Path, dst: str | Path, *a: object, **k: object) -> None:
            self.events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            real_replace(src, dst, *a, **k)  # type: ignore[arg-type]

        def rename(src: str | Path, dst: str | Path, *a: object, **k: object) -> None:
            self.events.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            real_rename(src, dst, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        return self

    def published(self, final: Path) -> tuple[int, str]:
        """The index of the last rename onto ``final`` and its source."""
        target = os.path.abspath(final)
        for i in range(len(self.events) - 1, -1, -1):
            kind, src, dst = self.events[i]
            if kind == "rename" and dst == target:
                return i, src
        raise AssertionError(f"nothing was renamed onto {final}: {self.events[-10:]}")

    def synced_between(self, path: str, start: int, end: int) -> bool:
        return any(k == "fsync" and p == path for k, p, _ in self.events[start:end])

    def assert_durable(self, final: Path) -> None:
        """``final`` (a file, or a folder and every regular file in it) was synced under its temporary name before
        the rename, and its parent folder after it."""
        i, src = self.published(final)
        if final.is_dir():
            for path in final.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    before = os.path.join(src, os.path.relpath(path, final))
                    assert self.synced_between(before, 0, i), f"{before} was not synced before the rename"
        assert self.synced_between(src, 0, i), f"{src} was not synced before it was renamed to {final}"
        parent = os.path.abspath(final.parent)
        assert self.synced_between(parent, i + 1, len(self.events)), f"{parent} was not synced after the rename"
