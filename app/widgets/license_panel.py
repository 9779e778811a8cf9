"""The model licence, shown in full before a download, with Accept and Decline."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTextBrowser, QVBoxLayout, QWidget

from glimpse.app.qtcompat import emit
from glimpse.engine import CatalogEntry, catalog


class LicensePanel(QWidget):
    accepted = Signal(object, str)  # the catalogue entry, the licence text as shown
    declined = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.text = QTextBrowser()
        self.text.setAccessibleName("Licence text")
        self.accept_button = QPushButton("Accept and download")
        self.decline_button = QPushButton("Decline")
        self.text.setAccessibleDescription("The model's licence, to read before accepting it")
        self.accept_button.setToolTip("Accept this licence and start the download")
        self.decline_button.setToolTip("Do not download this model")
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.decline_button)
        row.addWidget(self.accept_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.text, 1)
        layout.addLayout(row)
        self._entry: CatalogEntry | None = None
        self._shown = ""
        self.accept_button.clicked.connect(self._accept)
        self.decline_button.clicked.connect(lambda: emit(self.declined))

    def show_license(self, entry: CatalogEntry, text: str) -> None:
        self._entry, self._shown = entry, text
        self.title.setText(f"<b>{entry.display_name}</b> is released under the {catalog.LICENSE_NAME} "
                           f"(<a href='{catalog.LICENSE_URL}'>{catalog.LICENSE_URL}</a>). Accept it to download.")
        self.text.setPlainText(text)
        self.show()
        self.accept_button.setFocus()

    def _accept(self) -> None:
        if self._entry is not None:
            emit(self.accepted, self._entry, self._shown)
