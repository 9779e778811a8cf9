"""Prompt presets: edited, added, removed and chosen presets and the length hint are kept across restarts."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from glimpse.app.prompts import DEFAULT_PRESETS, Preset, compose, presets_from_json, presets_to_json
from glimpse.app.settings import Settings
from glimpse.app.widgets.presets import PresetBar


def test_defaults_cover_the_product_list(settings: Settings) -> None:
    names = [p.name for p in settings.presets]
    assert names == ["Describe the scene", "Read the text", "Explain this screen or error", "Summarise a chart",
                     "Describe a facial expression"]


def test_compose_adds_the_length_hint() -> None:
    assert compose("What is it?", "short") == ("What is it? Answer in about 15 words.", 64)
    assert compose("  What is it? ", "none") == ("What is it?", 256)


def test_presets_round_trip_and_reject_garbage() -> None:
    assert presets_from_json(presets_to_json(DEFAULT_PRESETS)) == list(DEFAULT_PRESETS)
    for bad in ("[]", "{}", '[{"name": ""}]', '[{"name": "a", "prompt": 3}]'):
        try:
            presets_from_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_edited_presets_persist(qtbot: QtBot, tmp_path: Path) -> None:
    path = tmp_path / "glimpse.ini"
    bar = PresetBar(Settings.at(path))
    qtbot.addWidget(bar)
    bar.edit()
    editor = bar.editor
    assert editor is not None

    editor.add_button.click()  # a new preset, selected, named "New preset"
    editor.name.clear()
    qtbot.keyClicks(editor.name, "Count the people")
    editor.prompt.setPlainText("How many people are in this image?")
    editor.list.setCurrentRow(1)  # "Read the text"
    editor.remove_button.click()
    editor.list.setCurrentRow(len(editor.presets) - 1)
    with qtbot.waitSignal(bar.changed):
        editor.buttons.button(editor.buttons.StandardButton.Save).click()
    bar.length.setCurrentIndex(bar.length.findData("detailed"))
    assert bar.current() == Preset("Count the people", "How many people are in this image?")

    again = Settings.at(path)  # a new start reads the same file
    names = [p.name for p in again.presets]
    assert names == ["Describe the scene", "Explain this screen or error", "Summarise a chart",
                     "Describe a facial expression", "Count the people"]
    assert again.preset == "Count the people" and again.length == "detailed"
    reopened = PresetBar(again)
    qtbot.addWidget(reopened)
    assert reopened.current().prompt == "How many people are in this image?"
    assert reopened.length_key() == "detailed"


def test_editor_refuses_empty_and_duplicate_names(qtbot: QtBot, settings: Settings) -> None:
    bar = PresetBar(settings)
    qtbot.addWidget(bar)
    bar.edit()
    editor = bar.editor
    assert editor is not None
    editor.name.selectAll()
    qtbot.keyClick(editor.name, Qt.Key.Key_Delete)
    editor.save()
    assert "needs a name" in editor.problem.text()
    qtbot.keyClicks(editor.name, "Read the text")
    editor.save()
    assert "same name" in editor.problem.text()
    editor.restore_defaults()
    editor.save()
    assert settings.presets == list(DEFAULT_PRESETS)
