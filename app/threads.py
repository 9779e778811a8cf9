"""Every thread the app starts is made here, so shutdown code and the tests can check that none is left running.

Python threads are used for short blocking engine calls (opening a camera, downloads, conversion, file decoding);
the one QThread belongs to the model worker, which needs an event loop for its queued requests.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from PySide6.QtCore import QThread

_qthreads: weakref.WeakSet[QThread] = weakref.WeakSet()
_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def new_qthread(name: str) -> QThread:
    thread = QThread()
    thread.setObjectName(name)
    _qthreads.add(thread)
    return thread


def spawn(target: Callable[[], None], name: str) -> threading.Thread:
    """Start ``target`` on a daemon thread: a crash elsewhere never leaves the process hanging on it, but every
    owner still joins its thread when it closes."""
    thread = threading.Thread(target=target, name=f"glimpse {name}", daemon=True)
    _threads.add(thread)
    thread.start()
    return thread


def running() -> list[str]:
    """Names of app threads still running (for shutdown checks and tests)."""
    names = [t.objectName() for t in list(_qthreads) if t.isRunning()]
    names += [t.name for t in list(_threads) if t.is_alive()]
    return names
