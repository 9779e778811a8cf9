"""Live frames from QtMultimedia: a camera, or a video file played as one.

QtMultimedia decodes with the FFmpeg build that ships inside PySide6, so the app needs no OpenCV of its own (OpenCV
would add 155 MB to the packaged app). Capture and decoding run on QtMultimedia's threads; RGB conversion runs on the
feed's thread (``app.capture.live``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, QUrl
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

from app.capture.live import LiveSource

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


class MediaSource(LiveSource):
    """A ``QCamera`` or a ``QMediaPlayer`` (build with ``camera`` or ``video``, on the GUI thread)."""

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(name, parent)
        self._camera: QCamera | None = None
        self._camera_id = ""
        self._player: QMediaPlayer | None = None
        self._sink = QVideoSink(self)
        self._sink.videoFrameChanged.connect(self._frame)

    @classmethod
    def camera(cls, device: QCameraDevice, parent: QObject | None = None) -> MediaSource:
        source = cls(device.description() or "camera", parent)
        source.stall_s = 5.0
        source.stalled = ("The camera {name} stopped sending pictures (unplugged, or taken by another program?). "
                          "Choose it again under Source.")
        source._camera_id = device_id(device)
        camera = QCamera(device, source)
        chosen = choose_format(device.videoFormats())
        if chosen is not None:
            camera.setCameraFormat(chosen)
        session = QMediaCaptureSession(source)
        session.setCamera(camera)
        session.setVideoSink(source._sink)
        camera.errorOccurred.connect(source._camera_error)
        camera.activeChanged.connect(source._camera_active)
        devices = QMediaDevices(source)
        devices.videoInputsChanged.connect(source._devices_changed)
        source._camera = camera
        if not camera.isAvailable():
            source._finish(NO_BACKEND)
        else:
            camera.start()
        return source

    @classmethod
    def video(cls, path: str | Path, parent: QObject | None = None) -> MediaSource:
        path = Path(path)
        source = cls(path.name, parent)
        if not path.is_file():
            source._finish(f"{path} does not exist. Check the file was not moved or deleted, then open it again.")
            return source
        player = QMediaPlayer(source)
        player.setVideoSink(source._sink)
        player.errorOccurred.connect(source._player_error)
        player.mediaStatusChanged.connect(source._player_status)
        source._player = player
        if not player.isAvailable():
            source._finish(NO_BACKEND)
            return source
        player.setSource(QUrl.fromLocalFile(str(path)))
        player.play()  # at the file's own frame rate: the video plays as if it were a camera
        return source

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
