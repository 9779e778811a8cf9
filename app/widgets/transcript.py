"""The conversation's text: formatted answers that can be read, selected and copied, and nothing more.

Nothing in it is loaded from anywhere (``loadResource`` answers nothing, so no picture or style sheet an answer
might name is read, locally or from the network) and no link opens. Right-click (or the menu key) in a code block
offers "Copy code block".
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QPoint, QUrl
from PySide6.QtGui import QContextMenuEvent, QGuiApplication
from PySide6.QtWidgets import QMenu, QTextBrowser, QWidget

from glimpse.app.rich_text import code_block_at


class Transcript(QTextBrowser):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.setUndoRedoEnabled(False)

    def loadResource(self, type: int, name: QUrl | str) -> Any:
        return None

    def code_block_at(self, point: QPoint) -> str:
        return code_block_at(self.document(), self.cursorForPosition(point).position())

    def copy_code_block(self, point: QPoint) -> bool:
        code = self.code_block_at(point)
        if code:
            QGuiApplication.clipboard().setText(code)
        return bool(code)

    def context_menu(self, point: QPoint) -> QMenu:
        """The standard menu (Copy, Select All), with "Copy code block" first when ``point`` is in one."""
        menu = self.createStandardContextMenu()
        if self.code_block_at(point):
            action = menu.addAction("Copy code block")
            action.triggered.connect(lambda: self.copy_code_block(point))
            first = menu.actions()[0]
            menu.insertAction(first, action)
            menu.insertSeparator(first)
        return menu

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        menu = self.context_menu(event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()
