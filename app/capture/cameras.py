"""The cameras QtMultimedia lists, by name, and the operating system's camera permission.

A camera is remembered by its device id (stable across restarts, unlike its position in the list) and looked up
again when it is opened, so a camera unplugged in the meantime is reported rather than opened by mistake.
QtMultimedia is imported only when needed: where it cannot load (a system without its audio libraries), the window
still opens and says so, and screenshots, files and pasting still work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QCoreApplication, QObject, Qt

if TYPE_CHECKING:
    from PySide6.QtMultimedia import QCameraDevice


@dataclass(frozen=True)
class Camera:
    name: str
    device_id: str  # empty: the system's default camera


def multimedia_problem() -> str:
    """Why cameras and videos cannot be used here, or "" when QtMultimedia loads."""
    try:
        # The import is the check: Qt Multimedia is optional and may fail to load here.
        import PySide6.QtMultimedia  # noqa: F401, PLC0415
    except ImportError as e:
        return (f"Cameras and videos are unavailable because Qt Multimedia cannot load ({e}). "
                "Screenshots, pasted and opened images still work.")
    return ""


def list_cameras() -> tuple[list[Camera], str]:
    """The cameras by name, and a sentence when none can be listed because QtMultimedia cannot load."""
    problem = multimedia_problem()
    if problem:
        return [], problem
    # Optional: Qt Multimedia (app.capture.media imports it) is loaded only once multimedia_problem() says it can be.
    from PySide6.QtMultimedia import QMediaDevices  # noqa: PLC0415

    from glimpse.app.capture.media import device_id  # noqa: PLC0415

    return [Camera(device.description() or f"Camera {position + 1}", device_id(device))
            for position, device in enumerate(QMediaDevices.videoInputs())], ""


def find_device(camera: Camera) -> QCameraDevice | None:
    """The device behind ``camera`` now, or None when it is no longer connected."""
    from PySide6.QtMultimedia import QMediaDevices  # noqa: PLC0415

    from glimpse.app.capture.media import device_id  # noqa: PLC0415

    if not camera.device_id:
        device = QMediaDevices.defaultVideoInput()
        return None if device.isNull() else device
    return next((d for d in QMediaDevices.videoInputs() if device_id(d) == camera.device_id), None)


DENIED = ("Glimpse is not allowed to use the camera. Allow it in your system's privacy settings "
          "(on macOS: System Settings > Privacy & Security > Camera), then choose the camera again.")


def with_camera_permission(context: QObject, granted: Callable[[], None], denied: Callable[[str], None]) -> None:
    """Call ``granted`` once the system allows camera use (asking the user if it has not been decided), else
    ``denied`` with a sentence. Platforms without camera permissions (Linux, Windows) allow it at once."""
    try:
        # Optional: Qt before 6.5 has no QCameraPermission.
        from PySide6.QtCore import QCameraPermission  # noqa: PLC0415
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
