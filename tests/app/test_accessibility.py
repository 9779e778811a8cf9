"""Keyboard and screen reader: every control has a name and a description in the accessibility tree, Tab goes
through the window in reading order, the shortcuts work and are listed, and new captions and answers are
announced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6 import QtGui
from PySide6.QtCore import Qt
from PySide6.QtGui import QAccessible, QAccessibleEvent, QAccessibleInterface, QKeySequence
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QComboBox, QLineEdit, QPushButton, QVBoxLayout, QWidget
from pytestqt.qtbot import QtBot

from glimpse.app import announce as announce_module
from glimpse.app.announce import MAX_SPOKEN, announcement
from glimpse.app.export import CaptionEntry
from glimpse.app.settings import Settings
from glimpse.app.widgets.caption_panel import CaptionPanel
from glimpse.app.widgets.chat_panel import ChatPanel
from glimpse.app.window import MainWindow
from glimpse.app.worker import Reply
from glimpse.engine.models.store import Store

Role = QAccessible.Role
CONTROLS = {Role.PushButton, Role.CheckBox, Role.RadioButton, Role.ComboBox, Role.EditableText, Role.SpinBox,
            Role.Slider, Role.ButtonMenu, Role.ButtonDropDown, Role.ButtonDropGrid, Role.List, Role.Table,
            Role.Tree, Role.PageTab, Role.Dial, Role.HotkeyField, Role.Link}


@pytest.fixture
def bare_window(qtbot: QtBot, settings: Settings, tmp_path: Path) -> Iterator[MainWindow]:
    """The window as at a first start, without a model (the tree is the same; nothing needs to run)."""
    store = Store(tmp_path / "models")
    w = MainWindow(settings, store=store, speech_engine="mock")
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.close()


def walk(iface: QAccessibleInterface, depth: int = 0) -> Iterator[QAccessibleInterface]:
    yield iface
    if depth > 40:
        return
    for i in range(iface.childCount()):
        child = iface.child(i)
        if child is not None and child.isValid():
            yield from walk(child, depth + 1)


def unnamed_controls(root: QWidget) -> list[str]:
    """Every visible control in ``root``'s accessibility tree without a name or without a description."""
    iface = QAccessible.queryAccessibleInterface(root)
    assert iface is not None and iface.isValid()
    problems = []
    for node in walk(iface):
        state = node.state()
        if node.role() not in CONTROLS or state.invisible or state.offscreen:
            continue
        obj = node.object()
        what = f"{node.role().name} {type(obj).__name__} {obj.objectName() if obj else ''}"
        if not node.text(QAccessible.Text.Name).strip():
            problems.append(f"{what}: no name")
        elif not node.text(QAccessible.Text.Description).strip():
            problems.append(f"{what} {node.text(QAccessible.Text.Name)!r}: no description")
    return problems


def test_every_control_of_the_window_is_named_and_described(bare_window: MainWindow, qtbot: QtBot) -> None:
    for mode in ("live", "ask"):
        bare_window.set_mode(mode)
        QApplication.processEvents()
        assert unnamed_controls(bare_window) == []
    bare_window.messages.show_message("Something failed.", "error", ("Try again", lambda: None))
    assert unnamed_controls(bare_window) == []


def test_the_check_fails_on_an_unnamed_control(qtbot: QtBot) -> None:

    box = QWidget()
    qtbot.addWidget(box)
    layout = QVBoxLayout(box)
    layout.addWidget(QPushButton("Named"))
    edit = QLineEdit()
    layout.addWidget(edit)
    box.show()
    qtbot.waitExposed(box)
    problems = unnamed_controls(box)
    assert any("EditableText" in p and "no name" in p for p in problems)
    assert any("Named" in p and "no description" in p for p in problems)
    edit.setAccessibleName("Question")
    edit.setToolTip("What to ask")
    box.findChild(QPushButton).setToolTip("Does something")
    assert unnamed_controls(box) == []


def test_the_dialogs_are_named_and_described_too(bare_window: MainWindow, qtbot: QtBot) -> None:
    manager = bare_window.open_model_manager()
    qtbot.waitExposed(manager)
    problems = unnamed_controls(manager)
    assert problems == [], "\n".join(problems)
    dialog = bare_window.show_shortcuts()
    qtbot.waitExposed(dialog)
    assert unnamed_controls(dialog) == []
    dialog.close()


def _tab_chain(window: QWidget, start: QWidget, limit: int = 200) -> list[QWidget]:
    """The widgets Tab visits from ``start``, as QWidget.focusNextPrevChild would, until it comes back."""
    chain: list[QWidget] = []
    widget = start
    for _ in range(limit):
        if widget.isVisibleTo(window) and widget.isEnabled() and widget.focusPolicy() & Qt.FocusPolicy.TabFocus \
                and widget.window() is window:
            if widget in chain:
                break
            chain.append(widget)
        widget = widget.nextInFocusChain()
    return chain


def test_tab_reaches_every_control_in_reading_order(bare_window: MainWindow) -> None:
    w = bare_window
    w.set_mode("ask")
    w.chat.new_picture("a picture")
    w.chat.begin_answer("What?")
    w.chat.finish(Reply("An answer.", "stop"))
    t, a = w.toolbar, w.chat
    chain = _tab_chain(w, t.source)
    expected = [t.source, t.capture, t.mode, t.presets.combo, t.presets.length, t.presets.edit_button, t.size_box,
                t.model, t.widgetForAction(t.read_aloud), t.widgetForAction(t.settings_action), w.view,
                a.transcript, a.input, a.send_button, a.copy_button, a.export_button]
    assert [x for x in chain if x in expected] == [x for x in expected if x.isEnabled()]
    # Nothing focusable is left out of the chain.
    focusable = [x for x in w.findChildren(QWidget) if x.isVisibleTo(w) and x.isEnabled()
                 and x.focusPolicy() & Qt.FocusPolicy.TabFocus and x.window() is w
                 and not isinstance(x.parentWidget(), (QComboBox, QAbstractScrollArea))]
    assert set(focusable) <= set(chain), [type(x).__name__ + ":" + x.accessibleName() for x in focusable
                                           if x not in chain]
    w.set_mode("live")
    c = w.captions
    chain = _tab_chain(w, t.source)
    live = [w.view, c.start_button, c.interval, c.freeze_button]
    assert [x for x in chain if x in live] == live


def test_shortcuts_are_listed_and_work(bare_window: MainWindow, qtbot: QtBot) -> None:

    w = bare_window
    rows = w.show_shortcuts().rows()
    names = [r[0] for r in rows]
    for needed in ("Start or stop live captions", "Freeze the live frame", "Screenshot of the whole screen",
                   "Ask", "Stop", "Read aloud", "Keyboard shortcuts"):
        assert needed in names
    assert all(keys and what for _, keys, what in rows)
    assert len({keys for _, keys, _ in rows}) == len(rows)  # no key does two things
    assert dict((r[0], r[1]) for r in rows)["Ask"] == QKeySequence("Ctrl+L").toString(
        QKeySequence.SequenceFormat.NativeText)
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=5000)
    w.set_mode("live")
    QTest.keyClick(w.toolbar.source, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert w.settings.mode == "ask" and w.chat.input.hasFocus()
    read_aloud = w.toolbar.read_aloud
    read_aloud.setEnabled(True)
    before = read_aloud.isChecked()
    QTest.keyClick(w.chat.input, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert read_aloud.isChecked() != before
    # Without a live source, freezing says so instead of doing nothing.
    QTest.keyClick(w.chat.input, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert "no live picture to freeze" in w.messages.text()


def test_new_captions_and_answers_are_announced(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:

    sent: list[tuple[object, str]] = []

    def record(event: QAccessibleEvent) -> None:
        message = event.message() if hasattr(event, "message") else event.object().accessibleDescription()
        sent.append((event.object(), message))

    monkeypatch.setattr(announce_module, "send", record)
    captions = CaptionPanel()
    qtbot.addWidget(captions)
    captions.add(CaptionEntry("A cat on a mat.", 0.0, 0.0))
    assert sent == [(captions.current, "A cat on a mat.")]
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.new_picture("a picture")
    chat.begin_answer("What?")
    chat.append("It is ")
    assert len(sent) == 1  # not while it is being written
    chat.finish(Reply("It is **a cat**.\n\n- black\n- small", "stop"))
    assert sent[-1] == (chat.transcript, "Glimpse answered: It is a cat. black small")
    chat.begin_answer("Again?")
    chat.finish(Reply("", "cancelled"))
    assert len(sent) == 2  # nothing said, nothing announced


def test_the_announcement_event() -> None:


    label = QWidget()
    event = announcement(label, "word " * 400)
    assert event.object() is label
    if hasattr(QtGui, "QAccessibleAnnouncementEvent"):
        assert isinstance(event, QtGui.QAccessibleAnnouncementEvent)
        assert event.politeness() == QAccessible.AnnouncementPoliteness.Polite
        assert len(event.message()) <= MAX_SPOKEN + 1 and event.message().endswith("…")
    else:
        assert event.type() == QAccessible.Event.DescriptionChanged
