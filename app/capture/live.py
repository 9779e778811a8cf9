"""The shared part of the app's live sources (cameras, videos and the screen, all driven by Qt on the GUI thread).

Qt hands each new picture over on the GUI thread, where it is only kept (a reference: a ``QVideoFrame`` or a
``QImage``, no copy and no conversion). The feed's thread takes the newest and converts it to RGB there
(``app.capture.feed.FrameFeed``), so pictures nobody has time for are never converted and the window never waits.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

from glimpse.app.images import from_qimage
from glimpse.app.qtcompat import emit
from glimpse.engine import CaptureError, Frame


class _VideoFrame(Protocol):  # QtMultimedia's QVideoFrame, without importing QtMultimedia (see app.capture.cameras)
    def toImage(self) -> QImage: ...


Picture = QImage | _VideoFrame
OPEN_TIMEOUT_S = 10.0  # a source that shows no picture within this is reported, not waited on for ever


class LiveSource(QObject):
    """A ``FrameSource`` fed by Qt on the GUI thread. Subclasses call ``_offer`` with each new picture and
    ``_finish`` when the source ends (with a sentence when it failed), and stop their Qt objects in ``_stop``.

    ``wait_ready``, ``take``, ``close``, ``ended`` and ``error`` may be used from any thread."""

    _close_requested = Signal()
    stall_s: float | None = None  # a live device that sends nothing for this long has gone (None: never checked)
    stalled = "{name} stopped sending pictures."

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.dropped = 0
        self._cond = threading.Condition()
        self._picture: Picture | None = None
        self._picture_at = 0.0
        self._last = time.monotonic()
        self._count = 0
        self._ended = False
        self._closed = False
        self._error: str | None = None
        self._close_requested.connect(self._shut, Qt.ConnectionType.QueuedConnection)

    # -- GUI thread -----------------------------------------------------------------------------------------------

    def _offer(self, picture: Picture) -> None:
        with self._cond:
            if self._ended:
                return
            if self._picture is not None:
                self.dropped += 1
            self._picture = picture
            self._picture_at = time.time()
            self._last = time.monotonic()
            self._cond.notify_all()

    def _finish(self, error: str | None) -> None:
        with self._cond:
            if not self._ended and error and self._error is None:
                self._error = error
            self._ended = True
            self._cond.notify_all()

    def _stop(self) -> None:
        """Stop the Qt objects behind the source (GUI thread)."""

    def _shut(self) -> None:
        self._stop()
        self.deleteLater()

    # -- any thread -----------------------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = OPEN_TIMEOUT_S) -> LiveSource:
        """Block until the first picture arrives; raise ``CaptureError`` with a sentence when none does."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._picture is None and not self._ended and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            ready, error = self._picture is not None, self._error
        if ready:
            return self
        self.close()
        if error:
            raise CaptureError(error)
        raise CaptureError(f"{self.name} showed no picture within {timeout:g} seconds.",
                           "Check it is connected and not in use by another program, then choose it again.")

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest picture as RGB (converted on the caller's thread); None if none came within ``timeout``."""
        with self._cond:
            if self._picture is None and not self._ended:
                self._cond.wait(timeout)
            picture, self._picture = self._picture, None
            if picture is None:
                if self.stall_s is not None and not self._ended and time.monotonic() - self._last > self.stall_s:
                    self._error = self.stalled.format(name=self.name)
                    self._ended = True
                return None
            captured_at, index = self._picture_at, self._count
            self._count += 1
        image = picture if isinstance(picture, QImage) else picture.toImage()
        if image.isNull():
            return None
        return Frame(from_qimage(image), captured_at, index)

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._picture is None

    @property
    def error(self) -> str | None:
        with self._cond:
            return self._error

    def close(self) -> None:
        """End the source and stop its Qt objects on the GUI thread, whichever thread asks. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = self._ended = True
            self._picture = None
            self._cond.notify_all()
        emit(self._close_requested)
