"""Transcripts (Markdown, SRT), read-aloud, and settings that fall back to defaults."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from glimpse.app.export import (
    CaptionEntry,
    ChatTurn,
    captions_markdown,
    captions_srt,
    captions_text,
    conversation_markdown,
    conversation_text,
    srt_time,
    write_file,
)
from glimpse.app.settings import Settings
from glimpse.app.speech import Speaker


def test_srt_times_follow_the_frames() -> None:
    entries = [CaptionEntry("A cat.", 1000.0, 1000.8), CaptionEntry("A cat on a mat.", 1002.25, 1003.0),
               CaptionEntry("Two\ncats.", 3725.5, 3726.0)]
    assert srt_time(3725.5 - 1000.0) == "00:45:25,500"
    assert captions_srt(entries) == (
        "1\n00:00:00,000 --> 00:00:02,250\nA cat.\n\n"
        "2\n00:00:02,250 --> 00:45:25,500\nA cat on a mat.\n\n"
        "3\n00:45:25,500 --> 00:45:29,500\nTwo\ncats.\n")
    assert captions_srt([]) == ""


def test_markdown_exports() -> None:
    md = captions_markdown([CaptionEntry("a | b", 0.0, 1.0)], model="tiny", source="cam")
    assert "| a \\| b |" in md and "- Source: cam" in md
    chat = conversation_markdown([ChatTurn("What?", "A dog.\nBrown.", 0.0, "TTFT 12 ms")], model="tiny",
                                 source="a screenshot")
    assert "> A dog.\n> Brown." in chat and "*TTFT 12 ms*" in chat and "- Image: a screenshot" in chat


def test_text_exports() -> None:
    t = dt.datetime(2026, 11, 27, 9, 30, 5).timestamp()
    text = captions_text([CaptionEntry("A cat\n on a mat.", t, t + 1), CaptionEntry("Gone.", t + 2, t + 3)],
                         model="tiny", source="Webcam")
    assert text == ("Glimpse live captions of Webcam, with tiny, started 2026-11-27 09:30:05\n\n"
                    "09:30:05  A cat on a mat.\n09:30:07  Gone.\n")
    chat = conversation_text([ChatTurn("What?", "A dog.", t)], model="tiny", source="a screenshot")
    assert chat == ("Glimpse conversation about a screenshot, with tiny, started 2026-11-27 09:30:05\n\n"
                    "[09:30:05] You: What?\nGlimpse: A dog.\n")


def test_a_failed_export_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "captions.md"
    write_file(target, "first transcript\n")
    assert target.read_text(encoding="utf-8") == "first transcript\n"

    def full_disk(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        write_file(target, "second transcript\n")
    assert target.read_text(encoding="utf-8") == "first transcript\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.md"]  # no partial file left behind


def test_read_aloud_speaks_the_newest_waiting_text(qtbot: QtBot) -> None:
    speaker = Speaker("mock")
    assert speaker.available and speaker.reason == ""
    speaker.say("first caption")
    speaker.say("second caption")
    speaker.say("third caption")  # replaces the second: captions are only worth hearing while current
    assert speaker._pending == "third caption"
    speaker.stop()


def test_read_aloud_unavailable_says_why() -> None:
    speaker = Speaker("no-such-engine")
    assert not speaker.available
    assert "no-such-engine" in speaker.reason or "cannot load" in speaker.reason


def test_settings_round_trip_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "s.ini"
    s = Settings.at(path)
    s.interval, s.threads, s.image_size, s.read_aloud, s.mode = 2.5, 3, 512, True, "ask"
    s.sync()
    again = Settings.at(path)
    assert (again.interval, again.threads, again.image_size, again.read_aloud, again.mode) == (2.5, 3, 512, True,
                                                                                                "ask")
    assert again.notices == []
    path.write_text("[General]\ninterval=-4\nimage_size=500\nread_aloud=maybe\n", encoding="utf-8")
    bad = Settings.at(path)
    assert (bad.interval, bad.image_size, bad.read_aloud) == (1.0, 0, False)
    assert len(bad.notices) == 3
