"""The main window on the tiny model: live captions from a video, asking about pictures, stopping, exports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from glimpse.app import ask_mode
from glimpse.app.images import to_qimage
from glimpse.app.widgets.chat_panel import ChatPanel
from glimpse.app.widgets.toolbar import TILES, MainToolbar
from glimpse.app.window import MainWindow
from glimpse.app.worker import Reply
from glimpse.engine.runtime.model import Model
from tests.app.conftest import write_video


def test_live_captions_from_a_video_file(qtbot: QtBot, window: MainWindow, video: Path, tmp_path: Path) -> None:
    window.captions.interval.setValue(0.0)  # back to back
    with qtbot.waitSignal(window.worker.live_ended, timeout=30_000) as ended:
        window.sources.open_video(video)  # in live mode, with a model: captions start by themselves
    assert ended.args[0] == "ended"
    entries = window.captions.entries
    assert len(entries) >= 2
    assert all(e.text for e in entries)
    assert [e.frame_time for e in entries] == sorted(e.frame_time for e in entries)
    assert window.captions.history.count() == len(entries)
    assert "TTFT" in window.status.timings.text() and "tok/s" in window.status.timings.text()
    assert "sweep.avi has ended" in window.messages.text()
    assert not window.captions.running

    window.export_captions_srt(tmp_path / "c.srt")
    srt = (tmp_path / "c.srt").read_text(encoding="utf-8")
    assert srt.startswith("1\n00:00:00,000 --> ") and f"\n{len(entries)}\n" in srt
    window.export_captions_markdown(tmp_path / "c.md")
    assert "| time | caption |" in (tmp_path / "c.md").read_text(encoding="utf-8")
    assert "- Source: sweep.avi" in (tmp_path / "c.md").read_text(encoding="utf-8")  # after the video ended
    window.export_captions_markdown(tmp_path / "c.txt")
    lines = (tmp_path / "c.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("Glimpse live captions of sweep.avi") and len(lines) == 2 + len(entries)


def test_stop_captions_while_running(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    long_video = write_video(tmp_path / "long.avi", frames=200, fps=20)
    window.captions.interval.setValue(0.0)
    with qtbot.waitSignal(window.worker.captioned, timeout=20_000):
        window.sources.open_video(long_video)
    assert window.captions.running
    with qtbot.waitSignal(window.worker.live_ended, timeout=5_000) as ended:
        window.captions.start_button.click()  # now "Stop captions"
    assert ended.args[0] == "stopped"
    assert window.captions.start_button.text() == "Start captions"


def ask(qtbot: QtBot, window: MainWindow, question: str) -> Reply:
    window.chat.input.setText(question)
    with qtbot.waitSignal(window.worker.answered, timeout=20_000) as answered:
        window.chat.send_button.click()
    reply = answered.args[0]
    assert isinstance(reply, Reply)
    return reply


def test_ask_and_follow_up_about_a_picture(qtbot: QtBot, window: MainWindow, picture: np.ndarray,
                                          tmp_path: Path) -> None:
    window.settings.image_size = 256
    window.set_still(picture, "a test picture")
    assert window.settings.mode == "ask" and window.side.currentWidget() is window.chat
    first = ask(qtbot, window, "What is in the picture?")
    assert first.text and first.encode_ms > 0  # encoded when the question came, or read ahead just before
    assert window.chat.turns[0].answer == first.text
    assert window.chat.regenerate_button.isEnabled()
    assert "encode" in window.status.timings.text() or "image read ahead" in window.status.timings.text()

    second = ask(qtbot, window, "What colour is it?")
    assert second.encode_ms == 0 and second.cached_positions > 0  # the image was not encoded again
    assert len(window.chat.turns) == 2
    assert "image cached" in window.status.timings.text()
    assert "What colour is it?" in window.chat.plain_text()

    window.chat.copy_button.click()
    assert QGuiApplication.clipboard().text() == second.text
    window.export_conversation(tmp_path / "chat.md")
    md = (tmp_path / "chat.md").read_text(encoding="utf-8")
    assert "What colour is it?" in md and "a test picture" in md
    window.export_conversation(tmp_path / "chat.txt")
    txt = (tmp_path / "chat.txt").read_text(encoding="utf-8")
    assert "You: What colour is it?" in txt and "**" not in txt


def test_a_new_picture_is_read_while_the_question_is_typed(in_process: None, qtbot: QtBot, window: MainWindow,
                                                           picture: np.ndarray,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    encodes: list[int] = []
    real_encode = Model.encode_image
    monkeypatch.setattr(Model, "encode_image", lambda self, image, **k: encodes.append(k.get("size") or 0)
                        or real_encode(self, image, **k))
    window.settings.image_size = 256
    with qtbot.waitSignal(window.worker.prepared, timeout=20_000) as prepared:
        window.set_still(picture, "a test picture")  # the worker reads it at once
    assert prepared.args[1] is True and encodes == [256]
    first = ask(qtbot, window, "What is in the picture?")
    assert encodes == [256]  # not encoded again for the question
    assert first.read_ahead and first.encode_ms > 0 and "image read ahead" in window.status.timings.text()
    assert "image read ahead" in window.chat.plain_text()
    follow = ask(qtbot, window, "And the colours?")
    assert not follow.read_ahead and follow.encode_ms == 0 and encodes == [256]

    # A picture asked about at once (before it was read) is encoded once, and the answer is about it.
    encodes.clear()
    other = np.ascontiguousarray(picture[::-1])
    window.set_still(other, "another picture")
    reply = ask(qtbot, window, "What is in the picture?")
    assert reply.text and encodes == [256]

    # A new size before the first question: the picture is read again at that size.
    encodes.clear()
    with qtbot.waitSignal(window.worker.prepared, timeout=20_000):
        window.set_still(picture, "a third picture")
    with qtbot.waitSignal(window.worker.prepared, timeout=20_000) as prepared:
        window.toolbar.size_box.setCurrentIndex(window.toolbar.size_box.findData(384))
    assert prepared.args[1] is True and encodes == [256, 384]
    assert ask(qtbot, window, "What is it?").read_ahead and encodes == [256, 384]


def test_small_text_reads_the_picture_with_tiles(qtbot: QtBot, window: MainWindow, picture: np.ndarray) -> None:
    box = window.toolbar.size_box
    box.setCurrentIndex(box.findData(TILES))
    assert window.settings.tiles and window.settings.image_size == 0
    with qtbot.waitSignal(window.worker.prepared, timeout=60_000) as prepared:
        window.set_still(picture, "a big screenshot")
    assert prepared.args[1] is True
    rows = window.worker.worker._conversation.image_rows  # type: ignore[union-attr]
    assert rows is not None and rows.tiles == (2, 2)
    assert rows.rows.shape[0] == 5 * (rows.size // 64) ** 2  # the whole picture, then four tiles
    reply = ask(qtbot, window, "What does the small print say?")
    assert reply.read_ahead and reply.text

    box.setCurrentIndex(box.findData(512))  # any plain size turns tiles off again
    assert not window.settings.tiles and window.settings.image_size == 512
    again = MainToolbar(window.settings)  # and the choice is restored at the next start
    assert again.size_box.currentData() == 512
    window.settings.tiles = True
    assert MainToolbar(window.settings).size_box.currentData() == TILES


def test_empty_question_uses_the_preset_and_regenerate(qtbot: QtBot, window: MainWindow,
                                                      picture: np.ndarray) -> None:
    window.settings.image_size = 256
    window.toolbar.presets.choose("Read the text")
    window.set_still(picture, "a test picture")
    ask(qtbot, window, "")
    assert window.chat.turns[0].question.startswith("Read all the text")
    with qtbot.waitSignal(window.worker.answered, timeout=20_000) as answered:
        window.chat.regenerate_button.click()
    assert answered.args[0].encode_ms == 0  # regenerated on the cached image
    assert len(window.chat.turns) == 1


def test_regenerate_replaces_the_last_answer_of_a_conversation(in_process: None, qtbot: QtBot, window: MainWindow,
                                                               picture: np.ndarray,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    window.settings.image_size = 256
    window.set_still(picture, "a test picture")
    first = ask(qtbot, window, "What is in the picture?")
    second = ask(qtbot, window, "What colour is it?")
    before = window.chat.turns
    assert window.chat.regenerate_button.isEnabled()  # not only for the first answer
    encodes: list[object] = []
    real_encode = Model.encode_image
    monkeypatch.setattr(Model, "encode_image", lambda *a, **k: encodes.append(a) or real_encode(*a, **k))
    # Regenerate samples with a random seed; a few seeds make the tiny random model write only whitespace.
    monkeypatch.setattr(ask_mode, "random", SimpleNamespace(randrange=lambda _n: 1))

    with qtbot.waitSignal(window.worker.answered, timeout=20_000) as answered:
        window.chat.regenerate_button.click()
    again = answered.args[0]
    assert isinstance(again, Reply) and again.finish_reason != "cancelled" and again.generated_tokens > 0
    # The worker asked the follow-up again on the cached image and first turn: no encode, a short prefill.
    assert encodes == [] and again.encode_ms == 0
    assert again.cached_positions >= second.cached_positions
    turns = window.chat.turns
    assert len(turns) == 2
    assert turns[0] == before[0] and turns[0].answer == first.text  # the first answer stays as it was
    assert turns[1].question == "What colour is it?" and turns[1].answer == again.text
    assert turns[1].asked_at > before[1].asked_at
    # The new answer took the old one's place in the transcript: two questions, two answers, in order.
    text = window.chat.plain_text()
    assert text.count("You:") == 2 and text.count("Glimpse:") == 2 and text.count("What colour is it?") == 1
    assert text.index("What is in the picture?") < text.index(first.text) < text.index("What colour is it?")
    assert text.rstrip().endswith(f"{again.text}\n{turns[1].stats}".rstrip())
    # The engine's conversation was changed the same way: the old answer is gone from its history.
    engine_turns = window.worker.worker._conversation.turns  # type: ignore[union-attr]
    assert len(engine_turns) == 2 and engine_turns[0][1].strip() == first.text
    assert engine_turns[1][0].startswith("What colour is it?") and engine_turns[1][1].strip() == again.text
    assert window.chat.regenerate_button.isEnabled()


def _chat_with_two_answers(qtbot: QtBot) -> ChatPanel:
    """A chat panel about a picture, with Alpha? answered apple and Beta? answered banana."""
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.new_picture("a picture")
    for question, answer in (("Alpha?", "apple"), ("Beta?", "banana")):
        chat.begin_answer(question)
        chat.finish(Reply(answer, "stop"))
    return chat


def test_chat_panel_writes_a_regenerated_answer_in_place(qtbot: QtBot) -> None:
    chat = _chat_with_two_answers(qtbot)
    chat.begin_answer("Gamma?")
    chat.fail("It broke.")
    turn = chat.begin_regenerate()
    assert turn is not None and turn.answer == "banana"
    assert chat.busy and "banana" not in chat.plain_text() and len(chat.turns) == 1
    chat.append("cher")
    assert "Beta?" in chat.plain_text() and "cher" in chat.plain_text()
    chat.finish(Reply("cherry", "stop"))
    text = chat.plain_text()
    assert [t.answer for t in chat.turns] == ["apple", "cherry"]
    assert "banana" not in text and text.count("Beta?") == 1
    assert text.index("apple") < text.index("cherry") < text.index("Gamma?") < text.index("It broke.")


def test_chat_panel_keeps_the_answer_a_regenerate_did_not_replace(qtbot: QtBot) -> None:
    chat = _chat_with_two_answers(qtbot)
    assert chat.begin_regenerate() is not None
    chat.finish(Reply("", "cancelled"))  # stopped before the first word
    assert [t.answer for t in chat.turns] == ["apple", "banana"] and not chat.busy
    assert "banana" in chat.plain_text() and "this answer is kept" in chat.plain_text()
    assert chat.begin_regenerate() is not None
    chat.fail("The model fell over.")
    assert [t.answer for t in chat.turns] == ["apple", "banana"]
    text = chat.plain_text()
    assert text.count("banana") == 1 and text.index("banana") < text.index("The model fell over.")
    assert chat.begin_regenerate() is not None  # and it can still be regenerated
    chat.finish(Reply("blueberry", "stop"))
    assert [t.answer for t in chat.turns] == ["apple", "blueberry"] and "banana" not in chat.plain_text()


def test_stop_button_stops_an_answer(qtbot: QtBot, window: MainWindow, picture: np.ndarray) -> None:
    window.settings.image_size = 256
    window.toolbar.presets.length.setCurrentIndex(window.toolbar.presets.length.findData("detailed"))
    window.set_still(picture, "a test picture")
    window.worker.text.connect(lambda _t: window.chat.stop_button.click() if window.chat.busy else None)
    reply = ask(qtbot, window, "Describe every detail.")
    assert reply.finish_reason == "cancelled" and reply.generated_tokens < 512
    assert not window.chat.busy and window.chat.send_button.isEnabled()


def test_escape_stops_an_answer(qtbot: QtBot, window: MainWindow, picture: np.ndarray) -> None:
    window.settings.image_size = 256
    window.toolbar.presets.length.setCurrentIndex(window.toolbar.presets.length.findData("detailed"))
    window.set_still(picture, "a test picture")
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    window.worker.text.connect(lambda _t: QTest.keyClick(window.chat.input, Qt.Key.Key_Escape)
                               if window.chat.busy else None)
    reply = ask(qtbot, window, "Describe every detail.")
    assert reply.finish_reason == "cancelled" and reply.generated_tokens < 512


def test_paste_and_drop_make_a_new_picture(qtbot: QtBot, window: MainWindow, picture: np.ndarray,
                                           tmp_path: Path) -> None:
    QGuiApplication.clipboard().setImage(to_qimage(picture))
    window.toolbar.paste_action.trigger()
    assert window.view.badge.startswith("A pasted image (160×120)")
    assert "pasted image" in window.chat.plain_text()

    Image.fromarray(picture).save(tmp_path / "photo.png")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "photo.png"))])
    # QDragEnterEvent takes a QPoint (6.11 has no QPointF overload), QDropEvent a QPointF.
    enter = QDragEnterEvent(QPoint(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window.view, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(20, 20), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.sources.still, timeout=10_000):
        QApplication.sendEvent(window.view, drop)
    assert window.view.badge.startswith("Photo.png (160×120)")


def test_freeze_a_live_frame_and_ask(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    window.settings.image_size = 256
    with qtbot.waitSignal(window.sources.frame, timeout=10_000):
        window.sources.open_video(write_video(tmp_path / "long.avi", frames=200, fps=20))
    with qtbot.waitSignal(window.worker.live_ended, timeout=10_000) as ended:
        window.captions.freeze_button.click()  # keeps the frame, stops captions, switches to Ask
    assert ended.args[0] == "stopped"
    assert window.settings.mode == "ask" and window.asking.picture is not None
    assert window.view.badge.startswith("A frame from long.avi at ")
    reply = ask(qtbot, window, "What is this?")
    assert reply.encode_ms > 0 and window.chat.turns[0].answer == reply.text
    assert window.sources.feed is not None  # the camera keeps running for the next freeze
