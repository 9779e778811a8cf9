"""SIGTERM, SIGINT and SIGHUP close the window the way its close button does: a session logging out, ``kill`` or
Ctrl+C in the terminal then stops generation, capture and downloads and saves the settings, instead of killing the
process mid-write.

Python runs signal handlers only between bytecodes, and Qt's event loop runs in C++; so the signal writes a byte to
a socket (``signal.set_wakeup_fd``) and a QSocketNotifier wakes the event loop to close the window.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from PySide6.QtCore import QSocketNotifier
from PySide6.QtWidgets import QWidget

log = logging.getLogger(__name__)

CLOSING_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_keep: list[socket.socket] = []


def catch_signals() -> socket.socket | None:
    """From now on CLOSING_SIGNALS only leave a byte on the returned socket, for ``close_on_signals`` to act on once
    the window exists (a signal that comes while it is being built closes it as soon as the event loop runs).
    None where signals cannot be caught so (Windows, or not the main thread)."""
    if sys.platform == "win32":
        return None
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    try:
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        for name in CLOSING_SIGNALS:
            # A handler that does nothing: the byte on the wake-up socket does the work, in the event loop.
            signal.signal(getattr(signal, name), lambda _signum, _frame: None)
    except ValueError as e:
        log.warning("signals will not close the window: %s", e)
        reader.close()
        writer.close()
        return None
    _keep.append(writer)  # the wake-up fd must stay open as long as the reader
    return reader


def close_on_signals(window: QWidget, reader: socket.socket | None = None) -> bool:
    """Close ``window`` when the process gets one of CLOSING_SIGNALS (or has got one since ``catch_signals``
    returned ``reader``); False where signals cannot be caught so."""
    reader = reader if reader is not None else catch_signals()
    if reader is None:
        return False
    notifier = QSocketNotifier(reader.fileno(), QSocketNotifier.Type.Read, window)

    def wake() -> None:
        try:
            received = reader.recv(64)
        except BlockingIOError:
            return
        names = [signal.Signals(b).name for b in received if b in signal.Signals._value2member_map_]
        log.info("closing the window on %s", ", ".join(names) or "a signal")
        window.close()

    notifier.activated.connect(wake)
    log.info("SIGTERM, SIGINT and SIGHUP close the window")
    # The socket and the notifier live as long as the window.
    window._signal_wakeup = (reader, notifier)  # type: ignore[attr-defined]
    return True
