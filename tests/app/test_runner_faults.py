"""The window with the model in its runner process: a crash mid-answer costs a sentence and the answer is written
again; a second crash unloads the model with a way to load it again; the window, the picture and the conversation
stay; a question asked while the model loads waits for it instead of being dropped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pytestqt.qtbot import QtBot

from glimpse.app.settings import Settings
from glimpse.app.window import MainWindow
from glimpse.app.worker import NO_MODEL, Reply
from glimpse.engine.models.store import Store
from glimpse.engine.runner import faults

REPO = Path(__file__).resolve().parents[2]


def _window(qtbot: QtBot, settings: Settings, store: Store) -> MainWindow:
    settings.model, settings.threads, settings.image_size = "tiny", 1, 256
    w = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(w)
    return w


@pytest.fixture
def window(qtbot: QtBot, settings: Settings, model_store: Store) -> Iterator[MainWindow]:
    w = _window(qtbot, settings, model_store)
    with qtbot.waitSignal(w.worker.model_ready, timeout=30_000):
        w.show()
    yield w
    w.close()


def ask(qtbot: QtBot, window: MainWindow, question: str) -> Reply:
    window.chat.input.setText(question)
    with qtbot.waitSignal(window.worker.answered, timeout=60_000) as answered:
        window.chat.send_button.click()
    reply = answered.args[0]
    assert isinstance(reply, Reply)
    return reply


def test_the_model_runs_outside_the_window(model_store: Store, tmp_path: Path) -> None:
    """In a process of its own (this one converted the tiny model, so it has both runtimes mapped already)."""
    script = textwrap.dedent(f"""
        import json, os, sys, psutil
        from pathlib import Path
        from PySide6.QtWidgets import QApplication
        from glimpse.app.settings import Settings
        from glimpse.app.window import MainWindow
        from glimpse.engine.models.store import Store
        app = QApplication([])
        settings = Settings.at(sys.argv[1])
        settings.model, settings.threads = "tiny", 1
        window = MainWindow(settings, store=Store(Path({str(model_store.root)!r})), speech_engine="mock")
        seen = {{}}

        def ready(*_args):
            seen["runner"] = window.worker.worker._model.pid
            mapped = {{m.path.rsplit("/", 1)[-1] for m in psutil.Process().memory_maps()}}
            seen["native"] = sorted(n for n in mapped if n.startswith(("libllama", "libggml", "libonnxruntime")))
            seen["rss_mb"] = psutil.Process().memory_info().rss / 1e6
            app.quit()

        window.worker.model_ready.connect(ready)
        window.worker.model_failed.connect(lambda m: (print(m, file=sys.stderr), app.exit(1)))
        window.show()
        code = app.exec()
        print(json.dumps({{"code": code, "me": os.getpid(), **seen}}))
        window.close()
        app.processEvents()
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "glimpse.ini")], capture_output=True,
                          text=True, cwd=REPO, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["runner"] not in (None, seen["me"])
    assert seen["native"] == []  # neither llama.cpp nor onnxruntime is mapped in the window's process


def test_a_crash_mid_answer_costs_a_sentence_and_the_answer_comes(
        qtbot: QtBot, settings: Settings, model_store: Store, picture: np.ndarray,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "segv@answer#1")  # the first runner crashes mid-answer, the second answers
    window = _window(qtbot, settings, model_store)
    try:
        with qtbot.waitSignal(window.worker.model_ready, timeout=30_000):
            window.show()
        window.set_still(picture, "a test picture")
        restarted: list[bool] = []
        window.worker.answer_restarted.connect(lambda: restarted.append(True))
        reply = ask(qtbot, window, "What is in the picture?")
        assert reply.finish_reason in ("length", "stop") and reply.text
        assert restarted == [True]
        assert window.isVisible() and window.chat.turns[-1].answer == reply.text  # written once, after the restart
        assert "killed by SIGSEGV" in window.messages.text() and "trying once more" in window.messages.text()
        follow = ask(qtbot, window, "And what else?")  # the conversation moved to the new runner
        assert follow.text and follow.encode_ms == 0 and len(window.chat.turns) == 2
    finally:
        window.close()


def test_a_second_crash_unloads_the_model_and_offers_to_load_it_again(
        qtbot: QtBot, window: MainWindow, picture: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    window.set_still(picture, "a test picture")
    first = ask(qtbot, window, "What is in the picture?")
    monkeypatch.setenv(faults.ENV, "segv@prefill")  # every runner from now on
    os.kill(window.worker.worker._model.pid, 9)  # type: ignore[union-attr]
    with qtbot.waitSignal(window.worker.model_lost, timeout=60_000):
        window.chat.input.setText("And what else?")
        window.chat.send_button.click()
    qtbot.waitUntil(lambda: window.worker.state == NO_MODEL, timeout=10_000)
    assert window.isVisible() and window.model_name == ""
    assert "stopped again (killed by SIGSEGV)" in window.messages.text()
    assert window.chat.turns[0].answer == first.text  # the conversation so far is kept
    assert window.asking.picture is not None  # and the picture

    monkeypatch.delenv(faults.ENV)
    with qtbot.waitSignal(window.worker.model_ready, timeout=30_000):
        window.messages._action.click()  # "Load again"
    assert ask(qtbot, window, "And what else?").text


def test_a_question_asked_while_the_model_loads_waits_for_it(
        qtbot: QtBot, settings: Settings, model_store: Store, picture: np.ndarray) -> None:
    w = _window(qtbot, settings, model_store)
    try:
        w.show()
        qtbot.waitUntil(lambda: w.model_loading, timeout=5_000)  # the window asks for the model once it is up
        assert not w.model_name
        w.set_still(picture, "a test picture")
        loading_when_asked: list[bool] = []
        w.chat.ask.connect(lambda _text: loading_when_asked.append(w.model_loading))
        reply = ask(qtbot, w, "What is in the picture?")
        assert loading_when_asked == [True]  # it was asked before the model was ready
        assert reply.text and w.chat.turns[0].question == "What is in the picture?"
        assert "No model is loaded" not in w.messages.text()
    finally:
        w.close()
