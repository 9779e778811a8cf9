"""Camera names from QtMultimedia, capture by OpenCV, and the operating system's camera permission.

QtMultimedia knows the cameras' names; OpenCV (through ``engine.caption.open_camera``) reads them on a background
thread. The two number cameras independently: on Linux the device id names the /dev/videoN node, which is OpenCV's
index; elsewhere both follow the system's enumeration order, so the position in Qt's list is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QCoreApplication, QObject, Qt

_V4L2 = re.compile(r"/dev/video(\d+)$")


@dataclass(frozen=True)
class Camera:
    name: str
    device_id: str
    index: int  # OpenCV's camera index


def list_cameras() -> tuple[list[Camera], str]:
    """The cameras, and a note when names cannot be listed (then the default camera is offered unnamed)."""
    try:
        from PySide6.QtMultimedia import QMediaDevices
    except ImportError as e:
        return [Camera("Default camera", "", 0)], (
            f"Camera names are unavailable because Qt Multimedia cannot load ({e}); the default camera is offered.")
    cameras = []
    for position, device in enumerate(QMediaDevices.videoInputs()):
        device_id = bytes(device.id().data()).decode("utf-8", errors="replace")
        match = _V4L2.search(device_id)
        index = int(match.group(1)) if match else position
        cameras.append(Camera(device.description() or f"Camera {position + 1}", device_id, index))
    return cameras, ""


DENIED = ("Glimpse is not allowed to use the camera. Allow it in your system's privacy settings "
          "(on macOS: System Settings > Privacy & Security > Camera), then choose the camera again.")


def with_camera_permission(context: QObject, granted: Callable[[], None], denied: Callable[[str], None]) -> None:
    """Call ``granted`` once the system allows camera use (asking the user if it has not been decided), else
    ``denied`` with a sentence. Platforms without camera permissions (Linux, Windows) allow it at once."""
    try:
        from PySide6.QtCore import QCameraPermission
    except ImportError:  # Qt before 6.5 has no permission API; the OS then reports a failure on open instead
        granted()
        return
    app = QCoreApplication.instance()
    if app is None:
        granted()
        return
    permission = QCameraPermission()
    status = app.checkPermission(permission)
    if status == Qt.PermissionStatus.Granted:
        granted()
    elif status == Qt.PermissionStatus.Denied:
        denied(DENIED)
    else:
        def answered(result: QCameraPermission) -> None:
            if app.checkPermission(result) == Qt.PermissionStatus.Granted:
                granted()
            else:
                denied(DENIED)

        app.requestPermission(permission, context, answered)
