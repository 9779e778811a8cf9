"""The app's publishing writes are durable: exports and the settings file (see engine.durable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glimpse.app.export import write_file
from glimpse.app.settings import Settings
from tests.durability import SyncLog, needs_proc

pytestmark = needs_proc


def test_exports_are_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SyncLog().install(monkeypatch)
    write_file(tmp_path / "captions.srt", "1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    log.assert_durable(tmp_path / "captions.srt")
    assert (tmp_path / "captions.srt").read_text(encoding="utf-8").endswith("hello\n")


def test_settings_file_and_its_folder_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.at(tmp_path / "conf" / "glimpse.ini")
    settings.mode = "ask"
    log = SyncLog().install(monkeypatch)
    settings.sync()
    path = tmp_path / "conf" / "glimpse.ini"
    # Qt renames its temporary file over the old one inside sync() (QSaveFile, which syncs the file first);
    # what Glimpse adds is the file and the folder entry reaching the disk before sync() returns.
    synced = [p for kind, p, _ in log.events if kind == "fsync"]
    assert str(path) in synced and str(path.parent) in synced
    assert Settings.at(path).mode == "ask"
