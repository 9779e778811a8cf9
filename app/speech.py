"""Read captions and answers aloud with QtTextToSpeech, for blind and low-vision users.

Where the module or a voice is missing (no libpulse, no speech-dispatcher, no engine), ``available`` is False and
``reason`` says why, so the window can grey the option out and explain instead of failing. Live captions can come
faster than speech: while one is being spoken only the newest waiting text is kept (newest wins, as with frames).
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject

log = logging.getLogger(__name__)

# Qt's "mock" engine says nothing; it exists for tests, so it is only used when asked for by name.
_SILENT_ENGINES = {"mock"}


class Speaker(QObject):
    def __init__(self, engine: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.available = False
        self.reason = ""
        self._tts: Any = None
        self._pending = ""
        self._ready: Any = None
        try:
            # The import is the check: Qt's text-to-speech module is optional.
            from PySide6.QtTextToSpeech import QTextToSpeech  # noqa: PLC0415
        except ImportError as e:
            self.reason = f"Read-aloud needs Qt's text-to-speech module, which cannot load here ({e})."
            return
        engines = [e for e in QTextToSpeech.availableEngines() if engine is not None or e not in _SILENT_ENGINES]
        if engine is not None:
            engines = [e for e in engines if e == engine]
        if not engines:
            self.reason = ("No text-to-speech engine is installed" + (f" called '{engine}'" if engine else "")
                           + ". On Linux, install speech-dispatcher and a voice (for example espeak-ng).")
            return
        self._ready = QTextToSpeech.State.Ready
        for name in engines:
            tts = QTextToSpeech(name, self)
            if tts.state() != QTextToSpeech.State.Error:
                self._tts = tts
                break
            log.info("text-to-speech engine %s failed: %s", name, tts.errorString())
            self.reason = (f"The text-to-speech engine '{name}' could not start ({tts.errorString()}). "
                           "On Linux, check that speech-dispatcher is installed and running.")
            tts.deleteLater()
        if self._tts is None:
            return
        self.available = True
        self.reason = ""
        self._tts.stateChanged.connect(self._on_state)

    @property
    def engine(self) -> str:
        return str(self._tts.engine()) if self._tts is not None else ""

    @property
    def speaking(self) -> bool:
        return self._tts is not None and self._tts.state() != self._ready

    def say(self, text: str) -> None:
        """Speak now, or after the current utterance (replacing anything already waiting)."""
        text = text.strip()
        if not self.available or not text:
            return
        if self.speaking:
            self._pending = text
        else:
            self._tts.say(text)

    def stop(self) -> None:
        self._pending = ""
        if self._tts is not None:
            self._tts.stop()

    def _on_state(self, state: object) -> None:
        if state == self._ready and self._pending:
            text, self._pending = self._pending, ""
            self._tts.say(text)
