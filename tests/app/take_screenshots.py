"""Make the README screenshots: the real window under X (Xvfb), with the tiny random test model.

    xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python tests/app/take_screenshots.py

Writes docs/screenshots/live-captions.png (captioning a generated video played as the camera) and
docs/screenshots/screenshot-chat.png (a screen region picked on the overlay, then asked about). The tiny model has
random weights, so its words are nonsense: the pictures show the window, not the model's quality. Everything runs
in a temporary folder (model store, settings); nothing is downloaded.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QLabel

from glimpse.app.images import from_qimage
from glimpse.app.main import make_app
from glimpse.app.settings import Settings
from glimpse.app.window import MainWindow
from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.synthetic import CheckpointSpec, write_checkpoint
from glimpse.engine.models.store import Store

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "screenshots"
MAX_BYTES = 200_000


def wait_until(app: Any, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            window = next((w for w in app.topLevelWidgets() if hasattr(w, "messages")), None)
            detail = f": {window.messages.text()} ({window.status.state_key})" if window is not None else ""
            raise TimeoutError(f"the window did not get there in time{detail}")
        app.processEvents()
        time.sleep(0.02)


def write_video(path: Path) -> Path:
    """A little street scene: a red car drives past a house and a traffic light. It changes enough from frame to
    frame for the engine's change detection to let frames through (a still scene would be skipped)."""
    w, h, frames, fps = 640, 400, 360, 24
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (235, 206, 135)  # sky (BGR)
        img[290:] = (60, 140, 60)  # grass
        img[310:380] = (90, 90, 90)  # road
        cv2.circle(img, (60 + i, 70), 34, (60, 220, 255), -1)  # sun
        cv2.rectangle(img, (400, 160), (560, 290), (180, 200, 230), -1)  # house
        cv2.fillPoly(img, [np.array([(385, 160), (480, 95), (575, 160)])], (50, 50, 160))
        cv2.rectangle(img, (460, 225), (500, 290), (40, 70, 110), -1)
        cv2.rectangle(img, (600, 140), (625, 230), (30, 30, 30), -1)  # traffic light, changing every second
        lit = (i // fps) % 2
        cv2.circle(img, (612, 160), 9, (40, 40, 230) if lit else (40, 40, 60), -1)
        cv2.circle(img, (612, 205), 9, (40, 60, 40) if lit else (60, 220, 60), -1)
        x = (i * 12) % (w + 240) - 240
        cv2.rectangle(img, (x, 300), (x + 220, 360), (40, 40, 220), -1)  # car
        cv2.rectangle(img, (x + 50, 270), (x + 170, 300), (40, 40, 200), -1)
        cv2.circle(img, (x + 50, 365), 18, (20, 20, 20), -1)
        cv2.circle(img, (x + 170, 365), 18, (20, 20, 20), -1)
        writer.write(img)
    writer.release()
    return path


def save_small(widget: Any, path: Path) -> None:
    """Grab the window and save it as a PNG under MAX_BYTES (palette colours; scaled down if still too big)."""

    image = Image.fromarray(from_qimage(widget.grab().toImage()))
    scale = 1.0
    while True:
        shown = image if scale == 1.0 else image.resize((int(image.width * scale), int(image.height * scale)),
                                                        Image.Resampling.LANCZOS)
        shown.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES or scale < 0.5:
            break
        scale *= 0.85
    print(f"{path.name}: {shown.width}x{shown.height}, {path.stat().st_size // 1000} KB")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="glimpse-shots-"))
    os.environ["GLIMPSE_HOME"] = str(work / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"


    checkpoint = write_checkpoint(work / "llava-fastvithd_tiny_stage3", CheckpointSpec())
    store = Store.default()
    store.models_dir.mkdir(parents=True)
    convert_checkpoint(checkpoint, store.models_dir / "tiny-test-model", quant="f16", name="tiny-test-model")

    app = make_app([])
    settings = Settings.at(work / "glimpse.ini")
    settings.model, settings.threads, settings.image_size, settings.interval = "tiny-test-model", 1, 256, 0.5
    window = MainWindow(settings)
    window.resize(1200, 740)
    window.move(40, 30)
    window.show()
    try:
        shoot(app, window)
    finally:
        window.close()
        QApplication.processEvents()
    return 0


def shoot(app: Any, window: Any) -> None:
    work = Path(os.environ["GLIMPSE_HOME"]).parent
    wait_until(app, lambda: bool(window.model_name))

    # Live captions of a video played as the camera.
    window.sources.open_video(write_video(work / "street.avi"))
    wait_until(app, lambda: len(window.captions.entries) >= 5)
    wait_until(app, lambda: window.status.state_key == "generating", timeout=20)
    save_small(window, OUT / "live-captions.png")
    window.sources.stop_live()

    # A screenshot chat: something on screen, a region picked on the overlay, a question about it.
    error = QLabel("<h2>Traceback (most recent call last)</h2><pre>  File \"report.py\", line 12, in &lt;module&gt;\n"
                   "    data = load(\"sales.csv\")\nFileNotFoundError: [Errno 2] No such file or directory: "
                   "'sales.csv'</pre>")
    error.setStyleSheet("background:white;color:#222;padding:18px;font-size:15px")
    error.setWindowFlags(Qt.WindowType.FramelessWindowHint)
    error.setGeometry(200, 220, 760, 220)
    error.show()
    wait_until(app, error.isVisible)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    window.toolbar.presets.choose("Explain this screen or error")
    window.take_screenshot("region")
    wait_until(app, lambda: bool(window.sources.screen.overlays))
    overlay = window.sources.screen.overlays[0]
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    start, end = QPoint(190, 210), QPoint(970, 450)
    QTest.mousePress(overlay, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(overlay, end)
    QTest.mouseRelease(overlay, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)
    wait_until(app, lambda: window.asking.picture is not None)
    error.close()
    window.ask("")
    wait_until(app, lambda: len(window.chat.turns) == 1)
    window.ask("What should I do to fix it?")
    wait_until(app, lambda: len(window.chat.turns) == 2)
    window.chat.input.setText("Which line fails?")
    save_small(window, OUT / "screenshot-chat.png")


if __name__ == "__main__":
    sys.exit(main())
