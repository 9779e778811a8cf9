"""Live captioning without Qt: frame sources, a newest-frame-wins slot, change detection and the caption loop.

Frames come from a camera or a video file read by a background thread, or from the screen on demand. The capture
thread always overwrites one slot, so a slow model only ever sees the newest frame: nothing queues behind it and
frames that arrive while it is busy are dropped. Frames that look the same as the last captioned one are skipped.
The app's worker uses the same pieces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageGrab

from glimpse.engine.errors import CaptureError, InputError
from glimpse.engine.runtime.types import Answer, Restart

U8Array = npt.NDArray[np.uint8]

BRIEF_SUFFIX = "Output should be brief, about 15 words or less."
DEFAULT_CAPTION_PROMPT = "Describe what you see."
CAPTION_MAX_TOKENS = 48
CHANGE_THRESHOLD = 1.5  # mean absolute difference of a 32x32 grey thumbnail, in 0-255 levels


@dataclass(frozen=True)
class Frame:
    """An RGB uint8 frame [H, W, 3] and the wall-clock time it was captured."""

    pixels: U8Array
    captured_at: float
    index: int


class LatestFrame:
    """A one-frame mailbox: ``put`` replaces whatever is waiting, ``take`` removes the newest frame."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, waiting up to ``timeout`` seconds; None if none came or the source ended."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and self._frame is None


class FrameSource(Protocol):
    """Something frames can be taken from. ``take`` returns None once the source has ended."""

    name: str

    def take(self, timeout: float | None = None) -> Frame | None: ...

    @property
    def ended(self) -> bool: ...

    @property
    def error(self) -> str | None: ...

    def close(self) -> None: ...


class SlotSource:
    """The reading side of a ``FrameSource`` whose own thread fills a ``LatestFrame`` (``_slot``) and records why
    it stopped in ``_error``. ``poll_s`` caps how long one ``take`` waits (so a stop is seen soon)."""

    _slot: LatestFrame
    _error: str | None
    poll_s: float | None = None

    def take(self, timeout: float | None = None) -> Frame | None:
        if self.poll_s is not None:
            timeout = self.poll_s if timeout is None else min(timeout, self.poll_s)
        return self._slot.take(timeout)

    @property
    def ended(self) -> bool:
        return self._slot.closed

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def dropped(self) -> int:
        return self._slot.dropped


class _CaptureThread(SlotSource):
    """Reads an OpenCV ``VideoCapture`` on a daemon thread into a ``LatestFrame``."""

    def __init__(self, capture: object, name: str, pace: float | None) -> None:
        self.name = name
        self._capture = capture
        self._pace = pace
        self._slot = LatestFrame()
        self._stop = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # OpenCV is optional: the bundle leaves it out and app/capture/headless.py installs a Qt backend instead.
        import cv2  # noqa: PLC0415

        cap = self._capture
        index = 0
        failures = 0
        next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                ok, bgr = cap.read()  # type: ignore[attr-defined]
                if not ok or bgr is None:
                    if self._pace is not None:  # a file: the end
                        break
                    failures += 1
                    if failures >= 50:  # about 2.5 s of nothing from a camera: unplugged or taken away
                        self._error = (f"The camera {self.name} stopped sending frames (unplugged, or taken by "
                                       "another program?). Reconnect it and start again.")
                        break
                    time.sleep(0.05)
                    continue
                failures = 0
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                self._slot.put(Frame(rgb, time.time(), index))
                index += 1
                if self._pace is not None:  # play a file as a camera: no faster than its frame rate
                    next_due += self._pace
                    delay = next_due - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_due = time.monotonic()
        finally:
            cap.release()  # type: ignore[attr-defined]
            self._slot.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class CaptureBackend:
    """Another way to open cameras and videos than OpenCV (the desktop app's QtMultimedia, in its packaged build,
    which leaves OpenCV out). ``open_video(path)`` plays the file in real time, as a camera."""

    name: str
    open_camera: Callable[[int], FrameSource]
    open_video: Callable[[Path], FrameSource]


class _Capture:
    backend: CaptureBackend | None = None


def use_capture_backend(backend: CaptureBackend | None) -> None:
    """Open cameras and real-time videos with ``backend`` from now on (None: OpenCV again)."""
    _Capture.backend = backend


def _cv2() -> Any:
    """OpenCV, quietened (it prints its own warnings for a missing camera; we raise a sentence instead).

    Only headless capture uses it, unless a ``CaptureBackend`` is installed (the desktop app reads cameras and videos
    with QtMultimedia, and its packaged build leaves OpenCV out)."""
    try:
        import cv2  # noqa: PLC0415
    except ImportError:
        raise CaptureError("Camera and video capture from the command line needs OpenCV, which this installation "
                           "does not include.",
                           "Use the Glimpse window (Source menu), or install Glimpse from source with pip, which "
                           "includes OpenCV.") from None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def open_camera(index: int) -> FrameSource:
    """Open camera ``index`` (0 is the default camera) and start reading it."""
    if _Capture.backend is not None:
        return _Capture.backend.open_camera(index)
    cv2 = _cv2()
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise CaptureError(f"No camera could be opened at index {index}.",
                           "Check it is connected, allowed for this app and not in use by another program, "
                           "or choose another camera.")
    return _CaptureThread(cap, f"#{index}", pace=None)


def open_video(path: str | Path, *, realtime: bool = True) -> FrameSource:
    """Play a video file as if it were a camera (``realtime``) or as fast as frames are taken."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"{path} does not exist.", "Check the path of the video.")
    if _Capture.backend is not None and realtime:
        return _Capture.backend.open_video(path)
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened()
    fps = cap.get(cv2.CAP_PROP_FPS) if ok else 0.0
    if not ok or not cap.grab():  # opened is not enough: a text file renamed .mp4 opens on some backends
        cap.release()
        raise CaptureError(f"{path} cannot be read as a video.", "Use an MP4, AVI, MKV or WebM file.")
    if not realtime:
        return _PullVideo(cap, path.name)
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return _CaptureThread(cap, path.name, pace=1.0 / fps if fps and fps > 0 else 1 / 25)


class _PullVideo:
    """A video read frame by frame on demand (for tests and offline captioning: no frame is dropped)."""

    def __init__(self, capture: object, name: str) -> None:
        import cv2  # noqa: PLC0415

        self.name = name
        self._cap = capture
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # type: ignore[attr-defined]
        self._index = 0
        self._ended = False
        self.dropped = 0

    def take(self, timeout: float | None = None) -> Frame | None:
        import cv2  # noqa: PLC0415

        if self._ended:
            return None
        ok, bgr = self._cap.read()  # type: ignore[attr-defined]
        if not ok or bgr is None:
            self.close()
            return None
        self._index += 1
        return Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time.time(), self._index - 1)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def error(self) -> str | None:
        return None

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self._cap.release()  # type: ignore[attr-defined]


class ScreenSource:
    """Grabs the whole screen on demand with Pillow (X11, Windows and macOS; not Wayland)."""

    name = "screen"
    dropped = 0

    def __init__(self) -> None:
        self._index = 0
        self.take()  # fail now, with a sentence, rather than at the first caption

    def take(self, timeout: float | None = None) -> Frame | None:
        try:
            shot = ImageGrab.grab(all_screens=True)
        except (OSError, ImportError, ValueError) as e:
            raise CaptureError(f"The screen cannot be captured here ({e}).",
                               "On Wayland use your desktop's screenshot tool and open or paste the image; "
                               "on X11 check DISPLAY is set.") from None
        pixels = np.asarray(shot.convert("RGB"))
        self._index += 1
        return Frame(pixels, time.time(), self._index - 1)

    @property
    def ended(self) -> bool:
        return False

    @property
    def error(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def open_source(spec: str, *, realtime: bool = True) -> FrameSource:
    """``"0"`` (a camera index), ``"screen"``, or a video file path."""
    if spec.strip().lower() == "screen":
        return ScreenSource()
    if spec.strip().isdigit():
        return open_camera(int(spec))
    return open_video(spec, realtime=realtime)


def thumbnail(pixels: U8Array) -> npt.NDArray[np.float32]:
    """A 32x32 grey thumbnail for change detection (box-averaged, so sensor noise mostly cancels)."""
    grey = Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB").convert("L")
    return np.asarray(grey.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)


def changed(previous: npt.NDArray[np.float32] | None, current: npt.NDArray[np.float32],
            threshold: float = CHANGE_THRESHOLD) -> bool:
    """True when the thumbnails differ by more than ``threshold`` grey levels on average (or there is no previous)."""
    return previous is None or float(np.abs(previous - current).mean()) > threshold


def caption_prompt(prompt: str | None) -> str:
    text = (prompt or DEFAULT_CAPTION_PROMPT).strip()
    if not text:
        raise InputError("The caption prompt is empty.", "Give a prompt such as 'Describe what you see.'")
    return f"{text} {BRIEF_SUFFIX}"


@dataclass(frozen=True)
class Caption:
    """One caption: the text, when its frame was captured, when it was finished, and the answer's details."""

    text: str
    frame_time: float
    finished_at: float
    frame_index: int
    answer: Answer
    skipped_unchanged: int
    dropped_frames: int


class Captioner(Protocol):
    """What captions need of a model: :class:`engine.runtime.model.Model`, or one in a runner process
    (engine.runner.RunnerModel), whose stream may start an answer again after a :class:`Restart`."""

    def stream(self, image: npt.NDArray[np.uint8], question: str, *, size: int | None = None,
               max_tokens: int = 256) -> Iterator[str | Answer | Restart]: ...

    def cancel(self) -> None: ...


def caption_stream(model: Captioner, source: FrameSource, *, every: float = 0.0, size: int = 512,
                   prompt: str | None = None, count: int | None = None, cancel: threading.Event | None = None,
                   max_tokens: int = CAPTION_MAX_TOKENS, on_piece: Callable[[str], None] | None = None,
                   on_frame: Callable[[Frame], None] | None = None,
                   sleep: Callable[[float], object] = time.sleep) -> Iterator[Caption]:
    """Caption the newest frame, at most once per ``every`` seconds (0: back to back), until ``count`` captions,
    the source ends, or ``cancel`` is set. Unchanged frames are skipped. ``on_frame`` is told each frame the
    moment it goes to the model (a window shows "reading image" then), ``on_piece`` each piece of caption text."""
    if every < 0:
        raise InputError(f"The interval must be 0 or more seconds, not {every}.")
    question = caption_prompt(prompt)
    last_thumb: npt.NDArray[np.float32] | None = None
    made = skipped = 0
    next_due = 0.0
    while count is None or made < count:
        if cancel is not None and cancel.is_set():
            return
        wait = next_due - time.monotonic()
        if wait > 0:
            sleep(min(wait, 0.1))
            continue
        frame = source.take(timeout=0.5)
        if frame is None:
            if source.error:
                raise CaptureError(source.error)  # sources' sentences already say what to do
            if source.ended:
                return
            continue
        thumb = thumbnail(frame.pixels)
        if not changed(last_thumb, thumb):
            skipped += 1
            continue
        if on_frame is not None:
            on_frame(frame)
        answer: Answer | None = None
        for item in model.stream(frame.pixels, question, size=size, max_tokens=max_tokens):
            if isinstance(item, Answer):
                answer = item
            elif isinstance(item, Restart):  # the model's process was restarted: this caption starts again
                if on_frame is not None:
                    on_frame(frame)
            elif on_piece is not None:
                on_piece(item)
            if cancel is not None and cancel.is_set():
                model.cancel()
        assert answer is not None
        last_thumb = thumb
        made += 1
        next_due = time.monotonic() + every
        yield Caption(answer.text.strip(), frame.captured_at, time.time(), frame.index, answer, skipped,
                      int(getattr(source, "dropped", 0)))
