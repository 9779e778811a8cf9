"""One blocking engine call on a background thread, reported to the GUI thread by signals.

The call gets a progress callback and a cancel ``threading.Event`` (the engine's conventions for long operations);
what it returns or raises comes back as ``done`` or ``failed`` with a sentence the window can show.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from glimpse.app.qtcompat import emit
from glimpse.app.threads import spawn
from glimpse.engine import Cancelled, GlimpseError, Progress, ProgressFn

log = logging.getLogger(__name__)

JobFn = Callable[[ProgressFn, threading.Event], Any]


# Advice written for a terminal: a --flag, a `glimpse ...` command, "run the command again".
_CLI_ADVICE = re.compile(r"(?<![\w-])--[a-z]|`glimpse\b|\bglimpse (?:models|convert|ask|caption|bench|self-test)\b"
                         r"|\bthe command again\b")


def describe_error(e: BaseException) -> str:
    """A sentence for the window: the engine's own sentence for expected failures, a short report for bugs.

    Expected failures show the error's ``gui_hint`` (advice in the window's terms). An error raised without one
    whose hint is written for a terminal shows its message alone: no advice is better than advice to type a
    command the user never sees."""
    if isinstance(e, GlimpseError):
        if _CLI_ADVICE.search(e.gui_hint):
            log.warning("%s has no advice for the window: %s", type(e).__name__, e.gui_hint)
            return e.message
        return e.gui_text
    return (f"Something went wrong inside Glimpse ({type(e).__name__}: {e}). "
            "Try again; if it keeps happening, please report it.")


class Job(QObject):
    """Run ``fn(progress, cancel)`` once. Exactly one of ``done``, ``failed`` or ``cancelled`` follows, then
    ``finished``."""

    progress = Signal(object)  # engine.progress.Progress
    done = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    finished = Signal()

    # Emitted on the job's thread and relayed to the public signals above by signal-to-signal connections, which
    # Qt queues to this object's (the GUI) thread. Listeners of the public signals then always run on the GUI
    # thread, even plain Python callables.
    _progress = Signal(object)
    _done = Signal(object)
    _failed = Signal(str)
    _cancelled = Signal()
    _finished = Signal()

    def __init__(self, fn: JobFn, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        for private, public in ((self._progress, self.progress), (self._done, self.done),
                                (self._failed, self.failed), (self._cancelled, self.cancelled),
                                (self._finished, self.finished)):
            private.connect(public)
        self._fn = fn
        self.name = name
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"job {self.name} was already started")
        self._thread = spawn(self._run, self.name)

    def _report(self, p: Progress) -> None:
        emit(self._progress, p)

    def _run(self) -> None:
        try:
            result = self._fn(self._report, self._cancel)
        except Cancelled:
            emit(self._cancelled)
        except BaseException as e:
            if not isinstance(e, GlimpseError):
                log.exception("job %s failed", self.name)
            emit(self._failed, describe_error(e))
        else:
            emit(self._done, result)
        finally:
            emit(self._finished)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Join the thread; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running
