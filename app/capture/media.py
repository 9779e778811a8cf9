"""Live frames from QtMultimedia: a camera, or a video file played as one, on a thread of their own.

QtMultimedia decodes with the FFmpeg build that ships inside PySide6, so the app needs no OpenCV of its own (OpenCV
would add 155 MB to the packaged app). Each source's QCamera or QMediaPlayer and its QVideoSink live on the media
thread (``MediaThread``), never the GUI thread: opening or stopping a camera can block for a second on some systems,
and on Linux the camera's frames are read where the camera lives. RGB conversion runs on the feed's thread
(``app.capture.live``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, QUrl, Signal
from PySide6.QtMultimedia import (
    QCamera,
    QCameraDevice,
    QCameraFormat,
    QMediaCaptureSession,
    QMediaDevices,
    QMediaPlayer,
    QVideoFrame,
    QVideoSink,
)

from glimpse.app.capture.live import LiveSource
from glimpse.app.qtcompat import emit
from glimpse.app.threads import new_qthread

NO_BACKEND = ("Cameras and videos cannot be used here: Qt Multimedia's FFmpeg plugin did not load. Reinstall "
              "Glimpse; screenshots, pasted and opened images still work.")
TARGET_PIXELS = 1280 * 720  # the model reads at most 1024 px: a larger picture only costs decoding and conversion
MIN_FPS = 15.0


def device_id(device: QCameraDevice) -> str:
    return bytes(device.id().data()).decode("utf-8", errors="replace")


def choose_format(formats: Sequence[QCameraFormat]) -> QCameraFormat | None:
    """The camera format to ask for: one that runs at 15 fps or more (a camera's largest format is often a slow
    one), with the picture size closest to 1280x720; None to leave the camera's default."""
    def score(f: QCameraFormat) -> tuple[bool, float, float]:
        size = f.resolution()
        pixels = max(1, size.width() * size.height())
        return f.maxFrameRate() >= MIN_FPS, -abs(math.log(pixels / TARGET_PIXELS)), f.maxFrameRate()

    usable = [f for f in formats if not f.isNull() and f.resolution().width() > 0]
    return max(usable, key=score) if usable else None


class _Quitter(QObject):
    """Ends the media thread's event loop from inside it, after every event posted before (sources' shut-downs)."""

    requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.requested.connect(self._quit, Qt.ConnectionType.QueuedConnection)

    def _quit(self) -> None:
        thread = self.thread()
        self.deleteLater()
        thread.quit()


class MediaThread:
    """The thread media sources live on, started with the first one; ``stop`` closes them and joins it."""

    def __init__(self) -> None:
        self._thread: QThread | None = None
        self._sources: list[MediaSource] = []  # kept referenced until the thread ends (each deletes itself there)
        # A thread asked to stop that had not ended when ``stop`` returned, with the object that quits it: a
        # running QThread whose last reference goes is destroyed and aborts the process.
        self._stopping: list[tuple[QThread, QObject]] = []

    def camera(self, device: QCameraDevice) -> MediaSource:
        return self._adopt(MediaSource.for_camera(device))

    def video(self, path: str | Path) -> MediaSource:
        return self._adopt(MediaSource.for_video(Path(path)))

    def _adopt(self, source: MediaSource) -> MediaSource:
        if self._thread is None:
            self._thread = new_qthread("glimpse media")
            self._thread.start()
        self._sources.append(source)
        source.start_on(self._thread)
        return source

    def stop(self, timeout_s: float = 6.0) -> bool:
        """Close every source, let each stop its device on the media thread, then end the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        for source in self._sources:
            source.close()  # queued to the media thread, ahead of the quit below
        quitter = _Quitter()
        quitter.moveToThread(thread)
        emit(quitter.requested)
        ok = thread.wait(int(timeout_s * 1000))
        self._stopping = [(t, q) for t, q in self._stopping if t.isRunning()]
        if ok:
            self._sources = []
        else:
            self._stopping.append((thread, quitter))
        return ok


class MediaSource(LiveSource):
    """A ``QCamera`` or a ``QMediaPlayer`` feeding a ``QVideoSink``, all made on the media thread."""

    _start_requested = Signal()

    def __init__(self, name: str, build: Callable[[MediaSource], None]) -> None:
        super().__init__(name)  # no parent: it moves to the media thread
        self._build = build
        self._camera: QCamera | None = None
        self._camera_id = ""
        self._player: QMediaPlayer | None = None
        self._sink: QVideoSink | None = None
        self._start_requested.connect(self._start, Qt.ConnectionType.QueuedConnection)

    @classmethod
    def for_camera(cls, device: QCameraDevice) -> MediaSource:
        source = cls(device.description() or "camera", lambda s: s._open_camera(device))
        # A camera that goes quiet is waited for, not ended: the feed says so after a moment (FrameFeed.quiet_s)
        # and goes on when pictures come back; one that is unplugged ends (_devices_changed).
        source._camera_id = device_id(device)
        return source

    @classmethod
    def for_video(cls, path: Path) -> MediaSource:
        return cls(path.name, lambda s: s._open_video(path))

    def start_on(self, thread: QThread) -> None:
        self.moveToThread(thread)
        emit(self._start_requested)

    # -- media thread ---------------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._sink = QVideoSink(self)
        self._sink.videoFrameChanged.connect(self._frame)
        self._build(self)

    def _open_camera(self, device: QCameraDevice) -> None:
        assert self._sink is not None
        camera = QCamera(device, self)
        chosen = choose_format(device.videoFormats())
        if chosen is not None:
            camera.setCameraFormat(chosen)
        session = QMediaCaptureSession(self)
        session.setCamera(camera)
        session.setVideoSink(self._sink)
        camera.errorOccurred.connect(self._camera_error)
        camera.activeChanged.connect(self._camera_active)
        devices = QMediaDevices(self)
        devices.videoInputsChanged.connect(self._devices_changed)
        self._camera = camera
        if not camera.isAvailable():
            self._finish(NO_BACKEND)
        else:
            camera.start()

    def _open_video(self, path: Path) -> None:
        assert self._sink is not None
        if not path.is_file():
            self._finish(f"{path} does not exist. Check the file was not moved or deleted, then open it again.")
            return
        player = QMediaPlayer(self)
        player.setVideoSink(self._sink)
        player.errorOccurred.connect(self._player_error)
        player.mediaStatusChanged.connect(self._player_status)
        self._player = player
        if not player.isAvailable():
            self._finish(NO_BACKEND)
            return
        player.setSource(QUrl.fromLocalFile(str(path)))
        player.play()  # at the file's own frame rate: the video plays as if it were a camera

    def _frame(self, frame: QVideoFrame) -> None:
        if frame.isValid():
            self._offer(QVideoFrame(frame))  # a reference to the decoded buffer, not a copy

    def _camera_error(self, _error: QCamera.Error, text: str) -> None:
        self._finish(f"The camera {self.name} failed: {text or 'no reason given'}. Check it is connected, allowed for "
                     "this app and not in use by another program, then choose it again.")

    def _camera_active(self, active: bool) -> None:
        if not active:
            self._finish(f"The camera {self.name} stopped. Check it is still connected, then choose it again.")

    def _devices_changed(self) -> None:
        if self._camera_id not in {device_id(d) for d in QMediaDevices.videoInputs()}:
            self._finish(f"The camera {self.name} was disconnected. Plug it in again, then choose it under Source.")

    def _player_error(self, _error: QMediaPlayer.Error, text: str) -> None:
        self._finish(f"{self.name} cannot be played ({text or 'unknown error'}). Use an MP4, AVI, MKV or WebM video.")

    def _player_status(self, status: QMediaPlayer.MediaStatus) -> None:
        if status == QMediaPlayer.MediaStatus.InvalidMedia:
            self._finish(f"{self.name} cannot be read as a video. Use an MP4, AVI, MKV or WebM file.")
        elif status == QMediaPlayer.MediaStatus.EndOfMedia:
            self._finish(None)

    def _stop(self) -> None:
        if self._camera is not None:
            self._camera.stop()
        if self._player is not None:
            self._player.stop()
