"""Importing a model folder copies the regular files its model.json lists, hashing the bytes it writes; links,
special files, extra files and the source's verification stamp never come along."""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from glimpse.engine.convert.install import import_model
from glimpse.engine.errors import Cancelled, ModelFolderError, OutputExistsError
from glimpse.engine.models.model_folder import verify
from glimpse.engine.models.store import Store
from glimpse.engine.progress import Progress
from tests.damaged import healthy_model

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="links and FIFOs need POSIX")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return healthy_model(tmp_path / "usb" / "model", name="mine")


def in_thread(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Run ``fn`` with a time limit: a copy that opens a FIFO would block forever."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed back to the test
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the import hung"
    return result[0]


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in store.models_dir.iterdir()) if store.models_dir.exists() else []


def test_import_copies_listed_files_only(store: Store, src: Path) -> None:
    (src / "README.txt").write_text("notes", encoding="utf-8")
    (src / ".glimpse-verified").write_text("{}", encoding="utf-8")
    out = import_model(store, src)
    assert sorted(p.name for p in out.iterdir()) == ["NOTICE", "llm.gguf", "model.json", "vision.onnx"]
    verify(out)
    assert leftovers(store) == ["mine"]


def test_verified_stamp_is_not_copied(store: Store, src: Path) -> None:
    """The stamp lets a load skip hashing; a copied one would vouch for bytes nobody hashed in the new folder."""
    (src / ".glimpse-verified").write_text('{"llm.gguf": [400, 0]}', encoding="utf-8")
    out = import_model(store, src)
    assert not (out / ".glimpse-verified").exists()


@posix_only
def test_listed_file_that_is_a_link_out_of_the_folder_is_refused(store: Store, src: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((src / "llm.gguf").read_bytes())  # same size and hash: only the link is wrong
    (src / "llm.gguf").unlink()
    (src / "llm.gguf").symlink_to(outside)
    # Either check refuses it: the name resolves out of the folder, or the entry is a link, not a regular file.
    with pytest.raises(ModelFolderError, match=r"llm\.gguf( is not a regular file|', which leads out of)"):
        import_model(store, src)
    assert leftovers(store) == []


@posix_only
def test_listed_fifo_is_refused_without_blocking(store: Store, src: Path) -> None:
    (src / "NOTICE").unlink()
    os.mkfifo(src / "NOTICE")
    error = in_thread(lambda: import_model(store, src))
    assert isinstance(error, ModelFolderError) and "NOTICE is not a regular file" in str(error)
    assert leftovers(store) == []


@posix_only
def test_unlisted_links_and_special_files_are_left_behind(store: Store, src: Path, tmp_path: Path) -> None:
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key").write_text("secret", encoding="utf-8")
    (src / "extra").symlink_to(tmp_path / "private", target_is_directory=True)
    os.mkfifo(src / "pipe")
    out = in_thread(lambda: import_model(store, src))
    assert isinstance(out, Path), out
    assert sorted(p.name for p in out.iterdir()) == ["NOTICE", "llm.gguf", "model.json", "vision.onnx"]


def test_a_file_changed_during_the_copy_is_caught(store: Store, src: Path) -> None:
    """The bytes written are the bytes hashed: a check of the source before copying would miss this."""
    flipped: list[bool] = []

    def tamper(_p: Progress) -> None:
        if not flipped:  # after vision.onnx, before llm.gguf is copied; same size, same times
            path = src / "llm.gguf"
            info = path.stat()
            path.write_bytes(b"EVIL" * 100)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
            flipped.append(True)

    with pytest.raises(ModelFolderError, match=r"llm\.gguf is corrupt"):
        import_model(store, src, progress=tamper)
    assert flipped and leftovers(store) == []


def test_cancelled_import_leaves_nothing(store: Store, src: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        import_model(store, src, cancel=cancel)
    assert leftovers(store) == []


def test_importing_over_an_installed_model_needs_force(store: Store, src: Path) -> None:
    import_model(store, src)
    with pytest.raises(OutputExistsError, match="already installed"):
        import_model(store, src)
    (src / "NOTICE").write_bytes(b"x")  # now damaged: a forced import keeps the installed copy
    with pytest.raises(ModelFolderError):
        import_model(store, src, force=True)
    verify(store.models_dir / "mine")
    assert leftovers(store) == ["mine"]


def test_import_without_kernel_copy(store: Store, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File systems without sendfile (and other systems) copy through a buffer, with the same checks."""

    def unsupported(*_a: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", unsupported, raising=False)
    out = import_model(store, src)
    verify(out)
    assert (out / "llm.gguf").read_bytes() == (src / "llm.gguf").read_bytes()
