"""A live source (a camera, a video file played as one, or the screen) shared by the preview and the caption loop.

The source keeps only its newest picture (``app.capture.live``). The feed's thread takes each one, converts it to
RGB, and hands it to two places: a one-frame slot the model worker's caption loop reads (so the model only ever sees
the newest frame and nothing queues), and the preview, which is told by a signal only when it has drawn the previous
frame (so a slow window drops frames instead of piling up events). Waiting for a device to open also happens on that
thread: a camera can take seconds to show its first picture.

A source that stops delivering pictures mid-way (a camera that hangs, a capture card that loses its signal) is not
an end: after ``quiet_s`` without a picture the feed says so (``waiting``, with a sentence) and keeps waiting, so the
window and the captions so far stay; the first picture that comes back says it is over (``waiting`` with "").
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from glimpse.app.jobs import describe_error
from glimpse.app.qtcompat import emit
from glimpse.app.threads import spawn
from glimpse.engine import Frame, FrameSource, LatestFrame, SlotSource

_POLL_S = 0.1  # how long a take() may wait, so stopping never waits long


class FrameFeed(QObject, SlotSource):
    """Frames from the source ``opener()`` returns (e.g. ``MediaSource.wait_ready``), read on the feed's thread.
    Also a ``FrameSource`` for ``caption_stream`` (``SlotSource``: its one-frame slot)."""

    poll_s = _POLL_S
    quiet_s = 1.5  # no picture for this long and the feed says it is waiting (within 2 s, with the poll)

    opened = Signal(str)  # the feed's name
    frame_ready = Signal()  # call latest() to get it
    stopped = Signal(str)  # "" when it ended or was closed, else why it failed
    waiting = Signal(str)  # a sentence while no picture comes; "" when pictures come again

    _opened = Signal(str)
    _frame_ready = Signal()
    _stopped = Signal(str)
    _waiting = Signal(str)

    def __init__(self, opener: Callable[[], FrameSource], name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # Relayed, so listeners run on the GUI thread (see app.jobs.Job).
        self._opened.connect(self.opened)
        self._frame_ready.connect(self.frame_ready)
        self._stopped.connect(self.stopped)
        self._waiting.connect(self.waiting)
        self.name = name
        self._opener = opener
        self._slot = LatestFrame()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: Frame | None = None
        self._preview_pending = False
        self._times: deque[float] = deque(maxlen=60)
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = spawn(self._run, f"feed {self.name}")

    def _run(self) -> None:
        try:
            source = self._opener()
        except Exception as e:
            self._error = describe_error(e)
            self._slot.close()
            emit(self._stopped, self._error)
            return
        emit(self._opened, self.name)
        last = time.monotonic()
        quiet = False
        try:
            while not self._stop.is_set():
                frame = source.take(timeout=_POLL_S)
                if frame is None:
                    if source.ended:
                        break
                    if not quiet and time.monotonic() - last >= self.quiet_s:
                        quiet = True
                        emit(self._waiting, self.quiet_note(time.monotonic() - last))
                    continue
                last = time.monotonic()
                if quiet:
                    quiet = False
                    emit(self._waiting, "")
                self._slot.put(frame)
                with self._lock:
                    self._latest = frame
                    self._times.append(time.monotonic())
                    notify, self._preview_pending = not self._preview_pending, True
                if notify:
                    emit(self._frame_ready)
            if source.error and not self._stop.is_set():
                self._error = source.error
        except Exception as e:
            self._error = describe_error(e)
        finally:
            source.close()
            self._slot.close()
            emit(self._stopped, "" if self._stop.is_set() else (self._error or ""))

    def quiet_note(self, seconds: float) -> str:
        return f"No picture from {self.name} for {seconds:.0f} s: waiting for it to come back"

    # -- for the window ---------------------------------------------------------------------------------------------

    def latest(self) -> Frame | None:
        """The newest frame for the preview (it stays available for freezing)."""
        with self._lock:
            self._preview_pending = False
            return self._latest

    @property
    def fps(self) -> float:
        """Frames per second arriving from the source over the last second or so."""
        with self._lock:
            times = list(self._times)
        now = time.monotonic()
        recent = [t for t in times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        span = max(recent[-1] - recent[0], now - recent[-1])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def close(self) -> None:
        """Ask the threads to stop; returns at once (``wait`` joins them)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

