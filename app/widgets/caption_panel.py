"""Live mode's panel: the caption being written (large, for reading at a distance), the history with timestamps,
the interval, and Start/Stop, Copy and Export."""

from __future__ import annotations

import datetime as _dt

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from glimpse.app.announce import announce
from glimpse.app.export import CaptionEntry
from glimpse.app.qtcompat import emit
from glimpse.app.settings import MAX_INTERVAL_S

MAX_HISTORY = 2000  # a long session keeps its newest captions; exports take what is kept


class CaptionPanel(QWidget):
    start_requested = Signal()
    freeze_requested = Signal()
    stop_requested = Signal()
    interval_changed = Signal(float)
    export_markdown = Signal()
    export_srt = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.current = QLabel()
        self.current.setWordWrap(True)
        self.current.setTextFormat(Qt.TextFormat.PlainText)  # captions are one plain sentence, never markup
        self.current.setMinimumHeight(72)
        self.current.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.current.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.current.font()
        font.setPointSizeF(font.pointSizeF() * 1.5)
        self.current.setFont(font)
        self.current.setAccessibleName("Current caption")
        self.history = QListWidget()
        self.history.setWordWrap(True)
        self.history.setAccessibleName("Caption history")
        self.history.setToolTip("The captions so far, newest last, each with the time of its frame")

        self.start_button = QPushButton("Start captions")
        self.freeze_button = QPushButton("Freeze and ask")
        self.freeze_button.setToolTip("Keep the current frame and ask questions about it")
        self.interval = QDoubleSpinBox()
        self.interval.setRange(0.0, MAX_INTERVAL_S)
        self.interval.setSingleStep(0.5)
        self.interval.setDecimals(1)
        self.interval.setSuffix(" s")
        self.interval.setSpecialValueText("back to back")
        self.interval.setToolTip("Time between captions; 0 captions back to back, as fast as the model allows")
        self.interval.setAccessibleName("Caption interval")
        self.copy_button = QPushButton("Copy")
        self.markdown_button = QPushButton("Export…")
        self.markdown_button.setToolTip("Save the captions with their times as Markdown or plain text")
        self.srt_button = QPushButton("Export SRT…")
        self.clear_button = QPushButton("Clear")
        self.start_button.setToolTip("Start or stop captioning the live source (Ctrl+Shift+L)")
        self.copy_button.setToolTip("Copy all captions with their times")
        self.srt_button.setToolTip("Save the captions as SRT subtitles")
        self.clear_button.setToolTip("Forget the captions so far")
        self.current.setToolTip("The newest caption")

        top = QHBoxLayout()
        top.addWidget(self.start_button)
        top.addWidget(QLabel("Every"))
        top.addWidget(self.interval)
        top.addStretch(1)
        top.addWidget(self.freeze_button)
        tools = QHBoxLayout()
        for button in (self.copy_button, self.markdown_button, self.srt_button, self.clear_button):
            tools.addWidget(button)
        tools.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.current)
        layout.addWidget(QLabel("History"))
        layout.addWidget(self.history, 1)
        layout.addLayout(tools)

        self.start_button.clicked.connect(self._toggle)
        self.freeze_button.clicked.connect(lambda: emit(self.freeze_requested))
        self.interval.valueChanged.connect(lambda v: emit(self.interval_changed, float(v)))
        self.copy_button.clicked.connect(self.copy_all)
        self.markdown_button.clicked.connect(lambda: emit(self.export_markdown))
        self.srt_button.clicked.connect(lambda: emit(self.export_srt))
        self.clear_button.clicked.connect(self.clear)

        self._entries: list[CaptionEntry] = []
        self._writing = ""
        self.running = False
        self._update_buttons()

    def _toggle(self) -> None:
        emit(self.stop_requested if self.running else self.start_requested)

    def set_running(self, running: bool) -> None:
        self.running = running
        self.start_button.setText("Stop captions" if running else "Start captions")
        if not running:
            self._writing = ""
            last = self._entries[-1].text if self._entries else ""
            self.current.setText(last)

    def begin_caption(self) -> None:
        self._writing = ""

    def append(self, text: str) -> None:
        self._writing += text
        self.current.setText(self._writing.strip() + " …")

    def add(self, entry: CaptionEntry) -> None:
        self._entries.append(entry)
        del self._entries[:-MAX_HISTORY]
        self._writing = ""
        self.current.setText(entry.text)
        stamp = _dt.datetime.fromtimestamp(entry.frame_time).strftime("%H:%M:%S")
        self.history.addItem(f"{stamp}  {entry.text}")
        while self.history.count() > MAX_HISTORY:
            self.history.takeItem(0)
        self.history.scrollToBottom()
        self._update_buttons()
        announce(self.current, entry.text)

    @property
    def entries(self) -> list[CaptionEntry]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.history.clear()
        self.current.setText("")
        self._update_buttons()

    def copy_all(self) -> None:
        lines = [self.history.item(i).text() for i in range(self.history.count())]
        QGuiApplication.clipboard().setText("\n".join(lines))

    def _update_buttons(self) -> None:
        has = bool(self._entries)
        for button in (self.copy_button, self.markdown_button, self.srt_button, self.clear_button):
            button.setEnabled(has)
