"""Failures show a sentence in the window and never take it down: no camera, permission denied, a camera that
stops, a model that cannot load, an exception in the worker, an unreadable image, no screen capture."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QPixmap
from PySide6.QtMultimedia import QMediaDevices
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from glimpse.app import window as app_window
from glimpse.app.capture import screen
from glimpse.app.capture.cameras import Camera, find_device, list_cameras
from glimpse.app.capture.feed import FrameFeed
from glimpse.app.settings import Settings
from glimpse.app.window import MainWindow
from glimpse.engine.models.store import Store
from glimpse.engine.runtime.caption import Frame
from glimpse.engine.runtime.model import Model


def test_no_camera(qtbot: QtBot, window: MainWindow) -> None:
    with qtbot.waitSignal(window.sources.live_stopped, timeout=10_000):
        window.choose_camera(Camera("Missing camera", "/dev/video99"))
    assert "The camera Missing camera is not connected" in window.messages.text()
    assert window.sources.feed is None


def test_camera_permission_denied(qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QApplication, "checkPermission", lambda self, p: Qt.PermissionStatus.Denied)
    window.choose_camera(Camera("Webcam", "/dev/video0"))
    assert "not allowed to use the camera" in window.messages.text()
    assert window.sources.feed is None


def test_camera_permission_asked_first(qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([Qt.PermissionStatus.Undetermined, Qt.PermissionStatus.Granted])
    asked: list[object] = []
    monkeypatch.setattr(QApplication, "checkPermission", lambda self, p: next(answers))
    monkeypatch.setattr(QApplication, "requestPermission",
                        lambda self, p, context, answered: (asked.append(p), answered(p)))
    with qtbot.waitSignal(window.sources.live_stopped, timeout=10_000):
        window.choose_camera(Camera("Missing camera", "/dev/video99"))  # allowed: then it is opened (and not found)
    assert len(asked) == 1
    assert "The camera Missing camera is not connected" in window.messages.text()


class _UnpluggedCamera:
    """Sends a few frames, then reports what the engine reports for a camera that stopped sending frames."""

    name = "#7"
    dropped = 0

    def __init__(self, frames: int) -> None:
        self._left = frames
        self._closed = threading.Event()

    def take(self, timeout: float | None = None) -> Frame | None:
        if self._left <= 0:
            return None
        self._left -= 1
        time.sleep(0.02)
        rng = np.random.default_rng(self._left)
        return Frame(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), time.time(), 10 - self._left)

    @property
    def ended(self) -> bool:
        return self._left <= 0

    @property
    def error(self) -> str | None:
        return "The camera #7 stopped sending frames (unplugged or in use?)." if self._left <= 0 else None

    def close(self) -> None:
        self._closed.set()


def test_camera_unplugged_while_captioning(qtbot: QtBot, window: MainWindow) -> None:
    camera = _UnpluggedCamera(frames=10)
    window.captions.interval.setValue(0.0)
    with qtbot.waitSignal(window.sources.live_stopped, timeout=20_000) as stopped:
        window.sources._start_feed(FrameFeed(lambda: camera, "fake camera", window.sources), "Camera: fake")
    assert "stopped sending frames" in stopped.args[0]
    qtbot.waitUntil(lambda: not window.captions.running, timeout=10_000)
    assert "stopped sending frames" in window.messages.text()
    assert camera._closed.is_set()


def test_model_load_failure(qtbot: QtBot, settings: Settings, tmp_path: Path, tiny_model_dir: Path) -> None:
    store = Store(tmp_path / "home")
    damaged = store.models_dir / "damaged"
    shutil.copytree(tiny_model_dir, damaged)
    (damaged / ".glimpse-verified").unlink(missing_ok=True)
    with (damaged / "llm.gguf").open("r+b") as f:  # same size, different bytes: only the hash check sees it
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    settings.model, settings.threads = "damaged", 1
    window = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.worker.model_failed, timeout=20_000):
        window.show()
    assert "could not be loaded" in window.messages.text() and "llm.gguf" in window.messages.text()
    assert window.messages._action.text() == "Manage models"
    assert window.status.model.text() == "Model: none"
    window.close()


def test_exception_in_the_worker(in_process: None, qtbot: QtBot, window: MainWindow, picture: np.ndarray,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Model, "encode_image", boom)
    window.set_still(picture, "a picture")
    window.chat.input.setText("What is it?")
    with qtbot.waitSignal(window.worker.failed, timeout=10_000):
        window.chat.send_button.click()
    assert "RuntimeError: boom" in window.messages.text()
    assert not window.chat.busy
    monkeypatch.undo()
    window.settings.image_size = 256
    window.chat.input.setText("And now?")
    with qtbot.waitSignal(window.worker.answered, timeout=20_000):
        window.chat.send_button.click()  # the same picture, asked again, works
    assert len(window.chat.turns) == 1


def test_unreadable_image(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a picture", encoding="utf-8")
    with qtbot.waitSignal(window.sources.failed, timeout=10_000):
        window.sources.open_file(bad)
    assert "not an image Glimpse can read" in window.messages.text()


def test_asking_without_a_picture_says_what_to_do(window: MainWindow) -> None:
    window.set_mode("ask")
    window.chat.input.setText("Hello?")
    window.chat.send_button.click()
    assert "no picture to ask about" in window.messages.text()
    assert not window.chat.busy


def test_wayland_offers_paste(window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_window, "unavailable_reason", lambda: "Wayland says no.")
    window.take_screenshot("region")
    assert window.messages.text() == "Wayland says no."
    assert window.messages._action.text() == "Paste an image"


def test_blank_screen_capture_is_reported(qtbot: QtBot, window: MainWindow,
                                          monkeypatch: pytest.MonkeyPatch) -> None:

    def black(_s: object) -> QPixmap:
        pixmap = QPixmap(64, 48)
        pixmap.fill(Qt.GlobalColor.black)
        return pixmap

    monkeypatch.setattr(screen, "grab", black)
    with qtbot.waitSignal(window.sources.failed, timeout=5_000):
        window.take_screenshot("desktop")
    assert "came back empty" in window.messages.text()
    assert window.isVisible()  # shown again after hiding for the grab


def test_corrupt_settings_fall_back_with_a_notice(qtbot: QtBot, tmp_path: Path, model_store: Store) -> None:
    path = tmp_path / "glimpse.ini"
    path.write_text("[General]\ninterval=soon\npresets=[{\"name\": 3}]\nmode=sideways\nthreads=1\n",
                    encoding="utf-8")
    settings = Settings.at(path)
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    assert settings.interval == 1.0 and settings.mode == "live" and len(settings.presets) == 5
    assert "not valid" in window.messages.text()
    window.close()


def test_camera_names_and_ids(monkeypatch: pytest.MonkeyPatch) -> None:

    class Device:
        def __init__(self, device_id: bytes, name: str) -> None:
            self._id, self._name = device_id, name

        def id(self) -> QByteArray:
            return QByteArray(self._id)

        def description(self) -> str:
            return self._name

    monkeypatch.setattr(QMediaDevices, "videoInputs", staticmethod(lambda: [
        Device(b"/dev/video2", "USB webcam"), Device(b"\\\\?\\usb#vid_046d", "")]))
    cameras, note = list_cameras()
    assert note == ""
    assert cameras == [Camera("USB webcam", "/dev/video2"), Camera("Camera 2", "\\\\?\\usb#vid_046d")]
    found = find_device(cameras[1])
    assert found is not None and found.description() == ""
    assert find_device(Camera("USB webcam", "/dev/video0")) is None  # the same name on another node is not it


def test_no_camera_is_said_in_the_list(window: MainWindow) -> None:
    window.toolbar.set_cameras([])
    texts = [window.toolbar.source.itemText(i) for i in range(window.toolbar.source.count())]
    assert texts[:3] == ["No live source", "No camera found", "Video file…"]
    assert texts[3:] == ["Screen: whole screen", "Screen: a region…"]  # offscreen Qt has one screen
    window.toolbar.set_cameras([Camera("Webcam", "/dev/video0")])
    assert window.toolbar.source.itemText(1) == "Camera: Webcam"


def test_without_qt_multimedia_the_window_still_works(qtbot: QtBot, settings: Settings, model_store: Store,
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Linux system without PulseAudio's client library cannot load Qt Multimedia: the window says so, and
    screenshots, files and pasting still work."""
    monkeypatch.setitem(sys.modules, "PySide6.QtMultimedia", None)  # import now raises ImportError
    settings.model, settings.threads = "tiny", 1
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.worker.model_ready, timeout=20_000):
        window.show()
    assert "Qt Multimedia cannot load" in window.toolbar.source.toolTip()
    with qtbot.waitSignal(window.sources.live_stopped, timeout=10_000) as stopped:
        window.sources.open_video(tmp_path / "clip.avi")
    assert "Cameras and videos are unavailable" in stopped.args[0]
    picture = np.zeros((40, 60, 3), np.uint8)
    window.set_still(picture, "a picture")
    window.chat.input.setText("What is it?")
    with qtbot.waitSignal(window.worker.answered, timeout=20_000) as answered:
        window.chat.send_button.click()
    assert answered.args[0].finish_reason in ("stop", "length")
    window.close()
