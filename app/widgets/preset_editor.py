"""A dialog to edit, add, remove and reorder prompt presets, or go back to the built-in ones."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from glimpse.app.prompts import DEFAULT_PRESETS, Preset
from glimpse.app.qtcompat import emit


class PresetEditor(QDialog):
    saved = Signal(list, str)  # the presets, the one selected

    def __init__(self, presets: list[Preset], current: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Prompt presets")
        self._presets = list(presets)
        self.list = QListWidget()
        self.list.setAccessibleName("Presets")
        self.name = QLineEdit()
        self.name.setAccessibleName("Preset name")
        self.prompt = QPlainTextEdit()
        self.prompt.setAccessibleName("Preset prompt")
        self.prompt.setTabChangesFocus(True)
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.up_button = QPushButton("Up")
        self.down_button = QPushButton("Down")
        self.defaults_button = QPushButton("Restore built-in presets")
        self.problem = QLabel()
        self.problem.setStyleSheet("color:#a00")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save
                                        | QDialogButtonBox.StandardButton.Cancel)

        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Prompt", self.prompt)
        side = QVBoxLayout()
        for button in (self.add_button, self.remove_button, self.up_button, self.down_button):
            side.addWidget(button)
        side.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.list, 1)
        top.addLayout(side)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(form)
        layout.addWidget(QLabel("The length hint is chosen separately and added to every preset."))
        layout.addWidget(self.problem)
        bottom = QHBoxLayout()
        bottom.addWidget(self.defaults_button)
        bottom.addStretch(1)
        bottom.addWidget(self.buttons)
        layout.addLayout(bottom)

        self.list.currentRowChanged.connect(self._show)
        self.name.textEdited.connect(self._edited)
        self.prompt.textChanged.connect(self._edited)
        self.add_button.clicked.connect(self.add)
        self.remove_button.clicked.connect(self.remove)
        self.up_button.clicked.connect(lambda: self._move(-1))
        self.down_button.clicked.connect(lambda: self._move(1))
        self.defaults_button.clicked.connect(self.restore_defaults)
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        self._loading = False
        self._fill(next((i for i, p in enumerate(self._presets) if p.name == current), 0))

    @property
    def presets(self) -> list[Preset]:
        return list(self._presets)

    def _fill(self, row: int) -> None:
        self._loading = True
        self.list.clear()
        for preset in self._presets:
            self.list.addItem(preset.name)
        self._loading = False
        self.list.setCurrentRow(min(max(row, 0), len(self._presets) - 1))
        self.remove_button.setEnabled(len(self._presets) > 1)

    def _show(self, row: int) -> None:
        if row < 0 or row >= len(self._presets):
            return
        self._loading = True
        self.name.setText(self._presets[row].name)
        self.prompt.setPlainText(self._presets[row].prompt)
        self._loading = False

    def _edited(self) -> None:
        row = self.list.currentRow()
        if self._loading or row < 0:
            return
        self._presets[row] = Preset(self.name.text(), self.prompt.toPlainText())
        item = self.list.item(row)
        item.setText(self.name.text() or "(no name)")

    def add(self) -> None:
        base, n = "New preset", 1
        names = {p.name for p in self._presets}
        name = base
        while name in names:
            n += 1
            name = f"{base} {n}"
        self._presets.append(Preset(name, "Describe what you see in this image."))
        self._fill(len(self._presets) - 1)
        self.name.setFocus(Qt.FocusReason.OtherFocusReason)
        self.name.selectAll()

    def remove(self) -> None:
        row = self.list.currentRow()
        if len(self._presets) > 1 and 0 <= row < len(self._presets):
            del self._presets[row]
            self._fill(row)

    def _move(self, step: int) -> None:
        row = self.list.currentRow()
        to = row + step
        if 0 <= row < len(self._presets) and 0 <= to < len(self._presets):
            self._presets[row], self._presets[to] = self._presets[to], self._presets[row]
            self._fill(to)

    def restore_defaults(self) -> None:
        self._presets = list(DEFAULT_PRESETS)
        self._fill(0)

    def save(self) -> None:
        names = [p.name.strip() for p in self._presets]
        if any(not n for n in names) or any(not p.prompt.strip() for p in self._presets):
            self.problem.setText("Every preset needs a name and a prompt.")
            return
        if len(set(names)) != len(names):
            self.problem.setText("Two presets have the same name; rename one.")
            return
        cleaned = [Preset(p.name.strip(), p.prompt.strip()) for p in self._presets]
        row = self.list.currentRow()
        emit(self.saved, cleaned, cleaned[max(row, 0)].name)
        self.accept()
