"""Tell assistive technology about a new caption or a finished answer, as a screen reader user would hear a chat
message arrive: politely, after what is being read now, without moving the keyboard focus.

Qt 6.8 added announcement events (PySide6 has them from 6.8); before that, a name change of the widget that shows
the text is the nearest thing screen readers follow.
"""

from __future__ import annotations

from PySide6 import QtGui
from PySide6.QtGui import QAccessible, QAccessibleEvent
from PySide6.QtWidgets import QWidget

MAX_SPOKEN = 600  # characters: a long answer is announced by its beginning; the rest is in the transcript

_Announcement = getattr(QtGui, "QAccessibleAnnouncementEvent", None)


def announcement(widget: QWidget, text: str) -> QAccessibleEvent:
    """The event for ``text``, from ``widget`` (the caption label, the transcript)."""
    message = " ".join(text.split())
    if len(message) > MAX_SPOKEN:
        message = message[:MAX_SPOKEN].rsplit(" ", 1)[0] + "…"
    if _Announcement is not None:
        event: QAccessibleEvent = _Announcement(widget, message)
        event.setPoliteness(QAccessible.AnnouncementPoliteness.Polite)  # type: ignore[attr-defined]
        return event
    widget.setAccessibleDescription(message)
    return QAccessibleEvent(widget, QAccessible.Event.DescriptionChanged)


def send(event: QAccessibleEvent) -> None:
    QAccessible.updateAccessibility(event)


def announce(widget: QWidget, text: str) -> None:
    if text.strip():
        send(announcement(widget, text))
