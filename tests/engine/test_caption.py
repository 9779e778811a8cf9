"""Headless live captioning: newest frame wins, unchanged frames skipped, video files as cameras, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from glimpse.engine.errors import CaptureError, InputError
from glimpse.engine.runtime.caption import (
    BRIEF_SUFFIX,
    Frame,
    LatestFrame,
    caption_prompt,
    caption_stream,
    changed,
    open_camera,
    open_source,
    open_video,
    thumbnail,
)
from glimpse.engine.runtime.model import Model, load_model

REPO = Path(__file__).resolve().parents[2]
SCENES = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def write_video(path: Path, frames_per_scene: int = 5, fps: float = 25.0, rounds: int = 1) -> Path:
    """A video of flat-coloured scenes with a moving square: identical frames within a scene; the scenes ``rounds``
    times over."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (160, 120))
    assert writer.isOpened()
    for n in range(len(SCENES) * rounds):
        i, colour = n % len(SCENES), SCENES[n % len(SCENES)]
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[:] = colour[::-1]  # OpenCV writes BGR
        frame[20 + 10 * i:60 + 10 * i, 30:70] = 255
        for _ in range(frames_per_scene):
            writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "scenes.avi")


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Iterator[Model]:
    with load_model(tiny_model_dir, n_ctx=1024, threads=2) as m:
        yield m


def test_latest_frame_keeps_only_the_newest() -> None:
    slot = LatestFrame()
    for i in range(3):
        slot.put(Frame(np.zeros((2, 2, 3), np.uint8), float(i), i))
    frame = slot.take(0)
    assert frame is not None and frame.index == 2
    assert slot.dropped == 2
    assert slot.take(0.01) is None


def test_change_detection_ignores_noise_but_sees_a_scene_change() -> None:
    rng = np.random.default_rng(0)
    base = np.full((120, 160, 3), 100, np.uint8)
    noisy = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    other = base.copy()
    other[:60] = 200
    assert changed(None, thumbnail(base))
    assert not changed(thumbnail(base), thumbnail(noisy))
    assert changed(thumbnail(base), thumbnail(other))


def test_prompt_gets_the_brief_suffix() -> None:
    assert caption_prompt("What is happening?") == f"What is happening? {BRIEF_SUFFIX}"
    with pytest.raises(InputError):
        caption_prompt("   ")


def test_captions_only_changed_frames(model: Model, video: Path) -> None:
    source = open_video(video, realtime=False)
    sent: list[int] = []
    captions = list(caption_stream(model, source, size=256, max_tokens=4, on_frame=lambda f: sent.append(f.index)))
    assert [c.frame_index for c in captions] == [0, 5, 10, 15]
    assert sent == [0, 5, 10, 15]  # told of exactly the frames that went to the model
    assert captions[-1].skipped_unchanged == 12  # frames 1-4, 6-9 and 11-14 (16-19 come after the last one)
    assert all(c.text and c.answer.timings.image_tokens == 16 for c in captions)


def test_realtime_playback_drops_frames_instead_of_queueing(model: Model, tmp_path: Path) -> None:
    path = write_video(tmp_path / "fast.avi", frames_per_scene=150, fps=200.0)  # 3 s: room for a slow first caption
    source = open_video(path, realtime=True)
    try:
        # A slow consumer (10 ms per streamed piece) against a 200 fps source, whatever the machine's speed.
        captions = list(caption_stream(model, source, size=256, max_tokens=24, count=3,
                                       on_piece=lambda _piece: time.sleep(0.01)))
    finally:
        source.close()
    assert len(captions) >= 2
    # At 200 fps the capture thread outpaces the model, so frames were replaced, not queued.
    assert captions[-1].dropped_frames > 0
    assert captions == sorted(captions, key=lambda c: c.frame_index)


def test_count_interval_and_cancel(model: Model, video: Path) -> None:
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    source = open_video(video, realtime=False)
    captions = list(caption_stream(model, source, size=256, max_tokens=2, count=2, every=0.3, sleep=nap))
    assert len(captions) == 2
    # The loop waited out the interval in short naps (so a cancel is seen quickly): each nap asks for at most 0.1 s
    # and never more than is left, and the captions are the interval apart. How many naps it takes, and how long
    # each one really sleeps, is the machine's business.
    assert naps and max(naps) <= 0.1 and sum(naps) <= 0.3 + 1e-6
    assert captions[1].finished_at - captions[0].finished_at >= 0.3
    cancel = threading.Event()
    cancel.set()
    assert list(caption_stream(model, open_video(video, realtime=False), size=256, cancel=cancel)) == []


def test_sources_fail_with_sentences(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="No camera could be opened at index 7"):
        open_camera(7)
    with pytest.raises(CaptureError, match="does not exist"):
        open_source(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(CaptureError, match="cannot be read as a video"):
        open_video(junk)


def _glimpse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse.engine", *args], capture_output=True, text=True, cwd=REPO,
                          check=False, timeout=300)


def test_cli_caption_jsonl(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The CLI plays files in real time, like a camera, from before the model loads: scenes that change every 0.4 s
    # for two minutes, so however long the load takes, two different scenes come after it.
    video = write_video(tmp_path / "long.avi", frames_per_scene=10, rounds=75)
    result = _glimpse("caption", str(tiny_model_dir), "--source", str(video), "--size", "256", "--count", "2",
                      "--jsonl")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2
    assert all(line["text"] and "T" in line["time"] for line in lines)


def test_cli_caption_without_camera(tiny_model_dir: Path) -> None:
    result = _glimpse("caption", str(tiny_model_dir), "--source", "7", "--count", "1")
    assert result.returncode == 1
    assert result.stderr.startswith("glimpse: error: No camera could be opened at index 7.")
    assert "Traceback" not in result.stderr


def test_capture_without_opencv_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The packaged app leaves OpenCV out: headless capture then explains itself instead of failing to import."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(CaptureError, match="needs OpenCV") as raised:
        open_camera(0)
    assert "Glimpse window" in str(raised.value)
    video = tmp_path / "v.avi"
    video.write_bytes(b"x")
    with pytest.raises(CaptureError, match="needs OpenCV"):
        open_video(video)
