"""Settings that are not on the toolbar: the device, threads, screenshot delay, read-aloud, and where settings are
kept."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from glimpse.app.settings import MAX_DELAY_S, Settings
from glimpse.engine import default_threads


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, *, speech_reason: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._settings = settings
        self.device = QComboBox()
        for text, value in (("Automatic (the GPU if it passes its check)", "auto"), ("CPU", "cpu"),
                            ("GPU (Vulkan)", "gpu")):
            self.device.addItem(text, value)
        self.device.setCurrentIndex(max(0, self.device.findData(settings.device)))
        self.device.setToolTip("Where the model runs. Automatic uses the GPU once a short check has shown that it "
                               "computes what the CPU computes with its driver, and the CPU otherwise; GPU requires "
                               "it for the language model. The picture reader uses the GPU where the installed "
                               "onnxruntime has a provider for it that passes the same kind of check. Takes effect "
                               "when the model is next loaded.")
        self.threads = QSpinBox()
        self.threads.setRange(0, 256)
        self.threads.setSpecialValueText(f"Automatic ({default_threads()})")
        self.threads.setValue(settings.threads)
        self.threads.setToolTip("CPU threads for the model. More than the physical cores makes it slower. "
                                "Takes effect when the model is next loaded.")
        self.delay = QSpinBox()
        self.delay.setRange(0, MAX_DELAY_S)
        self.delay.setSuffix(" s")
        self.delay.setSpecialValueText("No delay")
        self.delay.setValue(settings.screenshot_delay)
        self.read_aloud = QCheckBox("Read captions and answers aloud")
        self.read_aloud.setChecked(settings.read_aloud and not speech_reason)
        self.read_aloud.setEnabled(not speech_reason)
        if speech_reason:
            self.read_aloud.setToolTip(speech_reason)
        reason = QLabel(speech_reason)
        reason.setWordWrap(True)
        reason.setVisible(bool(speech_reason))
        where = QLabel(f"Settings are kept in {settings.file_name}")
        where.setWordWrap(True)
        where.setStyleSheet("color:#666")

        form = QFormLayout()
        form.addRow("Device", self.device)
        form.addRow("Model threads", self.threads)
        form.addRow("Screenshot delay", self.delay)
        form.addRow("", self.read_aloud)
        form.addRow("", reason)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(where)
        layout.addWidget(buttons)

    def apply(self) -> bool:
        """Store the values; True when the model must be reloaded for them to take effect."""
        device = str(self.device.currentData())
        reload = self.threads.value() != self._settings.threads or device != self._settings.device
        self._settings.threads = self.threads.value()
        self._settings.device = device
        self._settings.screenshot_delay = self.delay.value()
        if self.read_aloud.isEnabled():
            self._settings.read_aloud = self.read_aloud.isChecked()
        return reload
