"""A settings file that is half-written or garbage is set aside beside itself, rebuilt, and mentioned once."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from glimpse.app.settings import Settings

GOOD = "[General]\ninterval=2.5\nthreads=3\nmode=ask\n"


@pytest.mark.parametrize(("name", "content"), [
    ("truncated mid-line", GOOD.encode()[:GOOD.index("threads") + 4]),
    ("truncated section", b"[Gene"),
    ("garbage", bytes(range(256)) * 4),
    ("NUL bytes", b"[General]\ninterval=2.5\n\0\0\0\0\0\0\0\0"),
    ("not UTF-8", b"[General]\nmodel=\xff\xfe\n"),
])
def test_a_damaged_settings_file_is_set_aside_and_rebuilt(name: str, content: bytes, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "glimpse.ini"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="glimpse"):
        settings = Settings.at(path)
    aside = tmp_path / "glimpse.ini.damaged"
    assert aside.read_bytes() == content  # kept as it was, beside the new one
    assert (settings.interval, settings.threads, settings.mode) == (1.0, 0, "live")  # the defaults
    assert len(settings.notices) == 1 and str(path) in settings.notices[0] and aside.name in settings.notices[0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        settings.notices[0].removesuffix(" Your settings are back to their defaults.")]

    settings.interval = 3.0  # rebuilt: the next write is a whole new file, read back without a word
    settings.sync()
    again = Settings.at(path)
    assert again.interval == 3.0 and again.notices == []
    assert aside.read_bytes() == content and not (tmp_path / "glimpse.ini.damaged-2").exists()


def test_a_good_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "glimpse.ini"
    path.write_text(GOOD + "; a comment\n\n[window]\ngeometry=@ByteArray(\\x1\\0)\n", encoding="utf-8")
    settings = Settings.at(path)
    assert settings.notices == [] and settings.interval == 2.5 and settings.mode == "ask"
    assert not list(tmp_path.glob("*.damaged*"))


def test_a_second_damaged_file_does_not_replace_the_first_copy(tmp_path: Path) -> None:
    path = tmp_path / "glimpse.ini"
    for n, junk in enumerate((b"\0first", b"\0second")):
        path.write_bytes(junk)
        assert len(Settings.at(path).notices) == 1
        assert (tmp_path / ("glimpse.ini.damaged" + ("-2" if n else ""))).read_bytes() == junk


def test_a_settings_folder_that_cannot_be_used_is_said(tmp_path: Path) -> None:
    blocker = tmp_path / "config"
    blocker.write_text("a file where the settings folder should be")
    settings = Settings.at(blocker / "glimpse.ini")
    assert len(settings.notices) == 1
    assert f"Glimpse cannot use {blocker}, its settings folder: it is a file, not a folder." in settings.notices[0]
    assert "GLIMPSE_HOME" not in settings.notices[0]  # it does not move the settings
    assert settings.interval == 1.0  # the defaults, and the window still opens
