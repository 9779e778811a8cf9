"""The device choice in Settings, and the status line that names the device running each part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from glimpse.app.settings import Settings
from glimpse.app.widgets.settings_dialog import SettingsDialog
from glimpse.app.widgets.status_line import StatusLine
from glimpse.app.window import MainWindow
from glimpse.engine import Store
from glimpse.engine.runtime.gpu_backends import NO_VULKAN_BACKEND


def test_the_device_is_kept_and_checked(tmp_path: Path) -> None:
    settings = Settings.at(tmp_path / "glimpse.ini")
    assert settings.device == "auto"  # the GPU where it is proven, else the CPU
    settings.device = "gpu"
    assert Settings.at(tmp_path / "glimpse.ini").device == "gpu"
    with pytest.raises(ValueError):
        settings.device = "cuda"
    settings._set("device", "tpu")  # a hand-edited file: the default, not a crash
    assert Settings.at(tmp_path / "glimpse.ini").device == "auto"


def test_changing_the_device_in_settings_reloads_the_model(qtbot: QtBot, tmp_path: Path) -> None:
    settings = Settings.at(tmp_path / "glimpse.ini")
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    assert dialog.device.currentData() == "auto"
    assert not dialog.apply()  # nothing changed: no reload
    dialog.device.setCurrentIndex(dialog.device.findData("cpu"))
    assert dialog.apply() and settings.device == "cpu"
    again = SettingsDialog(settings)
    qtbot.addWidget(again)
    assert again.device.currentData() == "cpu"


def test_the_status_line_names_the_devices_and_why_not_the_gpu(qtbot: QtBot) -> None:
    line = StatusLine()
    qtbot.addWidget(line)
    line.set_devices("LLM: Vulkan (Intel UHD 770, 25/25 layers), vision: CPU")
    assert line.devices.text() == "LLM: Vulkan (Intel UHD 770, 25/25 layers), vision: CPU"
    line.set_devices("LLM: CPU, vision: CPU", NO_VULKAN_BACKEND)
    assert line.devices.text() == "LLM: CPU, vision: CPU" and line.devices.toolTip() == NO_VULKAN_BACKEND
    line.set_model("tiny (loading)")
    assert line.devices.text() == ""  # a model being loaded has no devices yet


def test_the_window_shows_the_loaded_models_devices(qtbot: QtBot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: window.status.devices.text() != "", timeout=5_000)
    assert window.status.devices.text() == "LLM: CPU, vision: CPU"
    # The settings' device reaches the loader.
    seen: list[Any] = []
    window.worker.load = lambda *args: seen.append(args)  # type: ignore[method-assign]
    window.settings.device = "gpu"
    window.use_model(window.settings.model)
    assert seen and seen[-1][2] == "gpu"


def test_a_gpu_asked_for_and_not_there_is_one_sentence(qtbot: QtBot, settings: Settings, model_store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU llama.cpp can use here: a build without Vulkan (CI's source install), or one whose only Vulkan device is
    # a software driver that llama.cpp leaves out. Settings > Device "GPU" then ends the load with the sentence and
    # the window's own advice, and the window stays usable.
    for name in ("GGML_VK_VISIBLE_DEVICES", "VK_DRIVER_FILES", "VK_ICD_FILENAMES"):
        monkeypatch.delenv(name, raising=False)
    settings.model, settings.threads, settings.device = "tiny", 1, "gpu"
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.worker.model_failed, timeout=60_000) as failed:
        window.show()
    message = str(failed.args[0])
    assert "so the GPU is not used" in message and "Settings > Device" in message, message
    assert "--device" not in message and "Traceback" not in message
    assert window.status.devices.text() == ""
    window.close()
