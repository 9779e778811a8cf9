"""The model manager opens whatever state the models are in: a damaged one is listed as damaged, Remove deletes
it, and the window still starts (with the healthy model) when another model's model.json is damaged."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from glimpse.app.settings import Settings
from glimpse.app.widgets.model_manager import ModelManager
from glimpse.app.window import MainWindow
from glimpse.engine.models.store import Store
from tests.damaged import DAMAGE, healthy_model

# One of each family: unparsable, wrong shape, missing key, wrong type, infinite number, missing file, link.
CASES = ["not-json", "deeply-nested", "entry-without-sha256", "size-is-a-string", "hidden-is-infinite",
         "files-is-a-list", "file-missing", "path-leaves-the-folder"]


@pytest.mark.parametrize("damage", CASES)
def test_manager_lists_a_damaged_model_and_removes_it(qtbot: QtBot, settings: Settings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    store = Store(tmp_path / "home")
    folder = healthy_model(store.models_dir / "mine")
    DAMAGE[damage](folder)
    dialog = ModelManager(settings, store=store)
    qtbot.addWidget(dialog)
    dialog.show()
    status = dialog.table.status_of("mine")
    assert status.startswith("Damaged: ") and str(folder) in status, status
    dialog.select("mine")
    assert dialog.remove_button.isEnabled() and not dialog.use_button.isEnabled()

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(dialog.job_finished, timeout=10_000) as finished:
        dialog.remove_button.click()
    assert finished.args == ["done"]
    assert not folder.exists()
    assert "mine" not in [m.name for m in store.installed()]
    assert dialog.table.status_of("mine") == ""  # gone from the list (it is not a catalogue model)


def test_window_starts_with_a_damaged_model_beside_a_healthy_one(qtbot: QtBot, settings: Settings,
                                                                 model_store: Store) -> None:
    DAMAGE["entry-without-size"](healthy_model(model_store.models_dir / "broken"))
    settings.model, settings.threads = "broken", 1
    window = MainWindow(settings, store=model_store, speech_engine="mock")
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.worker.model_ready, timeout=20_000):  # falls back to the healthy one
        window.show()
    assert window.model_name == "tiny"
    manager = window.open_model_manager()
    assert manager.table.status_of("broken").startswith("Damaged: ")
    window.close()
