"""The region picker returns the dragged rectangle, cancels on Esc, and cuts the right pixels on HiDPI screens."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtTest import QTest
from pytestqt.qtbot import QtBot

from glimpse.app.capture import screen
from glimpse.app.capture.region_overlay import RegionOverlay, crop, to_physical
from glimpse.app.images import from_qimage, to_qimage
from glimpse.app.window import MainWindow


def patterned_shot(width: int, height: int, ratio: float) -> tuple[QPixmap, np.ndarray]:
    """A grab of ``width`` x ``height`` physical pixels whose every pixel encodes its own coordinates."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs % 256, ys % 256, (xs // 256) * 16 + ys // 256], axis=-1).astype(np.uint8)
    shot = QPixmap.fromImage(to_qimage(pixels))
    shot.setDevicePixelRatio(ratio)
    return shot, pixels


def drag(widget: RegionOverlay, start: QPoint, end: QPoint) -> None:
    QTest.mousePress(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(widget, (start + end) / 2)
    QTest.mouseMove(widget, end)
    QTest.mouseRelease(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, end)


@pytest.fixture
def overlay(qtbot: QtBot) -> RegionOverlay:
    shot, _ = patterned_shot(800, 600, 2.0)  # a 400 x 300 logical screen at 200 %
    widget = RegionOverlay(shot)
    qtbot.addWidget(widget)
    widget.setGeometry(0, 0, 400, 300)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_drag_returns_the_rectangle(qtbot: QtBot, overlay: RegionOverlay) -> None:
    with qtbot.waitSignal(overlay.selected) as selected:
        drag(overlay, QPoint(30, 40), QPoint(130, 90))
    assert selected.args[0] == QRect(30, 40, 100, 50)


def test_dragging_up_and_left_gives_the_same_rectangle(qtbot: QtBot, overlay: RegionOverlay) -> None:
    with qtbot.waitSignal(overlay.selected) as selected:
        drag(overlay, QPoint(130, 90), QPoint(30, 40))
    assert selected.args[0] == QRect(30, 40, 100, 50)


def test_a_click_is_not_a_selection_and_esc_cancels(qtbot: QtBot, overlay: RegionOverlay) -> None:
    chosen: list[QRect] = []
    overlay.selected.connect(chosen.append)
    drag(overlay, QPoint(50, 50), QPoint(51, 52))
    assert chosen == [] and overlay.selection.isNull()
    with qtbot.waitSignal(overlay.cancelled):
        QTest.keyClick(overlay, Qt.Key.Key_Escape)


def test_hidpi_crop_takes_the_physical_pixels(qtbot: QtBot, overlay: RegionOverlay) -> None:
    with qtbot.waitSignal(overlay.selected) as selected:
        drag(overlay, QPoint(30, 40), QPoint(130, 90))
    image = crop(overlay.shot, selected.args[0])
    assert (image.width(), image.height()) == (200, 100)  # twice the logical size
    _, pixels = patterned_shot(800, 600, 2.0)
    assert np.array_equal(from_qimage(image), pixels[80:180, 60:260])


@pytest.mark.parametrize(("ratio", "rect", "expected"), [
    (1.0, QRect(10, 20, 30, 40), QRect(10, 20, 30, 40)),
    (2.0, QRect(10, 20, 30, 40), QRect(20, 40, 60, 80)),
    # 125 %: the near edge 10 * 1.25 = 12.5 rounds down to 12, the far edge 50 * 1.25 = 62.5 up to 63.
    (1.25, QRect(10, 10, 40, 40), QRect(12, 12, 51, 51)),
    (1.5, QRect(1, 1, 3, 3), QRect(1, 1, 5, 5)),
    # Clipped to the grab.
    (2.0, QRect(390, 290, 50, 50), QRect(780, 580, 20, 20)),
])
def test_logical_to_physical(ratio: float, rect: QRect, expected: QRect) -> None:
    assert to_physical(rect, ratio, QSize(800, 600)) == expected


def test_a_second_monitor_uses_its_own_ratio(qtbot: QtBot) -> None:
    """Each screen has its own overlay and grab: the same logical drag on a 100 % screen is cut 1:1."""
    shot, pixels = patterned_shot(500, 400, 1.0)
    widget = RegionOverlay(shot)
    qtbot.addWidget(widget)
    widget.setGeometry(0, 0, 500, 400)
    widget.show()
    with qtbot.waitSignal(widget.selected) as selected:
        drag(widget, QPoint(30, 40), QPoint(130, 90))
    image: QImage = crop(shot, selected.args[0])
    assert np.array_equal(from_qimage(image), pixels[40:90, 30:130])


def test_screenshot_of_a_region_through_the_window(qtbot: QtBot, window: object,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(window, MainWindow)
    shot, pixels = patterned_shot(1600, 1600, 2.0)
    monkeypatch.setattr(screen, "grab", lambda _s: QPixmap(shot))
    window.take_screenshot("region")
    qtbot.waitUntil(lambda: bool(window.sources.screen.overlays), timeout=5_000)
    assert not window.isVisible()  # out of its own screenshot
    overlay = window.sources.screen.overlays[0]
    overlay.setGeometry(0, 0, 800, 800)  # the offscreen screen is 800 x 800 logical pixels
    with qtbot.waitSignal(window.sources.still, timeout=5_000) as still:
        drag(overlay, QPoint(100, 50), QPoint(300, 250))
    assert np.array_equal(still.args[0], pixels[100:500, 200:600])
    assert window.isVisible() and window.settings.mode == "ask"
    assert "400×400" in still.args[1]
