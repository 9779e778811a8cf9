"""The prompt preset and length hint pickers in the toolbar, with a button to edit the presets."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QToolButton, QWidget

from glimpse.app.prompts import LENGTHS, Preset
from glimpse.app.qtcompat import emit
from glimpse.app.settings import Settings
from glimpse.app.widgets.preset_editor import PresetEditor


class PresetBar(QWidget):
    """Reads and writes the presets, the chosen one and the length hint through ``Settings``."""

    changed = Signal()

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self.combo = QComboBox()
        self.combo.setAccessibleName("Prompt preset")
        self.combo.setToolTip("Prompt preset: what the model is asked to do with the picture")
        self.combo.setMinimumContentsLength(18)
        self.length = QComboBox()
        self.length.setAccessibleName("Answer length")
        self.length.setToolTip("Answer length: how long answers should be")
        for hint in LENGTHS:
            self.length.addItem(hint.label, hint.key)
        self.edit_button = QToolButton()
        self.edit_button.setText("Edit…")
        self.edit_button.setToolTip("Edit, add or remove prompt presets")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.length)
        layout.addWidget(self.edit_button)

        self._presets: list[Preset] = settings.presets
        self._fill(settings.preset)
        self.length.setCurrentIndex(max(0, self.length.findData(settings.length)))
        self.combo.currentIndexChanged.connect(self._chosen)
        self.length.currentIndexChanged.connect(self._length_chosen)
        self.edit_button.clicked.connect(self.edit)
        self.editor: PresetEditor | None = None

    def _fill(self, current: str) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        for preset in self._presets:
            self.combo.addItem(preset.name)
            self.combo.setItemData(self.combo.count() - 1, preset.prompt, Qt.ItemDataRole.ToolTipRole)
        index = next((i for i, p in enumerate(self._presets) if p.name == current), 0)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)

    @property
    def presets(self) -> list[Preset]:
        return list(self._presets)

    def current(self) -> Preset:
        return self._presets[max(0, self.combo.currentIndex())]

    def length_key(self) -> str:
        return str(self.length.currentData())

    def set_presets(self, presets: list[Preset], current: str | None = None) -> None:
        """Replace the presets (and keep them in the settings)."""
        keep = current if current is not None else self.current().name
        self._presets = list(presets)
        self._settings.presets = self._presets
        self._fill(keep)
        self._settings.preset = self.current().name
        emit(self.changed)

    def choose(self, name: str) -> None:
        index = next((i for i, p in enumerate(self._presets) if p.name == name), -1)
        if index >= 0:
            self.combo.setCurrentIndex(index)

    def _chosen(self, _index: int) -> None:
        self._settings.preset = self.current().name
        emit(self.changed)

    def _length_chosen(self, _index: int) -> None:
        self._settings.length = self.length_key()
        emit(self.changed)

    def edit(self) -> None:
        """Open the editor (not modal: live captions keep running while the user edits)."""
        if self.editor is None:
            self.editor = PresetEditor(self._presets, self.current().name, self)
            self.editor.saved.connect(self.set_presets)
            self.editor.finished.connect(self._editor_closed)
        self.editor.show()
        self.editor.raise_()

    def _editor_closed(self, _result: int) -> None:
        if self.editor is not None:
            self.editor.deleteLater()
            self.editor = None
