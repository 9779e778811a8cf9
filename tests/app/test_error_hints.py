"""The window never tells the user to type a command.

Engine errors carry advice for the command line (``hint``: ``--force``, ``glimpse models pull``...) and for the
window (``gui_hint``: the model manager, Download...). Each common failure is made for real here and its text as
the window shows it (``app.jobs.describe_error``) is checked: the window's advice is there, and nothing in it is
a flag or a command.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx2
import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from glimpse.app.jobs import Job, describe_error
from glimpse.app.window import MainWindow
from glimpse.engine.convert.install import import_model, pull_model
from glimpse.engine.errors import (
    ContextFullError,
    DiskFullError,
    DownloadError,
    GlimpseError,
    ImageError,
    ModelFolderError,
    ModelNotFoundError,
    OfflineError,
    OutputExistsError,
)
from glimpse.engine.models import catalog
from glimpse.engine.models.download import DownloadOptions, _translate, check_disk_space, download_model
from glimpse.engine.models.store import Store
from glimpse.engine.runtime.llm import check_gguf
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.preprocess import load_image
from tests.fakehub import dead_endpoint

# A flag (--force), a glimpse command (lower case: the app's name in prose is capitalised), a quoted command,
# or "run the command again".
CLI = re.compile(r"(?<![\w-])--[a-z]|\bglimpse [a-z]|`|\bthe command again\b")
ENTRY = catalog.lookup("fastvlm-0.5b")


def raised(fn: Callable[[], object], kind: type[GlimpseError] = GlimpseError) -> GlimpseError:
    with pytest.raises(kind) as info:
        fn()
    return info.value


def assert_fits_the_window(e: GlimpseError) -> str:
    text = describe_error(e)
    assert not CLI.search(text), text
    assert e.gui_hint and text == f"{e.message} {e.gui_hint}", text  # the window's advice is shown
    return text


def damaged_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    (copy / ".glimpse-verified").unlink(missing_ok=True)
    return copy


# -- missing or damaged models --------------------------------------------------------------------------------------

def test_model_not_installed(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = Store(tmp_path / "home")
    in_catalogue = raised(lambda: store.path("fastvlm-0.5b"), ModelNotFoundError)
    assert "glimpse models pull fastvlm-0.5b" in str(in_catalogue)  # the command line keeps its advice
    assert "model manager" in assert_fits_the_window(in_catalogue)
    assert "model manager" in assert_fits_the_window(raised(lambda: store.path("nope"), ModelNotFoundError))
    store.models_dir.mkdir(parents=True)
    (store.models_dir / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    assert "Installed: tiny." in assert_fits_the_window(raised(lambda: store.path("nope"), ModelNotFoundError))


def test_model_files_missing(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = damaged_copy(tiny_model_dir, tmp_path)
    (copy / "vision.onnx").unlink()
    assert "is missing" in assert_fits_the_window(raised(lambda: load_model(copy), ModelFolderError))
    (copy / "model.json").unlink()
    e = raised(lambda: load_model(copy), ModelFolderError)
    assert "glimpse convert" in str(e)
    assert "not a Glimpse model folder" in assert_fits_the_window(e)


def test_model_corrupt(tmp_path: Path, tiny_model_dir: Path) -> None:
    copy = damaged_copy(tiny_model_dir, tmp_path)
    gguf = copy / "llm.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0x01
    gguf.write_bytes(bytes(data))
    assert "sha256 does not match" in assert_fits_the_window(raised(lambda: load_model(copy), ModelFolderError))
    gguf.write_bytes(bytes(data[: len(data) // 2]))
    assert "is truncated" in assert_fits_the_window(raised(lambda: check_gguf(gguf), ModelFolderError))
    (copy / "model.json").write_text("{not json", encoding="utf-8")
    assert "corrupt" in assert_fits_the_window(raised(lambda: load_model(copy), ModelFolderError))


def test_model_already_installed(tmp_path: Path, tiny_model_dir: Path) -> None:
    store = Store(tmp_path / "home")
    import_model(store, tiny_model_dir)
    again = raised(lambda: import_model(store, tiny_model_dir), OutputExistsError)
    assert "--force" in str(again)
    assert "already installed" in assert_fits_the_window(again)
    shutil.copytree(tiny_model_dir, store.models_dir / ENTRY.name)
    assert "already installed" in assert_fits_the_window(raised(lambda: pull_model(store, ENTRY),
                                                                OutputExistsError))


# -- asking ---------------------------------------------------------------------------------------------------------

def test_context_full(tiny_model_dir: Path) -> None:
    image = np.full((96, 128, 3), 128, np.uint8)
    with load_model(tiny_model_dir, n_ctx=512, threads=1) as model:
        conv = model.conversation(image, size=256)
        e = raised(lambda: conv.ask("Too long?", max_tokens=500), ContextFullError)
        assert "n_ctx" in str(e)
        text = assert_fits_the_window(e)
        assert "n_ctx" not in text and "max tokens" not in text
        model.llm.rewind(0)
        assert_fits_the_window(raised(lambda: model.llm.eval_tokens([0] * 600), ContextFullError))


def test_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a picture", encoding="utf-8")
    assert "not an image" in assert_fits_the_window(raised(lambda: load_image(bad), ImageError))


# -- downloads ------------------------------------------------------------------------------------------------------

def test_offline_download(tmp_path: Path) -> None:
    offline = raised(lambda: download_model(ENTRY, tmp_path / "a", options=DownloadOptions(offline=True)),
                     OfflineError)
    assert "glimpse models pull" in str(offline)
    assert "Import folder" in assert_fits_the_window(offline)
    options = DownloadOptions(endpoint=dead_endpoint(), offline=False, retries=0, retry_wait=0.0)
    unreachable = raised(lambda: download_model(ENTRY, tmp_path / "b", options=options), OfflineError)
    assert "Could not connect" in assert_fits_the_window(unreachable)


@pytest.mark.parametrize("failure", [
    httpx2.ReadTimeout("stalled"),
    httpx2.RemoteProtocolError("broke"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EACCES, "Permission denied"),
    RuntimeError("something else"),
], ids=["stalled", "broken", "disk-full", "unwritable", "other"])
def test_download_failures(failure: Exception) -> None:
    e = _translate(failure, ENTRY, "https://hub.example", "main")
    assert isinstance(e, DownloadError | DiskFullError)
    assert_fits_the_window(e)


def test_no_room_for_the_download(tmp_path: Path) -> None:
    e = raised(lambda: check_disk_space(tmp_path, 1 << 60, ENTRY), DiskFullError)
    assert "download again" in assert_fits_the_window(e)


# -- the safety net and the window -----------------------------------------------------------------------------------

def test_advice_for_a_terminal_is_never_shown() -> None:
    assert describe_error(GlimpseError("It failed.", "Pass --force to replace it.")) == "It failed."
    assert describe_error(GlimpseError("It failed.", "Run `glimpse models pull x`.")) == "It failed."
    assert describe_error(GlimpseError("It failed.", "Pass --force.", gui_hint="Remove it first.")) == \
        "It failed. Remove it first."
    assert describe_error(GlimpseError("It failed.", "Try again.")) == "It failed. Try again."


def test_window_says_what_to_do_for_a_model_that_is_not_installed(window: MainWindow) -> None:
    window.use_model("fastvlm-0.5b")
    text = window.messages.text()
    assert "No model called 'fastvlm-0.5b' is installed" in text and "model manager" in text
    assert not CLI.search(text), text


def test_a_failed_job_shows_the_windows_advice(qtbot: QtBot) -> None:
    """Model manager downloads, imports and removals, and opening image files, all report through a Job."""
    def fail(_progress: object, _cancel: object) -> None:
        raise OfflineError("Could not connect.", "Run `glimpse models pull x` again.", gui_hint="Try again later.")

    job = Job(fail, "fails")
    with qtbot.waitSignal(job.failed, timeout=5_000) as failed:
        job.start()
    assert failed.args == ["Could not connect. Try again later."]
    job.wait()
