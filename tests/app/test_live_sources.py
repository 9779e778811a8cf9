"""Live sources read through Qt: a video file played by QtMultimedia, the screen (whole, or a region picked on the
overlay) grabbed twice a second, and what a camera that goes away reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QPoint, QSize, Qt, QThread
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtMultimedia import QMediaDevices
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from glimpse.app import window as window_module
from glimpse.app.capture import screen
from glimpse.app.capture.cameras import Camera
from glimpse.app.capture.feed import FrameFeed
from glimpse.app.capture.live import LiveSource
from glimpse.app.capture.media import MediaSource, MediaThread, choose_format
from glimpse.app.sources import Sources
from glimpse.app.window import MainWindow
from glimpse.engine.errors import CaptureError
from tests.app.conftest import write_video
from tests.app.test_region_overlay import drag, patterned_shot


def _frames(feed: FrameFeed, count: int, timeout_s: float = 10.0) -> list[np.ndarray]:
    got: list[np.ndarray] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline and not feed.ended:
        frame = feed.take(timeout=0.1)
        if frame is not None:
            got.append(frame.pixels)
    return got


def test_a_video_plays_through_qt_multimedia(qtbot: QtBot, tmp_path: Path) -> None:
    path = write_video(tmp_path / "sweep.avi", frames=12, fps=24)
    sources = Sources()
    shown: list[tuple[int, ...]] = []
    sources.frame.connect(lambda: shown.append(sources.feed.latest().pixels.shape) if sources.feed else None)
    try:
        with qtbot.waitSignal(sources.live_started, timeout=10_000) as started:
            sources.open_video(path)
        assert started.args[0] == "Video: sweep.avi"
        with qtbot.waitSignal(sources.live_stopped, timeout=10_000) as stopped:
            pass
        assert stopped.args[0] == ""  # the end of a video is not an error
        assert shown and set(shown) == {(120, 160, 3)}
        assert sources.feed is None
    finally:
        assert sources.shutdown()


def test_the_feed_hands_qt_frames_over_in_order(qtbot: QtBot, tmp_path: Path) -> None:
    path = write_video(tmp_path / "sweep.avi", frames=12, fps=12)
    reference = []
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        reference.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int))
    media = MediaThread()
    source = media.video(path)
    assert source.thread() is not QThread.currentThread()  # the player lives on the media thread
    feed = FrameFeed(source.wait_ready, "sweep.avi")
    feed.start()
    try:
        frames: list[np.ndarray] = []
        qtbot.waitUntil(lambda: frames.extend(_frames(feed, 12, 0.05)) or feed.ended, timeout=10_000)
    finally:
        feed.close()
        assert feed.wait(5)
        assert media.stop(5)
    assert len(frames) >= 6  # 12 frames at 12 fps; the test takes them as fast as they come
    # Each frame is the closest to one of the file's frames, and they come in the file's order.
    matches = [int(np.argmin([np.abs(f.astype(int) - r).mean() for r in reference])) for f in frames]
    assert matches == sorted(matches) and len(set(matches)) == len(matches)
    assert all(np.abs(f.astype(int) - reference[m]).mean() < 6 for f, m in zip(frames, matches, strict=True))


def test_an_unreadable_video_says_so(qtbot: QtBot, tmp_path: Path) -> None:
    broken = tmp_path / "holiday.mp4"
    broken.write_bytes(b"this is not a video at all\n" * 100)
    sources = Sources()
    try:
        with qtbot.waitSignal(sources.live_stopped, timeout=15_000) as stopped:
            sources.open_video(broken)
        assert "holiday.mp4" in stopped.args[0] and "MP4, AVI, MKV or WebM" in stopped.args[0]
        with qtbot.waitSignal(sources.live_stopped, timeout=15_000) as stopped:
            sources.open_video(tmp_path / "gone.avi")
        assert "gone.avi does not exist" in stopped.args[0]
        assert sources.feed is None
    finally:
        assert sources.shutdown()


def _own_window_mask(window: MainWindow, shape: tuple[int, ...], *, origin: tuple[int, int],
                     scale: float) -> np.ndarray:
    """Which pixels of a picture whose top-left is logical ``origin`` show the window (frame included)."""
    g = window.frameGeometry()
    mask = np.zeros(shape[:2], dtype=bool)
    top, left = round((g.y() - origin[1]) * scale), round((g.x() - origin[0]) * scale)
    bottom, right = top + round(g.height() * scale), left + round(g.width() * scale)
    mask[max(0, top):max(0, bottom), max(0, left):max(0, right)] = True
    return mask


def test_the_whole_screen_as_a_live_source(qtbot: QtBot, window: MainWindow, monkeypatch: pytest.MonkeyPatch) -> None:
    shot, pixels = patterned_shot(1600, 1600, 2.0)  # the offscreen screen: 800 x 800 logical pixels at 200 %
    monkeypatch.setattr(screen, "grab", lambda _s: QPixmap(shot))
    window.toolbar.mode.setCurrentIndex(window.toolbar.mode.findData("ask"))  # no captions: only the feed
    index = window.toolbar.source.findText("Screen: whole screen")
    assert index > 0
    with qtbot.waitSignal(window.sources.live_started, timeout=10_000) as started:
        window.toolbar.source.setCurrentIndex(index)
        window.toolbar._source_activated(index)
    assert started.args[0] == "Screen: whole screen"
    assert window.toolbar.source.currentText() == "Screen: whole screen"
    feed = window.sources.feed
    assert feed is not None
    qtbot.waitUntil(lambda: feed.latest() is not None, timeout=5_000)
    latest = feed.latest()
    assert latest is not None and latest.pixels.shape == pixels.shape
    # Glimpse's own window is greyed out (the captions must not be about themselves); the rest is the screen.
    hidden = _own_window_mask(window, pixels.shape, origin=(0, 0), scale=2.0)
    assert 0 < hidden.sum() < hidden.size
    assert (latest.pixels[hidden] == 128).all() and np.array_equal(latest.pixels[~hidden], pixels[~hidden])

    black = QPixmap(1600, 1600)
    black.fill(QColor("black"))
    monkeypatch.setattr(screen, "grab", lambda _s: QPixmap(black))  # the desktop stops letting us read it
    with qtbot.waitSignal(window.sources.live_stopped, timeout=5_000) as stopped:
        pass
    assert "came back empty" in stopped.args[0]
    assert "came back empty" in window.messages.text()


def test_a_screen_region_as_a_live_source_gets_captions(qtbot: QtBot, window: MainWindow,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    shot, pixels = patterned_shot(1600, 1600, 2.0)
    monkeypatch.setattr(screen, "grab", lambda _s: QPixmap(shot))
    window.captions.interval.setValue(0.0)
    window.watch_screen("region", "Screen: a region…")
    qtbot.waitUntil(lambda: bool(window.sources.screen.overlays), timeout=5_000)
    assert not window.isVisible()  # out of its own picture while the region is picked
    overlay = window.sources.screen.overlays[0]
    overlay.setGeometry(0, 0, 800, 800)
    with qtbot.waitSignal(window.sources.live_started, timeout=5_000) as started:
        drag(overlay, QPoint(100, 50), QPoint(300, 250))
    assert started.args[0] == "Screen: a region…"
    assert window.isVisible() and window.settings.mode == "live"
    assert window.asking.picture is None  # a live region is not a screenshot to ask about
    feed = window.sources.feed
    assert feed is not None
    qtbot.waitUntil(lambda: feed.latest() is not None, timeout=5_000)
    latest = feed.latest()
    region = pixels[100:500, 200:600]
    assert latest is not None and latest.pixels.shape == region.shape
    hidden = _own_window_mask(window, region.shape, origin=(100, 50), scale=2.0)
    assert (latest.pixels[hidden] == 128).all() and np.array_equal(latest.pixels[~hidden], region[~hidden])
    qtbot.waitUntil(lambda: len(window.captions.entries) >= 1, timeout=30_000)
    assert window.captions.entries[0].text
    window.sources.stop_live()


def test_cancelling_a_live_region_leaves_no_source(qtbot: QtBot, window: MainWindow,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:

    shot, _ = patterned_shot(1600, 1600, 2.0)
    monkeypatch.setattr(screen, "grab", lambda _s: QPixmap(shot))
    window.toolbar.source.setCurrentIndex(window.toolbar.source.findText("Screen: a region…"))
    window.watch_screen("region", "Screen: a region…")
    qtbot.waitUntil(lambda: bool(window.sources.screen.overlays), timeout=5_000)
    with qtbot.waitSignal(window.sources.grab_finished, timeout=5_000):
        QTest.keyClick(window.sources.screen.overlays[0], Qt.Key.Key_Escape)
    assert window.sources.feed is None and window.isVisible()
    assert window.toolbar.source.currentIndex() == 0
    shot_taken: list[object] = []
    window.sources.still.connect(lambda *a: shot_taken.append(a))
    window.take_screenshot("region")  # the next region is a screenshot again, not a live source
    qtbot.waitUntil(lambda: bool(window.sources.screen.overlays), timeout=5_000)
    overlay = window.sources.screen.overlays[0]
    overlay.setGeometry(0, 0, 800, 800)
    with qtbot.waitSignal(window.sources.still, timeout=5_000):
        drag(overlay, QPoint(10, 10), QPoint(60, 60))
    assert window.sources.feed is None


class _Device(LiveSource):
    """A live source with a short stall limit, fed by hand."""

    stall_s = 0.3
    stalled = "{name} went quiet."


def test_a_quiet_or_disconnected_camera_is_reported(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _Device("Webcam")
    image = QImage(8, 6, QImage.Format.Format_RGB888)
    image.fill(0x336699)
    source._offer(image)
    frame = source.wait_ready(1.0).take(0.1)
    assert frame is not None and frame.pixels.shape == (6, 8, 3) and tuple(frame.pixels[0, 0]) == (0x33, 0x66, 0x99)
    assert source.take(0.1) is None and source.error is None  # quiet, but not for long yet
    time.sleep(0.35)
    assert source.take(0.05) is None
    assert source.ended and source.error == "Webcam went quiet."

    camera = MediaSource("USB webcam", lambda _source: None)  # never started: only its bookkeeping is tested
    camera._camera_id = "/dev/video4"
    monkeypatch.setattr(QMediaDevices, "videoInputs", staticmethod(lambda: []))
    camera._devices_changed()
    assert camera.ended and camera.error is not None and "USB webcam was disconnected" in camera.error
    for s in (source, camera):
        s.close()
        s.close()  # closing twice is harmless


def test_a_source_that_never_shows_a_picture_times_out() -> None:
    source = _Device("Capture card")
    with pytest.raises(CaptureError, match=r"Capture card showed no picture within 0\.2 seconds"):
        source.wait_ready(0.2)
    assert source.ended


def test_the_source_list_follows_cameras_and_keeps_what_plays(qtbot: QtBot, window: MainWindow, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    window.toolbar.mode.setCurrentIndex(window.toolbar.mode.findData("ask"))
    with qtbot.waitSignal(window.sources.live_started, timeout=10_000):
        window.sources.open_video(write_video(tmp_path / "long.avi", frames=200, fps=20))
    assert window.toolbar.source.currentText() == "Video: long.avi"
    monkeypatch.setattr(window_module, "list_cameras", lambda: ([Camera("New webcam", "/dev/video3")], ""))
    window._refresh_cameras()  # what QMediaDevices.videoInputsChanged calls when a camera is plugged in
    texts = [window.toolbar.source.itemText(i) for i in range(window.toolbar.source.count())]
    assert "Camera: New webcam" in texts and "No camera found" not in texts
    assert window.toolbar.source.currentText() == "Video: long.avi"  # still shows what is playing
    window.sources.stop_live()
    window._refresh_cameras()
    assert window.toolbar.source.currentIndex() == 0


def test_a_camera_is_asked_for_a_fast_picture_near_720p() -> None:

    class Format:
        def __init__(self, w: int, h: int, fps: float) -> None:
            self._size, self._fps = QSize(w, h), fps

        def resolution(self) -> QSize:
            return self._size

        def maxFrameRate(self) -> float:
            return self._fps

        def isNull(self) -> bool:
            return False

    formats = [Format(3840, 2160, 5), Format(1920, 1080, 5), Format(1920, 1080, 30), Format(1280, 720, 10),
               Format(640, 480, 30), Format(1280, 720, 30), Format(1280, 720, 60)]
    best = choose_format(formats)  # type: ignore[arg-type]
    assert best is formats[-1]  # 720p, and the faster of the two 720p formats
    slow_only = [Format(3840, 2160, 5), Format(1920, 1080, 7)]
    assert choose_format(slow_only) is slow_only[1]  # type: ignore[arg-type]  # nothing fast: the nearer size
    assert choose_format([]) is None


def test_command_line_captions_without_opencv_use_qt_multimedia(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The packaged app has no OpenCV: `glimpse caption --source VIDEO` then captures through QtMultimedia."""
    video = write_video(tmp_path / "clip.avi", frames=24, fps=12)
    script = ("import sys; sys.modules['cv2'] = None  # as in the bundle\n"
              "from glimpse.app.launcher import main\n"
              f"sys.exit(main(['caption', {str(tiny_model_dir)!r}, '--source', {str(video)!r}, '--count', '2', "
              "'--size', '256', '--threads', '1', '--jsonl']))\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    captions = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(captions) == 2 and all(c["text"] for c in captions)
    assert "needs OpenCV" not in done.stderr

    # Without the launcher's backend, the same command says what is missing instead of failing to import.
    script = script.replace("from glimpse.app.launcher import main", "from glimpse.engine.cli import main")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode != 0 and "needs OpenCV" in done.stderr and "Traceback" not in done.stderr


class _Camera(LiveSource):
    """A live source fed by hand that, like a camera, is never ended by silence (stall_s None)."""


def test_a_source_that_stops_sending_is_said_within_two_seconds_and_resumes(qtbot: QtBot,
                                                                             window: MainWindow) -> None:
    camera = _Camera("Webcam")
    image = QImage(64, 48, QImage.Format.Format_RGB888)
    image.fill(0x336699)
    sending = [True]

    def offer() -> None:  # 20 pictures a second while "plugged in"
        while sending[0] and not camera.ended:
            camera._offer(image.copy())
            time.sleep(0.05)

    feeder = threading.Thread(target=offer, daemon=True)
    feeder.start()
    window.captions.interval.setValue(0.0)
    window.sources._start_live(camera, "Camera: Webcam")
    feed = window.sources.feed
    assert feed is not None
    qtbot.waitUntil(lambda: len(window.captions.entries) >= 1, timeout=30_000)
    assert window.view.badge == "Live: Webcam"

    sending[0] = False  # the camera stops delivering, mid-caption
    stopped_at = time.monotonic()
    with qtbot.waitSignal(window.sources.live_waiting, timeout=5_000) as waiting:
        feeder.join()
    assert time.monotonic() - stopped_at < 2.0
    assert waiting.args[0].startswith("No picture from Webcam for ") and "waiting for it to come back" in \
        waiting.args[0]
    assert window.view.badge == waiting.args[0] and not window.view.image.isNull()  # the last picture stays
    kept = [e.text for e in window.captions.entries]
    qtbot.wait(700)  # still waiting, not ended: the feed, the window and the captions so far stay
    assert window.sources.feed is feed and not camera.ended
    assert [e.text for e in window.captions.entries][:len(kept)] == kept and kept

    sending[0] = True  # plugged back in: pictures again (of something else: unchanged ones are not captioned)
    image.fill(0xCC8844)
    feeder = threading.Thread(target=offer, daemon=True)
    with qtbot.waitSignal(window.sources.live_waiting, timeout=5_000,
                          check_params_cb=lambda note: note == "") as back:
        feeder.start()
    assert back.args[0] == ""
    qtbot.waitUntil(lambda: window.view.badge == "Live: Webcam", timeout=5_000)
    count = len(window.captions.entries)
    qtbot.waitUntil(lambda: len(window.captions.entries) > count, timeout=30_000)  # captions go on
    sending[0] = False
    window.sources.stop_live()
    feeder.join()
