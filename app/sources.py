"""What the window is looking at: a live feed (a camera, a video file played as one, or the screen) for captions
and freezing, and stills (a frozen frame, a screenshot, a pasted, dropped or opened image) to ask about.

Nothing here blocks the GUI thread: cameras and videos live on the media thread and frames are converted on
``FrameFeed``'s thread; image files are decoded by a ``Job``. Screen grabs are the exception Qt imposes (see
``app.capture.screen``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import QObject, QRect, Signal
from PySide6.QtGui import QGuiApplication, QImage

from glimpse.app.capture.cameras import Camera, find_device, multimedia_problem
from glimpse.app.capture.feed import FrameFeed
from glimpse.app.capture.live import LiveSource
from glimpse.app.capture.screen import LiveScreen, ScreenCapture
from glimpse.app.images import from_qimage, is_video, read_image_file
from glimpse.app.jobs import Job
from glimpse.app.qtcompat import emit
from glimpse.engine import CaptureError, FrameSource

if TYPE_CHECKING:
    from glimpse.app.capture.media import MediaThread

U8Array = npt.NDArray[np.uint8]


class Sources(QObject):
    live_started = Signal(str)  # what is playing: "Camera: <name>", "Video: <file name>" or "Screen: <what>"
    live_stopped = Signal(str)  # the feed ended by itself: "" at the end of a video, else why it failed
    live_closed = Signal()  # the feed was closed on purpose (another source, or none)
    live_waiting = Signal(str)  # the feed gets no pictures: a sentence; "" when they come again
    frame = Signal()  # a new live frame: read feed.latest()
    still = Signal(object, str)  # a new picture to ask about (RGB array), and what it shows
    failed = Signal(str)
    grab_started = Signal()  # the window hides itself from screenshots between these two
    grab_finished = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.feed: FrameFeed | None = None
        self._old_feeds: list[FrameFeed] = []
        self._media_thread: MediaThread | None = None
        self.screen = ScreenCapture(self)
        self.screen.captured.connect(self._screenshot)
        self.screen.region_chosen.connect(self._live_region_chosen)
        self._live_region = ""  # set: the next region picked on the overlay is for a live feed, not a screenshot
        self.screen.failed.connect(self._grab_failed)
        self.screen.cancelled.connect(self._grab_cancelled)
        self._loader: Job | None = None
        self._spent: Job | None = None

    # -- live -----------------------------------------------------------------------------------------------------

    def open_camera(self, camera: Camera) -> None:
        problem = multimedia_problem()
        device = None if problem else find_device(camera)
        if device is None:
            error = CaptureError(problem or f"The camera {camera.name} is not connected.",
                                 "" if problem else "Plug it in, or choose another camera under Source.")
            self._start_feed(FrameFeed(_failing(error), camera.name, self), f"Camera: {camera.name}")
            return
        self._start_live(self._media().camera(device), f"Camera: {camera.name}")

    def open_video(self, path: str | Path) -> None:
        path = Path(path)
        problem = multimedia_problem()
        if problem:
            self._start_feed(FrameFeed(_failing(CaptureError(problem)), path.name, self), f"Video: {path.name}")
            return
        self._start_live(self._media().video(path), f"Video: {path.name}")

    def _media(self) -> MediaThread:
        """The thread cameras and videos live on (QtMultimedia is imported only when one is first used)."""
        if self._media_thread is None:
            # Optional and slow to load: Qt Multimedia is imported only when a camera or video is first used.
            from glimpse.app.capture.media import MediaThread  # noqa: PLC0415

            self._media_thread = MediaThread()
        return self._media_thread

    def open_screen(self, what: str, label: str) -> None:
        """The screen as a live source: ``"desktop"``, ``"screen:N"``, or ``"region"`` (picked on the overlay first);
        ``label`` is what the source list calls it."""
        if what == "region":
            self._live_region = label
            self.screenshot("region")
            return
        self._start_live(LiveScreen(what, parent=self), label)

    def _live_region_chosen(self, index: int, rect: QRect) -> None:
        label, self._live_region = self._live_region, ""
        if label:
            self._start_live(LiveScreen(f"screen:{index}", rect, self), label)

    def _start_live(self, source: LiveSource, label: str) -> None:
        self._start_feed(FrameFeed(source.wait_ready, source.name, self), label)

    def _start_feed(self, feed: FrameFeed, label: str) -> None:
        self.stop_live()
        self.feed = feed
        feed.opened.connect(lambda _name: emit(self.live_started, label))
        feed.frame_ready.connect(lambda: emit(self.frame))
        feed.stopped.connect(lambda error, f=feed: self._feed_stopped(f, error))
        feed.waiting.connect(lambda note, f=feed: emit(self.live_waiting, note) if f is self.feed else None)
        feed.start()

    def _feed_stopped(self, feed: FrameFeed, error: str) -> None:
        if feed is self.feed:
            self.feed = None
            emit(self.live_stopped, error)

    def stop_live(self) -> None:
        """Close the feed without waiting for its threads (``shutdown`` joins them)."""
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.close()
            for old in self._old_feeds:
                if old.wait(0):
                    old.deleteLater()  # long finished: no events of its own are pending any more
            self._old_feeds = [f for f in self._old_feeds if not f.wait(0)] + [feed]
            emit(self.live_closed)

    def freeze(self) -> bool:
        """Make the newest live frame the picture to ask about; False when there is none."""
        frame = self.feed.latest() if self.feed is not None else None
        if frame is None or self.feed is None:
            return False
        when = _dt.datetime.fromtimestamp(frame.captured_at).strftime("%H:%M:%S")
        emit(self.still, frame.pixels, f"a frame from {self.feed.name} at {when}")
        return True

    # -- stills ---------------------------------------------------------------------------------------------------

    def screenshot(self, what: str, delay_s: float = 0.0) -> None:
        emit(self.grab_started)
        self.screen.capture(what, delay_s)

    def _screenshot(self, pixels: U8Array, description: str) -> None:
        emit(self.grab_finished)
        if not self._live_region:  # a live region's feed starts from region_chosen instead
            emit(self.still, pixels, f"a screenshot of {description}")

    def _grab_failed(self, message: str) -> None:
        self._live_region = ""
        emit(self.grab_finished)
        emit(self.failed, message)

    def _grab_cancelled(self) -> None:
        self._live_region = ""
        emit(self.grab_finished)

    def paste(self) -> None:
        """An image on the clipboard, or an image file copied in a file manager."""
        mime = QGuiApplication.clipboard().mimeData()
        if mime is not None and mime.hasImage():
            self.use_image(QImage(mime.imageData()), "a pasted image")
            return
        files = [u.toLocalFile() for u in (mime.urls() if mime is not None else []) if u.isLocalFile()]
        if files:
            self.open_file(files[0])
            return
        emit(self.failed, "There is no image on the clipboard. Copy an image or take a screenshot first.")

    def use_image(self, image: QImage, description: str) -> None:
        if image.isNull():
            emit(self.failed, "That image is empty or in a format Qt cannot read.")
            return
        emit(self.still, from_qimage(image), f"{description} ({image.width()}×{image.height()})")

    def open_file(self, path: str | Path) -> None:
        """A video plays as a live feed; anything else is decoded (off the GUI thread) as a picture."""
        path = Path(path)
        if is_video(path):
            self.open_video(path)
            return
        if self._loader is not None:
            return
        job = Job(lambda _p, _c: read_image_file(path), f"open {path.name}", self)
        job.done.connect(lambda pixels: emit(self.still, pixels, f"{path.name} ({pixels.shape[1]}×{pixels.shape[0]})"))
        job.failed.connect(lambda message: emit(self.failed, message))
        job.finished.connect(self._loaded)
        self._loader = job
        job.start()

    def _loaded(self) -> None:
        job, self._loader = self._loader, None
        if job is not None:
            job.wait()
            # Not deleteLater() now: see app.widgets.model_manager (deleting a job from its own signal).
            if self._spent is not None:
                self._spent.deleteLater()
            self._spent = job

    @property
    def loading(self) -> bool:
        return self._loader is not None

    # -- closing --------------------------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 6.0) -> bool:
        """Stop everything and join the threads; True when they all ended."""
        self.screen.abort()
        self.stop_live()
        ok = all(f.wait(timeout_s) for f in self._old_feeds)
        self._old_feeds = []
        if self._media_thread is not None:
            ok = self._media_thread.stop(timeout_s) and ok
        if self._loader is not None:
            ok = self._loader.wait(timeout_s) and ok
        return ok


def _failing(error: CaptureError) -> Callable[[], FrameSource]:
    """An opener that fails at once, so a source that cannot open is reported the way every other failure is."""
    def opener() -> FrameSource:
        raise error
    return opener
