"""``glimpse self-test``: the engine's self-test, then the main window opened and closed offscreen.

It works the same from source and from the frozen bundle, and exits non-zero on any failure, so CI can prove a
built bundle (Qt plugins, llama.cpp's libraries, onnxruntime) on a machine with no screen.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image
from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QEventLoop, QTimer

from glimpse.app.main import make_app
from glimpse.app.settings import Settings
from glimpse.app.sources import Sources
from glimpse.app.speech import Speaker
from glimpse.app.window import MainWindow
from glimpse.engine import SelfTestReport, Store, run_engine_selftest

_MODEL_NAME = "selftest-tiny"


def _first_window(work: Path, report: SelfTestReport) -> None:
    """Open the window with no model, as at a first start, and record how long after process start it showed."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # the self-test never needs a screen

    report.versions["PySide6"] = pyside_version
    app = make_app([])
    window = MainWindow(Settings.at(work / "first.ini"), store=Store(work / "empty-home"))
    window.show()
    app.processEvents()
    shown = time.time() - psutil.Process().create_time()
    report.versions["first window"] = f"{shown:.2f} s after the process started"
    window.close()
    app.processEvents()


def _video_check(work: Path, report: SelfTestReport) -> None:
    """Play a generated animated GIF through Qt Multimedia, as the app plays videos and cameras: this proves the
    multimedia plugin and its FFmpeg libraries are there (a frozen build can easily miss them)."""

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (64, 48), c) for c in colours]
    path = work / "colours.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)
    app = make_app([])
    sources = Sources()
    seen: list[tuple[int, int, int]] = []
    outcome: list[str] = []
    loop = QEventLoop()

    def frame() -> None:
        latest = sources.feed.latest() if sources.feed is not None else None
        if latest is not None:
            seen.append(tuple(int(v) for v in np.asarray(latest.pixels)[24, 32]))  # type: ignore[arg-type]

    def stopped(error: str) -> None:
        outcome.append(error)
        loop.quit()

    sources.frame.connect(frame)
    sources.live_stopped.connect(stopped)
    QTimer.singleShot(20_000, loop.quit)
    started = time.perf_counter()
    sources.open_video(path)
    loop.exec()
    sources.shutdown()
    app.processEvents()
    if outcome != [""]:
        raise RuntimeError(f"the video did not play: {outcome[0] if outcome else 'timed out'}")
    close = [c for c in colours if any(max(abs(a - b) for a, b in zip(c, s, strict=True)) < 40 for s in seen)]
    if not close:
        raise RuntimeError(f"the video's frames came out wrong: {seen[:5]}")
    report.versions["video playback"] = (f"{len(seen)} frames, {len(close)} of {len(colours)} colours seen, "
                                         f"{time.perf_counter() - started:.2f} s")


def _speech_check(report: SelfTestReport) -> None:
    """Qt's text-to-speech plugins are there (the silent "mock" engine always ships with them) and a voice engine
    starts; which real engines work depends on the system (speech-dispatcher on Linux)."""
    # The import is the check: a bundle without Qt's text-to-speech module fails this step, not the self-test's start.
    from PySide6.QtTextToSpeech import QTextToSpeech  # noqa: PLC0415

    make_app([])
    engines = QTextToSpeech.availableEngines()
    if "mock" not in engines:
        raise RuntimeError(f"Qt's text-to-speech plugins are missing (engines found: {engines or 'none'})")
    if not Speaker("mock").available:
        raise RuntimeError("Qt's text-to-speech plugins load, but no engine starts")
    real = Speaker()
    report.versions["read-aloud"] = (f"engines {', '.join(engines)}; "
                                     + (f"using {real.engine}" if real.available else f"unavailable: {real.reason}"))


def _window_check(work: Path, model_dir: Path, report: SelfTestReport) -> None:

    app = make_app([])
    store = Store(work / "home")
    store.models_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, store.models_dir / _MODEL_NAME)
    settings = Settings.at(work / "settings.ini")
    settings.model = _MODEL_NAME
    window = MainWindow(settings, store=store)
    window.show()

    loop = QEventLoop()
    outcome: list[str] = []

    def ready(*_: object) -> None:
        outcome.append("ready")
        loop.quit()

    def failed(message: str) -> None:
        outcome.append(message)
        loop.quit()

    window.worker.model_ready.connect(ready)
    window.worker.model_failed.connect(failed)
    QTimer.singleShot(60_000, loop.quit)
    if not window.model_name:
        loop.exec()
    if outcome[:1] != ["ready"] and not window.model_name:
        raise RuntimeError(f"the window did not load the model: {outcome[0] if outcome else 'timed out'}")
    window.close()
    app.processEvents()
    if window.isVisible():
        raise RuntimeError("the window did not close")


def main(argv: list[str] | None = None) -> int:
    report = SelfTestReport()
    with tempfile.TemporaryDirectory(prefix="glimpse-selftest-") as tmp:
        work = Path(tmp)
        report.step("open the main window offscreen", lambda: _first_window(work, report))
        report.step("play a video through Qt Multimedia", lambda: _video_check(work, report))
        report.step("load Qt's text-to-speech plugins", lambda: _speech_check(report))
        model_dir = run_engine_selftest(report, work)
        if model_dir is not None:
            report.step("open the main window offscreen, load the model, close it",
                        lambda: _window_check(work, model_dir, report))
    for line in report.lines():
        print(line, flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
