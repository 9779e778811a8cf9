"""Progress reporting and cancellation for long operations (conversion, downloads).

A long operation takes an optional ``ProgressFn``. It is called with a small frozen ``Progress`` record; the CLI
draws a bar from it and the app forwards it as a Qt signal. Cancellation is a ``threading.Event`` checked between
units of work; when set, the operation raises :class:`engine.errors.Cancelled` and cleans up after itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from glimpse.engine.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One progress report.

    ``stage`` names the step ("vision", "language model", "download ..."), ``done`` / ``total`` count its units
    (bytes or tensors; ``total`` 0 means unknown), ``unit`` says which, ``rate`` is units per second where known.
    ``note`` says what the step is waiting for while it waits ("no data from huggingface.co for 15 s, retrying
    (1/3)"); empty while it is moving.
    """

    stage: str
    done: int
    total: int
    unit: str = "it"
    rate: float = 0.0
    note: str = ""


ProgressFn = Callable[[Progress], None]


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)


class Reporter:
    """Bundles a callback and a cancel event so inner steps need one argument, not two."""

    def __init__(self, callback: ProgressFn | None = None, cancel: threading.Event | None = None) -> None:
        self.callback = callback
        self.cancel = cancel

    def __call__(self, stage: str, done: int, total: int, unit: str = "it", rate: float = 0.0) -> None:
        check_cancel(self.cancel, "Conversion" if unit != "B" else "The download")
        if self.callback is not None:
            self.callback(Progress(stage, done, total, unit, rate))
