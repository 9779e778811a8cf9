"""Camera and video capture for the command line through QtMultimedia, where OpenCV is missing.

The packaged app leaves OpenCV out (it would add 155 MB); its window captures through QtMultimedia, and so, with
this backend installed by the launcher, does ``glimpse caption --source 0`` (or a video file) in the bundle. No
window and no event loop on the main thread are needed: the sources live on the media thread
(``app.capture.media``), and an offscreen Qt application only has to exist.
"""

from __future__ import annotations

import atexit
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from glimpse.engine import CaptureBackend, CaptureError, FrameSource, use_capture_backend

if TYPE_CHECKING:
    from glimpse.app.capture.media import MediaThread


def install_if_needed() -> bool:
    """Give the engine QtMultimedia capture when OpenCV is not installed; True when it did."""
    try:
        # The import is the check: OpenCV is optional (the bundle leaves it out).
        import cv2  # noqa: F401, PLC0415
    except ImportError:
        pass
    else:
        return False
    use_capture_backend(CaptureBackend("QtMultimedia", _open_camera, _open_video))
    return True


@functools.cache
def _media_thread() -> MediaThread:
    """The Qt application (offscreen) and the media thread, made on first use; the thread is stopped at exit."""
    # Qt is loaded only when a camera or video is opened: `glimpse caption` on the screen or on files never needs it.
    from PySide6.QtGui import QGuiApplication  # noqa: PLC0415

    from glimpse.app.capture.cameras import multimedia_problem  # noqa: PLC0415
    from glimpse.app.main import quiet_multimedia_logs  # noqa: PLC0415

    quiet_multimedia_logs()  # before QtMultimedia loads: it reports missing optional libraries as it does
    problem = multimedia_problem()
    if problem:
        raise CaptureError(problem)
    from glimpse.app.capture.media import MediaThread  # noqa: PLC0415

    if QGuiApplication.instance() is None:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        _keep.append(QGuiApplication(["glimpse"]))
    media = MediaThread()
    atexit.register(media.stop)
    return media


_keep: list[object] = []  # the Qt application made here, referenced for the life of the process


def _open_camera(index: int) -> FrameSource:
    from PySide6.QtMultimedia import QMediaDevices  # noqa: PLC0415

    media = _media_thread()
    devices = QMediaDevices.videoInputs()
    if not 0 <= index < len(devices):
        raise CaptureError(f"There is no camera {index}: {len(devices)} camera(s) found.",
                           "Check it is connected, or give another number to --source.")
    return media.camera(devices[index]).wait_ready()


def _open_video(path: Path) -> FrameSource:
    return _media_thread().video(path).wait_ready()
