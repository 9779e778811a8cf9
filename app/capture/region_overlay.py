"""The region picker: a screenshot of each screen, shown full-screen and dimmed, on which the user drags a rectangle.

The screens are grabbed first and the overlay shows those still pictures, so the overlay never ends up in its own
screenshot and the picture cannot change under the user's drag. Rectangles are picked in the overlay's logical
(device-independent) pixels and cut out of the grab in physical pixels: on a HiDPI screen the grab is
``devicePixelRatio`` times larger, and each screen of a multi-monitor desktop has its own ratio and its own overlay.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QWidget

from glimpse.app.qtcompat import emit

MIN_SIDE = 4  # logical pixels: anything smaller is a click, not a drag


def to_physical(rect: QRect, ratio: float, bounds: QSize) -> QRect:
    """The physical-pixel rectangle covering logical ``rect`` at ``ratio`` (edges rounded outwards, so a
    fractional ratio never cuts off a partly covered pixel), clipped to ``bounds``."""
    left = math.floor(rect.x() * ratio)
    top = math.floor(rect.y() * ratio)
    right = math.ceil((rect.x() + rect.width()) * ratio)
    bottom = math.ceil((rect.y() + rect.height()) * ratio)
    return QRect(QPoint(left, top), QPoint(right - 1, bottom - 1)).intersected(QRect(QPoint(0, 0), bounds))


def crop(shot: QPixmap, rect: QRect) -> QImage:
    """Cut logical ``rect`` out of a screen grab whose ``devicePixelRatio`` says how it maps to physical pixels."""
    return shot.copy(to_physical(rect, shot.devicePixelRatio(), shot.size())).toImage()


def _span(a: QPoint, b: QPoint) -> QRect:
    """The rectangle dragged from ``a`` to ``b``: a drag of 100 pixels selects 100 pixels, in any direction."""
    return QRect(min(a.x(), b.x()), min(a.y(), b.y()), abs(b.x() - a.x()), abs(b.y() - a.y()))


class RegionOverlay(QWidget):
    """Covers one screen. ``selected`` carries the dragged rectangle in this widget's logical coordinates."""

    selected = Signal(QRect)
    cancelled = Signal()

    def __init__(self, shot: QPixmap, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.shot = shot
        self.setWindowFlags(Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnTopHint
                            | Qt.WindowType.Tool)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAccessibleName("Screen region picker. Drag a rectangle; press Escape to cancel.")
        self._origin: QPoint | None = None
        self._rect = QRect()

    @property
    def selection(self) -> QRect:
        return QRect(self._rect)

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.drawPixmap(self.rect(), self.shot)
        dim = QColor(0, 0, 0, 120)
        if self._rect.isNull():
            painter.fillRect(self.rect(), dim)
            self._hint(painter, "Drag to choose a region · Esc to cancel")
            return
        # Dim everything but the selection.
        r = self._rect
        w, h = self.width(), self.height()
        for part in (QRect(0, 0, w, r.top()), QRect(0, r.bottom() + 1, w, h - r.bottom() - 1),
                     QRect(0, r.top(), r.left(), r.height()), QRect(r.right() + 1, r.top(), w - r.right() - 1,
                                                                    r.height())):
            painter.fillRect(part, dim)
        painter.setPen(QPen(QColor(80, 170, 255), 2))
        painter.drawRect(r.adjusted(0, 0, -1, -1))
        px = to_physical(r, self.shot.devicePixelRatio(), self.shot.size())
        painter.setPen(Qt.GlobalColor.white)
        painter.drawText(r.topLeft() + QPoint(4, -6 if r.top() > 20 else 16), f"{px.width()} × {px.height()}")

    def _hint(self, painter: QPainter, text: str) -> None:
        painter.setPen(Qt.GlobalColor.white)
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.4)
        painter.setFont(font)
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, text)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._origin = event.position().toPoint()
            self._rect = QRect()
        elif event.button() == Qt.MouseButton.RightButton:
            emit(self.cancelled)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._origin is not None:
            self._rect = _span(self._origin, event.position().toPoint()).intersected(self.rect())
            self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._origin is None:
            return
        self._rect = _span(self._origin, event.position().toPoint()).intersected(self.rect())
        self._origin = None
        if self._rect.width() >= MIN_SIDE and self._rect.height() >= MIN_SIDE:
            emit(self.selected, QRect(self._rect))
        else:
            self._rect = QRect()
            self.update()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape:
            emit(self.cancelled)
        else:
            super().keyPressEvent(event)
