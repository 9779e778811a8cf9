"""Transcripts: a conversation or a caption history as Markdown or plain text, captions also as SRT subtitles.

Pure functions over small records, so the formats are testable without a window, and one careful writer.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from glimpse.engine import durable

LAST_SUBTITLE_S = 4.0


@dataclass(frozen=True)
class ChatTurn:
    question: str
    answer: str
    asked_at: float  # epoch seconds
    stats: str = ""  # "TTFT 120 ms, 35 tok/s", shown under the answer


@dataclass(frozen=True)
class CaptionEntry:
    text: str
    frame_time: float  # when the captioned frame was captured (epoch seconds)
    finished_at: float


def _clock(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _stamp(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().splitlines()) or ">"


def conversation_markdown(turns: list[ChatTurn], *, model: str, source: str) -> str:
    started = _stamp(turns[0].asked_at) if turns else _stamp(_dt.datetime.now().timestamp())
    out = ["# Glimpse conversation", "", f"- Image: {source}", f"- Model: {model}", f"- Started: {started}", ""]
    for turn in turns:
        out += [f"## {_clock(turn.asked_at)} — You", "", turn.question.strip(), "", "**Glimpse:**", "",
                _quote(turn.answer), ""]
        if turn.stats:
            out += [f"*{turn.stats}*", ""]
    return "\n".join(out).rstrip() + "\n"


def conversation_text(turns: list[ChatTurn], *, model: str, source: str) -> str:
    started = _stamp(turns[0].asked_at) if turns else _stamp(_dt.datetime.now().timestamp())
    out = [f"Glimpse conversation about {source}, with {model}, started {started}", ""]
    for turn in turns:
        out += [f"[{_clock(turn.asked_at)}] You: {turn.question.strip()}", f"Glimpse: {turn.answer.strip()}", ""]
    return "\n".join(out).rstrip() + "\n"


def captions_text(entries: list[CaptionEntry], *, model: str, source: str) -> str:
    started = _stamp(entries[0].frame_time) if entries else "-"
    out = [f"Glimpse live captions of {source}, with {model}, started {started}", ""]
    out += [f"{_clock(e.frame_time)}  {' '.join(e.text.split())}" for e in entries]
    return "\n".join(out) + "\n"


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a failure (a full disk) never leaves a half-written file or destroys the
    file it was replacing: write a temporary file beside it, then rename it over."""
    durable.write_text(path, text, tmp=path.with_name(f".{path.name}.partial"))


def captions_markdown(entries: list[CaptionEntry], *, model: str, source: str) -> str:
    started = _stamp(entries[0].frame_time) if entries else "-"
    out = ["# Glimpse live captions", "", f"- Source: {source}", f"- Model: {model}", f"- Started: {started}", "",
           "| time | caption |", "|---|---|"]
    for e in entries:
        text = " ".join(e.text.split()).replace("|", "\\|")
        out.append(f"| {_clock(e.frame_time)} | {text} |")
    return "\n".join(out) + "\n"


def srt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def captions_srt(entries: list[CaptionEntry]) -> str:
    """Each caption shows from its frame's time until the next caption's frame, timed from the first frame.
    Captions are describing what was on screen at their frame, so that is when they belong."""
    if not entries:
        return ""
    t0 = entries[0].frame_time
    blocks = []
    for i, e in enumerate(entries):
        start = e.frame_time - t0
        # Frames are captured in order, but keep every cue at least 1 ms long whatever the clock did.
        end = max(entries[i + 1].frame_time - t0, start + 0.001) if i + 1 < len(entries) else start + LAST_SUBTITLE_S
        text = "\n".join(line for line in e.text.strip().splitlines() if line.strip()) or "…"
        blocks.append(f"{i + 1}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n")
    return "\n".join(blocks)
