"""Closing the window while work is running: what it waits for, and the dialog that says so.

Most work stops within a moment of being cancelled (a generation after the current token, a download after the
current chunk). Some cannot be interrupted: llama.cpp and onnxruntime loading a model, the first load's sha256 check
of a multi-GB file, a conversion step between two progress reports. Destroying a QThread that is still running
aborts the process, and a killed conversion leaves GBs of working files behind, so the window never closes on
running work: it waits a few seconds, then keeps waiting with this dialog on screen, naming what it waits for.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QProgressDialog, QWidget

from glimpse.app.worker import GENERATING, LOADING, READING, WATCHING

GRACE_S = 3.0  # how long closing waits for cancelled work before it shows the dialog
MODEL_THREAD = "glimpse model worker"
_MODEL_WORK = {
    LOADING: "the model to finish loading",
    READING: "the picture being read to stop",
    GENERATING: "the answer being written to stop",
    WATCHING: "the live captions to stop",
}


def waiting_for(threads: list[str], model_state: str) -> list[str]:
    """What the running app threads (their names, from ``app.threads.running``) are doing, in the user's words."""
    out: list[str] = []
    for name in threads:
        if name == MODEL_THREAD:
            what = _MODEL_WORK.get(model_state, "the model to close")
        elif name == "glimpse media":
            what = "the video to close"
        else:
            task = name.removeprefix("glimpse ")
            verb, _, rest = task.partition(" ")
            what = {
                "download": f"the download or conversion of {rest} to stop",
                "import": "the import to stop",
                "remove": f"the removal of {rest} to finish",
                "licence": "the licence download to stop",
                "feed": f"{rest} to close",
                "open": f"{rest} to finish loading",
            }.get(verb, f"{task} to finish")
        if what not in out:
            out.append(what)
    return out


class ClosingDialog(QProgressDialog):
    """A busy bar and a sentence; no Cancel button, because nothing here can be cut short safely."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setWindowTitle("Closing Glimpse")
        self.setRange(0, 0)
        self.setCancelButton(None)  # no button
        self.setMinimumDuration(0)
        self.setAutoClose(False)
        self.setAutoReset(False)
        self.setWindowModality(Qt.WindowModality.WindowModal)
        self._since = time.monotonic()

    def show_waiting(self, what: list[str]) -> None:
        seconds = time.monotonic() - self._since
        self.setLabelText(f"Glimpse closes as soon as it can. Waiting for {_join(what)} "
                          f"({seconds:.0f} s so far)…")
        if not self.isVisible():
            self.show()


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
