"""Fixtures for the app tests: settings in tmp_path, a generated video, the tiny model, and a check that no
thread outlives its test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QStandardPaths
from pytestqt.qtbot import QtBot

from glimpse.app import threads as app_threads
from glimpse.app.settings import Settings
from glimpse.app.window import MainWindow
from glimpse.engine.models.store import Store


def _left_running(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t not in before and t.is_alive()
            # Threads Python makes up for Qt's own threads when they run Python code: they never "end".
            and not isinstance(t, threading._DummyThread)
            # The fake Hub's per-connection handlers end when the HTTP client closes its pooled connection.
            and "process_request_thread" not in t.name]


@pytest.fixture(autouse=True)
def _no_thread_left_running(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Autouse, so it is set up before (and torn down after) every other fixture: windows are closed first."""
    # Anything that reaches for the user's QSettings or folders lands in tmp instead.
    QStandardPaths.setTestModeEnabled(True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    for t in _left_running(before):
        t.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in _left_running(before)] + app_threads.running()
    assert not left, f"threads left running after the test: {left}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.at(tmp_path / "settings" / "glimpse.ini")


def write_video(path: Path, frames: int = 16, fps: float = 16.0, size: tuple[int, int] = (160, 120)) -> Path:
    """An MJPEG AVI of a bar sweeping across a gradient: every frame differs enough to be captioned."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write MJPEG here"
    for i in range(frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
        x = (i * w // frames) % w
        frame[:, x:x + w // 6] = (40 + 13 * i % 200, 200, 255 - 9 * i % 255)
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "sweep.avi")


@pytest.fixture
def picture() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)


@pytest.fixture
def model_store(tmp_path: Path, tiny_model_dir: Path) -> Store:
    """A model store holding the tiny model as "tiny" (a link: the session's converted folder is reused)."""
    store = Store(tmp_path / "home")
    store.models_dir.mkdir(parents=True)
    (store.models_dir / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    return store


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model in the window's own process (GLIMPSE_RUNNER=0), for a test that reaches into the engine's objects
    (Model, Conversation) with monkeypatch; list it before ``window``. The runner process has its own tests."""
    monkeypatch.setenv("GLIMPSE_RUNNER", "0")


@pytest.fixture
def window(qtbot: QtBot, settings: Settings, model_store: Store) -> Iterator[MainWindow]:
    """The main window with the tiny model loaded (one thread: the two CPU cores are shared with other work)."""
    settings.model, settings.threads = "tiny", 1
    w = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.worker.model_ready, timeout=20_000):
        w.show()
    yield w
    w.close()
