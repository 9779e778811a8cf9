"""Screenshots: the whole desktop, one monitor, or a region picked on an overlay, after an optional delay.

Qt can only grab the screen on the GUI thread; a grab takes a few tens of milliseconds, so it stays there. Under
Wayland the compositor does not let applications read the screen (grabs come back black), so the window says so
and offers clipboard paste instead of showing a black picture.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QImage, QPainter, QPixmap, QScreen

from app.capture.region_overlay import RegionOverlay, crop
from app.images import from_qimage
from app.qtcompat import emit

SETTLE_MS = 250  # time for the compositor to remove our own window before the grab

WAYLAND = ("The screen cannot be captured under Wayland: the desktop does not let applications read it. "
           "Take a screenshot with your desktop's tool, then paste it here (Ctrl+V) or open the file.")
BLANK = ("The screen capture came back empty (all black): this desktop does not let Glimpse read the screen. "
         "Take a screenshot with your desktop's tool, then paste it here (Ctrl+V) or open the file.")


def unavailable_reason() -> str:
    """Why screenshots cannot work on this platform, or "" when they should."""
    if QGuiApplication.platformName().lower().startswith("wayland"):
        return WAYLAND
    return ""


def screen_label(index: int, screen: QScreen) -> str:
    g = screen.geometry()
    ratio = screen.devicePixelRatio()
    scale = f" at {ratio:g}x" if ratio != 1 else ""
    return f"Screen {index + 1}: {screen.name() or 'display'} ({g.width()}×{g.height()}{scale})"


def grab(screen: QScreen) -> QPixmap:
    """The whole of ``screen`` in physical pixels (its ``devicePixelRatio`` set accordingly)."""
    return screen.grabWindow(0)


def is_blank(image: QImage) -> bool:
    """True for a null image or one that is a single dark colour (what a refused grab looks like)."""
    if image.isNull():
        return True
    small = image.scaled(16, 16).convertToFormat(QImage.Format.Format_RGB888)
    first = small.pixelColor(0, 0)
    if first.lightness() > 8:
        return False
    return all(small.pixelColor(x, y) == first for y in range(16) for x in range(16))


def desktop_image(shots: list[tuple[QScreen, QPixmap]]) -> QImage:
    """All screens as one picture, laid out as the desktop is, at the sharpest screen's pixel density."""
    virtual = QRect()
    for screen, _ in shots:
        virtual = virtual.united(screen.geometry())
    ratio = max(shot.devicePixelRatio() for _, shot in shots)
    canvas = QImage(round(virtual.width() * ratio), round(virtual.height() * ratio), QImage.Format.Format_RGB888)
    canvas.fill(Qt.GlobalColor.black)
    painter = QPainter(canvas)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    for screen, shot in shots:
        g = screen.geometry()
        origin = QPoint(round((g.x() - virtual.x()) * ratio), round((g.y() - virtual.y()) * ratio))
        target = QRect(origin, g.size() * ratio)
        plain = QPixmap(shot)
        plain.setDevicePixelRatio(1.0)  # draw it into the target rectangle in canvas pixels
        painter.drawPixmap(target, plain)
    painter.end()
    return canvas


class ScreenCapture(QObject):
    """``capture("desktop" | "screen:N" | "region", delay_s)``; then exactly one of ``captured``, ``failed`` or
    ``cancelled``."""

    captured = Signal(object, str)  # RGB uint8 array, a description of what it shows
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._overlays: list[RegionOverlay] = []
        self._shots: list[tuple[QScreen, QPixmap]] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._what = ""
        self._timer.timeout.connect(self._grab)

    @property
    def busy(self) -> bool:
        return self._timer.isActive() or bool(self._overlays)

    def capture(self, what: str, delay_s: float = 0.0) -> None:
        reason = unavailable_reason()
        if reason:
            emit(self.failed, reason)
            return
        self._what = what
        self._timer.start(int(max(0.0, delay_s) * 1000) + SETTLE_MS)

    def abort(self) -> None:
        if self._timer.isActive():
            self._timer.stop()
            emit(self.cancelled)
        self._close_overlays(cancelled=True)

    def _grab(self) -> None:
        screens = QGuiApplication.screens()
        shots = [(s, grab(s)) for s in screens]
        if not shots or all(is_blank(shot.toImage()) for _, shot in shots):
            emit(self.failed, BLANK)
            return
        what = self._what
        if what == "region":
            self._pick_region(shots)
        elif what.startswith("screen:"):
            index = int(what.split(":", 1)[1])
            if not 0 <= index < len(shots):
                emit(self.failed, f"Screen {index + 1} is no longer connected.")
                return
            screen, shot = shots[index]
            emit(self.captured, from_qimage(shot.toImage()), screen_label(index, screen))
        else:
            image = desktop_image(shots)
            emit(self.captured, from_qimage(image), f"the whole desktop ({image.width()}×{image.height()})")

    def _pick_region(self, shots: list[tuple[QScreen, QPixmap]]) -> None:
        self._shots = shots
        for index, (screen, shot) in enumerate(shots):
            overlay = RegionOverlay(shot)
            overlay.setScreen(screen)
            overlay.setGeometry(screen.geometry())
            overlay.selected.connect(lambda rect, i=index: self._region_chosen(i, rect))
            overlay.cancelled.connect(lambda: self._close_overlays(cancelled=True))
            self._overlays.append(overlay)
            overlay.showFullScreen()
        if self._overlays:
            self._overlays[0].activateWindow()
            self._overlays[0].setFocus()

    def _region_chosen(self, index: int, rect: QRect) -> None:
        screen, shot = self._shots[index]
        image = crop(shot, rect)
        self._close_overlays(cancelled=False)
        emit(self.captured, from_qimage(image),
             f"a region of {screen_label(index, screen).split(':')[0].lower()} ({image.width()}×{image.height()})")

    def _close_overlays(self, *, cancelled: bool) -> None:
        had = bool(self._overlays)
        for overlay in self._overlays:
            overlay.close()
            overlay.deleteLater()
        self._overlays.clear()
        self._shots = []
        if cancelled and had:
            emit(self.cancelled)

    @property
    def overlays(self) -> list[RegionOverlay]:
        return list(self._overlays)
