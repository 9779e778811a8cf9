"""Screenshots: the whole desktop, one monitor, or a region picked on an overlay, after an optional delay.

Qt can only grab the screen on the GUI thread; a grab takes a few tens of milliseconds, so it stays there. Under
Wayland the compositor does not let applications read the screen (grabs come back black), so the window says so
and offers clipboard paste instead of showing a black picture.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QObject, QPoint, QRect, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter, QPixmap, QScreen
from PySide6.QtWidgets import QApplication

from glimpse.app.capture.live import LiveSource
from glimpse.app.capture.region_overlay import RegionOverlay, crop
from glimpse.app.images import from_qimage
from glimpse.app.qtcompat import emit

SETTLE_MS = 250  # time for the compositor to remove our own window before the grab
HIDDEN = QColor(128, 128, 128)
LIVE_INTERVAL_MS = 500  # the screen as a live source: two pictures a second, plenty for captions

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


def region_label(index: int, screen: QScreen) -> str:
    return f"a region of {screen_label(index, screen).split(':')[0].lower()}"


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


def virtual_geometry(screens: Sequence[QScreen]) -> QRect:
    """The desktop spanned by ``screens``, in global logical coordinates."""
    virtual = QRect()
    for screen in screens:
        virtual = virtual.united(screen.geometry())
    return virtual


def desktop_image(shots: list[tuple[QScreen, QPixmap]]) -> QImage:
    """All screens as one picture, laid out as the desktop is, at the sharpest screen's pixel density."""
    virtual = virtual_geometry([screen for screen, _ in shots])
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


def grab_picture(what: str, region: QRect | None = None, *, hide: Sequence[QRect] = ()) -> tuple[QImage, str]:
    """Grab ``"desktop"`` or ``"screen:N"`` (then optionally only logical ``region`` of it) now; the picture and
    what it shows. ``hide``: rectangles in global logical coordinates to paint over in grey (Glimpse's own windows,
    for a live source). Raises ``ValueError`` with a sentence when the screen is gone or the grab came back blank."""
    screens = QGuiApplication.screens()
    if what.startswith("screen:"):
        index = int(what.split(":", 1)[1])
        if not 0 <= index < len(screens):
            raise ValueError(f"Screen {index + 1} is no longer connected.")
        shot = grab(screens[index])
        origin, scale = screens[index].geometry().topLeft(), shot.devicePixelRatio()
        if region is None:
            image, label = shot.toImage(), screen_label(index, screens[index])
        else:
            image = crop(shot, region)
            origin += region.topLeft()
            label = f"{region_label(index, screens[index])} ({image.width()}×{image.height()})"
    else:
        shots = [(s, grab(s)) for s in screens]
        image = desktop_image(shots)
        origin = virtual_geometry(screens).topLeft()
        scale = max((shot.devicePixelRatio() for _, shot in shots), default=1.0)
        label = f"the whole desktop ({image.width()}×{image.height()})"
    if is_blank(image):
        raise ValueError(BLANK)
    if hide:
        image = image.convertToFormat(QImage.Format.Format_RGB888)
        painter = QPainter(image)
        for rect in hide:
            r = rect.translated(-origin)
            painter.fillRect(QRect(round(r.x() * scale), round(r.y() * scale), round(r.width() * scale),
                                   round(r.height() * scale)), HIDDEN)
        painter.end()
    return image, label


def own_windows() -> list[QRect]:
    """Where Glimpse's own visible windows are (global logical coordinates, frames included)."""
    return [w.frameGeometry() for w in QApplication.topLevelWidgets() if w.isVisible() and not w.isMinimized()]


class LiveScreen(LiveSource):
    """The screen as a live source: ``"desktop"``, ``"screen:N"`` or a region of screen N, grabbed twice a second on
    the GUI thread (Qt grabs only there; a grab is a few milliseconds, the RGB conversion happens on the feed's
    thread)."""

    def __init__(self, what: str, region: QRect | None = None, parent: QObject | None = None) -> None:
        super().__init__("screen", parent)
        self._what = what
        self._region = QRect(region) if region is not None else None
        self._timer = QTimer(self)
        self._timer.setInterval(LIVE_INTERVAL_MS)
        self._timer.timeout.connect(self._grab)
        reason = unavailable_reason()
        if reason:
            self._finish(reason)
            return
        self._grab()
        self._timer.start()

    def _grab(self) -> None:
        try:
            # Glimpse's own window is greyed out: captions of the caption panel would change with every caption,
            # so the screen would never look unchanged and the captions would be about Glimpse.
            image, label = grab_picture(self._what, self._region, hide=own_windows())
        except ValueError as e:
            self._timer.stop()
            self._finish(str(e))
            return
        self.name = label[0].upper() + label[1:]
        self._offer(image)

    def _stop(self) -> None:
        self._timer.stop()


class ScreenCapture(QObject):
    """``capture("desktop" | "screen:N" | "region", delay_s)``; then exactly one of ``captured``, ``failed`` or
    ``cancelled``."""

    captured = Signal(object, str)  # RGB uint8 array, a description of what it shows
    region_chosen = Signal(int, QRect)  # the screen's index and the logical rectangle (a live region needs both)
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
        if self._what == "region":
            shots = [(s, grab(s)) for s in QGuiApplication.screens()]
            if not shots or all(is_blank(shot.toImage()) for _, shot in shots):
                emit(self.failed, BLANK)
            else:
                self._pick_region(shots)
            return
        try:
            image, label = grab_picture(self._what)
        except ValueError as e:
            emit(self.failed, str(e))
            return
        emit(self.captured, from_qimage(image), label)

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
        emit(self.captured, from_qimage(image), f"{region_label(index, screen)} ({image.width()}×{image.height()})")
        emit(self.region_chosen, index, QRect(rect))

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
