"""The big picture: the live camera, or the frozen frame or screenshot being asked about. Files and images can be
dropped on it."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from glimpse.app.qtcompat import emit


class SourceView(QWidget):
    file_dropped = Signal(str)
    image_dropped = Signal(QImage)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAccessibleName("Picture")
        self._image = QImage()
        self._badge = ""
        self._placeholder = ""

    def sizeHint(self) -> QSize:
        return QSize(800, 600)

    def set_image(self, image: QImage, badge: str = "") -> None:
        self._image = image
        self._badge = badge
        self.setAccessibleDescription(badge)
        self.update()

    def clear(self, placeholder: str = "") -> None:
        self._image = QImage()
        self._badge = ""
        self._placeholder = placeholder
        self.setAccessibleDescription(placeholder)
        self.update()

    @property
    def image(self) -> QImage:
        return self._image

    @property
    def badge(self) -> str:
        return self._badge

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(24, 24, 28))
        if self._image.isNull():
            painter.setPen(QColor(200, 200, 205))
            painter.drawText(self.rect().adjusted(24, 24, -24, -24),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._placeholder)
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        size = self._image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        target = QRect(0, 0, size.width(), size.height())
        target.moveCenter(self.rect().center())
        painter.drawImage(target, self._image)
        if self._badge:
            metrics = painter.fontMetrics()
            box = metrics.boundingRect(self._badge).adjusted(-8, -4, 8, 4)
            box.moveTopLeft(target.topLeft() + QPoint(8, 8))
            painter.fillRect(box, QColor(0, 0, 0, 170))
            painter.setPen(Qt.GlobalColor.white)
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, self._badge)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        if mime.hasImage() or any(url.isLocalFile() for url in mime.urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        mime = event.mimeData()
        files = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
        if files:
            emit(self.file_dropped, files[0])
        elif mime.hasImage():
            emit(self.image_dropped, QImage(mime.imageData()))
        else:
            return
        event.acceptProposedAction()
