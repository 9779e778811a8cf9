"""A strip at the top of the window for errors and notices, with an optional action ("Paste an image").

Failures are shown here rather than in modal dialogs: a dialog would stop live captions and steal focus from a
screen reader mid-sentence, and several failures in a row would stack up.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QToolButton, QWidget

from glimpse.app.announce import announce

_STYLES = {
    "error": "background:#fde2e1;color:#5c0b07;border:1px solid #e0a19d;",
    "info": "background:#e4eefc;color:#0b2a5c;border:1px solid #9db6e0;",
}


class MessageBar(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        self._label = QLabel()
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._action = QPushButton()
        self._close = QToolButton()
        self._close.setText("✕")
        self._close.setAccessibleName("Dismiss message")
        self._close.setToolTip("Hide this message")
        self._close.clicked.connect(self.hide)
        layout.addWidget(self._label, 1)
        layout.addWidget(self._action)
        layout.addWidget(self._close)
        self._callback: Callable[[], object] | None = None
        self._action.clicked.connect(self._run_action)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "error",
                     action: tuple[str, Callable[[], object]] | None = None) -> None:
        self.kind = kind
        self.setStyleSheet(f"#messageBar{{{_STYLES.get(kind, _STYLES['info'])}border-radius:4px;}}"
                           "#messageBar QLabel{border:none;background:transparent;}")
        self._label.setText(text)
        self.setAccessibleDescription(text)
        if action is None:
            self._callback = None
            self._action.hide()
        else:
            self._action.setText(action[0])
            self._action.setAccessibleDescription(text)  # what the button is about
            self._callback = action[1]
            self._action.show()
        self.show()
        announce(self, text)

    def controls(self) -> list[QWidget]:
        """Its buttons, in the order Tab reaches them."""
        return [self._action, self._close]

    def text(self) -> str:
        """The message shown, or "" when the bar is hidden."""
        return "" if self.isHidden() else self._label.text()

    def _run_action(self) -> None:
        callback = self._callback
        self.hide()
        if callback is not None:
            callback()
