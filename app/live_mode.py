"""Live captions: the worker's caption loop over the current feed, the caption panel, read-aloud and the rates in
the status line. The loop is restarted (not waited for) when the interval or the preset changes."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QAction

from glimpse.app.export import CaptionEntry
from glimpse.app.settings import Settings
from glimpse.app.sources import Sources
from glimpse.app.speech import Speaker
from glimpse.app.widgets.caption_panel import CaptionPanel
from glimpse.app.widgets.presets import PresetBar
from glimpse.app.widgets.status_line import StatusLine
from glimpse.app.worker import LiveRequest, ModelWorker, Reply
from glimpse.engine import Caption

RATE_WINDOW_S = 60.0


class LiveCaptions(QObject):
    def __init__(self, *, worker: ModelWorker, sources: Sources, panel: CaptionPanel, status: StatusLine,
                 presets: PresetBar, speaker: Speaker, read_aloud: QAction, settings: Settings,
                 has_model: Callable[[], bool], error: Callable[[str], None], info: Callable[[str], None],
                 model_loading: Callable[[], bool] = lambda: False, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker, self._sources, self._panel, self._status = worker, sources, panel, status
        self._presets, self._speaker, self._read_aloud, self._settings = presets, speaker, read_aloud, settings
        self._has_model, self._error, self._info = has_model, error, info
        self._model_loading = model_loading
        self.running = False
        self._restart = False
        self._closing = False
        self._times: list[float] = []
        panel.interval.setValue(settings.interval)
        panel.start_requested.connect(self.start)
        panel.stop_requested.connect(self.stop)
        panel.interval_changed.connect(self._interval_changed)
        presets.changed.connect(self.restart_if_running)
        worker.caption_started.connect(panel.begin_caption)
        worker.text.connect(self._text)
        worker.captioned.connect(self._captioned)
        worker.live_ended.connect(self._ended)
        sources.live_closed.connect(self.stop)
        # A feed that ends by itself ends the loop too (it reports why); only a pending restart is dropped.
        sources.live_stopped.connect(lambda _error: setattr(self, "_restart", False))
        self._rates = QTimer(self)
        self._rates.setInterval(1000)
        self._rates.timeout.connect(self._update_rates)
        self._rates.start()

    def start(self) -> None:
        feed = self._sources.feed
        if feed is None:
            self._error("Choose a camera or a video file under Source first.")
            return
        if not self._has_model():
            if self._model_loading():  # the window starts live captions when the model is ready
                self._info("The model is loading; live captions start when it is ready.")
            else:
                self._error("No model is loaded yet: choose or download one under Model.")
            return
        if self.running:
            # The loop still running is ending (a new feed, a new model) or has old settings: run a new one
            # when it has ended.
            self.restart_if_running()
            return
        self.running = True
        self._panel.set_running(True)
        self._worker.live(LiveRequest(feed, self._presets.current().prompt, every=self._settings.interval,
                                      size=self._settings.image_size))

    def stop(self) -> None:
        self._restart = False
        if self.running:
            self._worker.stop()

    def restart_if_running(self) -> None:
        if self.running:
            self._restart = True
            self._worker.stop()

    def close(self) -> None:
        self._closing = True
        self._rates.stop()
        self.stop()

    def _interval_changed(self, seconds: float) -> None:
        self._settings.interval = seconds
        self.restart_if_running()

    def _text(self, text: str) -> None:
        if self.running:
            self._panel.append(text)

    def _captioned(self, caption: Caption, reply: Reply) -> None:
        self._panel.add(CaptionEntry(caption.text, caption.frame_time, caption.finished_at))
        self._status.set_reply(reply)
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < RATE_WINDOW_S] + [now]
        if self._read_aloud.isChecked():
            self._speaker.say(caption.text)

    def _ended(self, kind: str, message: str) -> None:
        self.running = False
        self._panel.set_running(False)
        if kind == "error":
            self._error(message)
        elif kind == "ended":
            self._info(message)
        if self._restart and not self._closing and self._sources.feed is not None:
            self._restart = False
            self.start()
        self._restart = False
        self._update_rates()

    def _update_rates(self) -> None:
        feed = self._sources.feed
        now = time.monotonic()
        recent = [t for t in self._times if now - t < RATE_WINDOW_S]
        per_minute = None
        if self.running and len(recent) >= 2:  # over the time the recent captions actually span
            per_minute = 60.0 * (len(recent) - 1) / max(recent[-1] - recent[0], 1e-3)
        self._status.set_rates(feed.fps if feed is not None else None, per_minute)
