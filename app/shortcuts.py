"""The window's keyboard shortcuts: one table, the actions made from it, and the list Help > Keyboard shortcuts
shows (built from the actions themselves, so it cannot drift from what the keys do).

Each action is added to the window, so its key works wherever the focus is in it, including for actions that
also sit in a menu (a menu that is closed does not handle keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QWidget


@dataclass(frozen=True)
class Shortcut:
    name: str  # the action's text, as in the list
    keys: str  # QKeySequence's portable text
    what: str  # the description the list and the action's tool tip show


CAPTIONS = Shortcut("Start or stop live captions", "Ctrl+Shift+L", "Switch to live captions and start them, "
                    "or stop them")
FREEZE = Shortcut("Freeze the live frame", "Ctrl+Shift+F", "Keep the current frame and ask about it")
SCREENSHOT = Shortcut("Screenshot of the whole screen", "Ctrl+Shift+S", "Take a screenshot to ask about")
REGION = Shortcut("Screenshot of a region", "Ctrl+Shift+R", "Drag a rectangle on the screen to ask about")
ASK = Shortcut("Ask", "Ctrl+L", "Go to the question box (Enter sends the question)")
STOP = Shortcut("Stop", "Esc", "Stop the answer being written, or the live captions")
READ_ALOUD = Shortcut("Read aloud", "Ctrl+Shift+A", "Read captions and answers aloud, on or off")
PASTE = Shortcut("Paste image", "Ctrl+V", "Ask about the image on the clipboard")
OPEN = Shortcut("Open image or video…", "Ctrl+O", "Ask about an image, or play a video as the camera")
HELP = Shortcut("Keyboard shortcuts", "F1", "This list")


def make_action(window: QWidget, action: QAction | None, shortcut: Shortcut, run: Callable[[], object]) -> QAction:
    """A new action running ``run``, or ``action`` (already wired, and with its own tool tip) given its key; added to
    ``window`` so the key works wherever the focus is in it. The window makes one per shortcut
    (``MainWindow._install_shortcuts``)."""
    keys = QKeySequence(shortcut.keys)
    if action is None:
        action = QAction(shortcut.name, window)
        action.triggered.connect(lambda _checked=False: run())
        action.setToolTip(f"{shortcut.what} ({keys.toString(QKeySequence.SequenceFormat.NativeText)})")
    action.setShortcut(keys)
    action.setStatusTip(shortcut.what)
    window.addAction(action)
    return action


def table(actions: list[QAction]) -> list[tuple[str, str, str]]:
    """(name, keys as this platform writes them, description) for each action, for the list."""
    return [(a.text().replace("&", ""), a.shortcut().toString(QKeySequence.SequenceFormat.NativeText), a.statusTip())
            for a in actions]
