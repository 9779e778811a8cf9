"""Closing the window while work runs: it never destroys a running thread. Work that stops when asked ends within
a few seconds; work that cannot be interrupted is waited for with a dialog that says what it waits for. And the
next start deletes what a killed Glimpse left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from glimpse.app import closing
from glimpse.app import threads as app_threads
from glimpse.app import worker as app_worker
from glimpse.app.settings import Settings
from glimpse.app.widgets import model_manager
from glimpse.app.window import MainWindow
from glimpse.engine.errors import ModelFolderError
from glimpse.engine.models.store import Store
from glimpse.engine.progress import check_cancel
from tests.damaged import healthy_model


@pytest.fixture
def quick_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(closing, "GRACE_S", 0.3)


def test_closing_during_a_first_load_waits_visibly(qtbot: QtBot, settings: Settings, model_store: Store,
                                                   monkeypatch: pytest.MonkeyPatch, quick_grace: None) -> None:
    """llama.cpp and onnxruntime loads (and the first load's hashing) cannot be interrupted."""
    started, release = threading.Event(), threading.Event()

    def slow_load(*_a: Any, **_k: Any) -> Any:
        started.set()
        release.wait(60)
        raise ModelFolderError("The model went away.")

    monkeypatch.setattr(app_worker, "RunnerModel", slow_load)
    settings.model = "tiny"
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(started.is_set, timeout=10_000)

    window.close()
    assert window.isVisible()  # not closed: the model worker's QThread is still running
    assert "glimpse model worker" in app_threads.running()
    dialog = window.findChild(closing.ClosingDialog)
    assert dialog is not None and dialog.isVisible()
    assert "the model to finish loading" in dialog.labelText()

    release.set()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert app_threads.running() == []
    assert not dialog.isVisible()


def test_closing_during_a_long_manager_job_waits_visibly(qtbot: QtBot, settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch, quick_grace: None) -> None:
    """A conversion step runs for a while between two checks of its cancel flag."""
    store = Store(tmp_path / "empty")
    started, release = threading.Event(), threading.Event()
    seen_cancel: list[bool] = []

    def slow_import(_store: Store, _src: Any, **kw: Any) -> Path:
        started.set()
        release.wait(60)
        seen_cancel.append(kw["cancel"].is_set())
        raise ModelFolderError("Stopped.")

    monkeypatch.setattr(model_manager, "import_model", slow_import)
    window = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.manager is not None, timeout=5_000)
    assert window.manager is not None
    window.manager.import_folder(tmp_path)
    qtbot.waitUntil(started.is_set, timeout=10_000)

    window.close()
    dialog = window.findChild(closing.ClosingDialog)
    assert window.isVisible() and dialog is not None and "the import to stop" in dialog.labelText()
    window.close()  # closing again changes nothing while it waits
    assert window.isVisible()

    release.set()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10_000)
    assert seen_cancel == [True]  # the job was asked to stop
    assert app_threads.running() == []


def test_what_closing_waits_for_is_said_in_words() -> None:
    assert closing.waiting_for(["glimpse model worker"], "generating") == ["the answer being written to stop"]
    assert closing.waiting_for(["glimpse download fastvlm-0.5b", "glimpse media"], "idle") == [
        "the download or conversion of fastvlm-0.5b to stop", "the video to close"]
    assert closing.waiting_for([], "loading model") == []


def test_start_deletes_what_a_killed_glimpse_left(qtbot: QtBot, settings: Settings, tmp_path: Path) -> None:

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store = Store(tmp_path / "home")
    dead = healthy_model(store.models_dir / f".mine.partial-{child.pid}")
    an_hour_ago = time.time() - 3600
    for path in [*dead.iterdir(), dead]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    alive = healthy_model(store.models_dir / f".mine.import-{os.getpid()}")
    window = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(window)
    assert not dead.exists() and alive.exists()
    assert "Freed" in window.messages.text() and dead.name in window.messages.text()
    window.close()


def test_closing_during_the_first_loads_hashing_ends_at_once(qtbot: QtBot, settings: Settings,
                                                             model_store: Store,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 check of a first load is the long part that can be cut short: closing cancels it."""
    hashing = threading.Event()

    def hashing_load(_path: Any, *, cancel: threading.Event, **_k: Any) -> Any:

        hashing.set()
        while not cancel.wait(0.01):  # as sha256_file does between chunks
            pass
        check_cancel(cancel, "Loading the model")
        raise AssertionError("unreachable: the cancel event is set")

    monkeypatch.setattr(app_worker, "RunnerModel", hashing_load)
    settings.model = "tiny"
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(hashing.is_set, timeout=10_000)
    window.close()
    assert not window.isVisible()  # within the grace period, without the dialog
    assert window.findChild(closing.ClosingDialog) is None
    assert app_threads.running() == []


def test_closing_during_a_real_conversion_leaves_no_working_folder(qtbot: QtBot, settings: Settings,
                                                                   tmp_path: Path, tiny_checkpoint: Path) -> None:
    store = Store(tmp_path / "home")
    window = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.manager is not None, timeout=5_000)
    assert window.manager is not None
    window.manager.import_folder(tiny_checkpoint)  # a checkpoint folder: converted
    qtbot.waitUntil(lambda: any(p.name.startswith(".") for p in store.models_dir.glob("*")), timeout=30_000)

    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    assert app_threads.running() == []
    assert list(store.models_dir.iterdir()) == []  # cancelled: no model, no working folder


def test_closing_during_a_read_ahead(qtbot: QtBot, window: MainWindow, picture: Any) -> None:
    with qtbot.waitSignal(window.worker.state_changed, timeout=10_000,
                          check_params_cb=lambda state: state == app_worker.READING):
        window.set_still(picture, "a picture")  # read ahead while the question is typed
    window.close()
    assert not window.isVisible() and window.findChild(closing.ClosingDialog) is None
    assert app_threads.running() == []
