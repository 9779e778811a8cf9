"""Starting and closing: first run opens the model manager, closing mid-work joins every thread, `python -m glimpse.app`
and ``app.main.main`` open the window."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from glimpse.app import threads as app_threads
from glimpse.app.settings import Settings
from glimpse.app.window import MainWindow
from glimpse.engine.models.download import DownloadOptions
from glimpse.engine.models.store import Store
from tests.app.conftest import write_video
from tests.fakehub import REPO, FakeHub, make_repo


def test_first_run_opens_the_model_manager(qtbot: QtBot, settings: Settings, tmp_path: Path) -> None:
    window = MainWindow(settings, store=Store(tmp_path / "empty"), speech_engine="mock")
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.manager is not None and window.manager.isVisible(), timeout=5_000)
    assert window.status.state_key == "no model"
    assert window.toolbar.model.currentText() == "No model"
    window.close()


def test_closing_during_live_captions_stops_everything(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    window.captions.interval.setValue(0.0)
    with qtbot.waitSignal(window.worker.captioned, timeout=20_000):
        window.sources.open_video(write_video(tmp_path / "long.avi", frames=300, fps=30))
    window.close()
    assert app_threads.running() == []


def test_closing_during_an_answer(qtbot: QtBot, window: MainWindow, picture: np.ndarray) -> None:
    window.settings.image_size = 256
    window.toolbar.presets.length.setCurrentIndex(window.toolbar.presets.length.findData("detailed"))
    window.set_still(picture, "a picture")
    with qtbot.waitSignal(window.worker.text, timeout=20_000):
        window.ask("Describe everything.")
    window.close()
    assert app_threads.running() == []


def test_closing_during_a_download(qtbot: QtBot, settings: Settings, tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    store.accept_license("apple-amlr", "licence", "fastvlm-0.5b")
    with FakeHub({REPO: make_repo(tmp_path / "repo")}) as hub:
        hub.cut_after, hub.down_after_cut = 100_000, True
        window = MainWindow(settings, store=store, speech_engine="mock",
                            download_options=DownloadOptions(endpoint=hub.endpoint, offline=False, retries=30,
                                                             retry_wait=0.2, timeout=5.0))
        qtbot.addWidget(window)
        window.show()
        qtbot.waitUntil(lambda: window.manager is not None, timeout=5_000)
        manager = window.manager
        assert manager is not None
        manager.select("fastvlm-0.5b")
        manager.download_button.click()
        qtbot.waitUntil(lambda: hub.gets("model.safetensors") != [], timeout=10_000)
        window.close()  # the download is retrying against a dead server: cancelled and joined
        assert app_threads.running() == []
    huggingface_hub.close_session()
    assert any(p.name.endswith(".incomplete") for p in store.download_path("fastvlm-0.5b").iterdir())


def test_python_dash_m_app_starts(tmp_path: Path) -> None:
    """``python -m glimpse.app`` opens the window and keeps running until it is closed (here: terminated). In a child
    process: once ``QApplication.exec`` has returned, this process's later event loops would not run."""
    env = {"QT_QPA_PLATFORM": "offscreen", "GLIMPSE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    process = subprocess.Popen([sys.executable, "-m", "glimpse.app", "--settings", str(tmp_path / "s.ini"),
                                "--mode", "ask"],
                               env=env,
                               cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=4)  # still running: the window is open, nothing crashed
    finally:
        process.terminate()
        _, err = process.communicate(timeout=10)
    assert "Traceback" not in err, err[-2000:]
    assert Settings.at(tmp_path / "s.ini").mode == "ask"  # the options were read (Qt saved them while running)
