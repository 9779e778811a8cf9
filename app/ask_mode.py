"""Ask mode: the picture being asked about, the questions sent to the worker, and the conversation panel.

A new picture starts a new conversation (its image is encoded with the first question); follow-ups reuse the
engine's cached image. Regenerate takes back the last answer, whichever it is, and answers its question again with
some variety: the earlier turns stay, and the image and the conversation so far come from the engine's cache.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import QObject
from PySide6.QtGui import QAction

from glimpse.app.export import conversation_markdown, conversation_text, write_file
from glimpse.app.prompts import compose
from glimpse.app.settings import Settings
from glimpse.app.sources import Sources
from glimpse.app.speech import Speaker
from glimpse.app.widgets.chat_panel import ChatPanel
from glimpse.app.widgets.presets import PresetBar
from glimpse.app.widgets.status_line import StatusLine
from glimpse.app.worker import AskRequest, ModelWorker, PrepareRequest, Reply

U8Array = npt.NDArray[np.uint8]
TILES_GRID = (2, 2)  # "small text": the whole picture, then a 2x2 grid of tiles
REGENERATE_TEMPERATURE = 0.7  # the same question at temperature 0 would give the same answer again


class AskAboutPicture(QObject):
    def __init__(self, *, worker: ModelWorker, sources: Sources, chat: ChatPanel, status: StatusLine,
                 presets: PresetBar, speaker: Speaker, read_aloud: QAction, settings: Settings,
                 model_name: Callable[[], str], error: Callable[..., None],
                 model_loading: Callable[[], bool] = lambda: False, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker, self._sources, self._chat, self._status = worker, sources, chat, status
        self._presets, self._speaker, self._read_aloud, self._settings = presets, speaker, read_aloud, settings
        self._model_name, self._error, self._model_loading = model_name, error, model_loading
        self.picture: U8Array | None = None
        self.description = ""
        self._picture_is_new = False  # the next question starts a new conversation about it
        self._serial = 0  # numbers the pictures (and their sizes), so the worker can tell which one it read ahead
        self.asking = False
        chat.ask.connect(self.ask)
        chat.stop.connect(worker.stop)
        chat.regenerate.connect(self.regenerate)
        worker.text.connect(self._text)
        worker.answered.connect(self._answered)
        worker.failed.connect(self._failed)
        worker.answer_restarted.connect(self._restarted)

    def set_picture(self, pixels: U8Array, description: str) -> None:
        self.picture, self.description, self._picture_is_new = pixels, description, True
        self._serial += 1
        self._chat.new_picture(description)
        self.read_ahead()

    def read_ahead(self) -> None:
        """Have the worker read a new picture now, while the user types: the first question then starts from the
        cached image instead of waiting for the encoder (2-3 s at 1024 px on a laptop CPU)."""
        if self.picture is None or not self._picture_is_new or not self._model_name() or self.asking:
            return
        self._worker.prepare(PrepareRequest(self.picture, self._serial, size=self._settings.image_size,
                                            tiles=self._tiles()))

    def _tiles(self) -> tuple[int, int] | None:
        return TILES_GRID if self._settings.tiles else None

    def size_changed(self) -> None:
        """A picture not asked about yet is read again at the new size."""
        if self._picture_is_new:
            self._serial += 1
            self.read_ahead()

    def forget_picture(self) -> None:
        self.picture = None

    def model_changed(self) -> None:
        """A newly loaded model has no conversation: the next question sends the picture again, and the answers
        shown so far cannot be regenerated."""
        self._picture_is_new = self.picture is not None
        self._chat.set_can_regenerate(False)

    def ask(self, typed: str) -> None:
        if self.asking:
            return
        if not self._model_name() and not self._model_loading():
            # While the model loads (or its process restarts) the question is sent anyway: it waits in the worker's
            # queue behind the load, the status line says what it waits for, and nothing typed is lost.
            self._error("No model is loaded yet: choose or download one under Model.")
            return
        if self.picture is None and not self._sources.freeze():
            self._error("There is no picture to ask about yet. Take a screenshot, paste or open an image, or choose "
                        "a camera and ask again to freeze its frame.", ("Paste an image", self._sources.paste))
            return
        shown = typed or self._presets.current().prompt
        question, max_tokens = compose(shown, self._presets.length_key())
        image = self.picture if self._picture_is_new else None
        self._picture_is_new = False
        self.asking = True
        self._chat.begin_answer(shown)
        self._worker.ask(AskRequest(question, max_tokens=max_tokens, image=image, picture=self._serial,
                                    size=self._settings.image_size, tiles=self._tiles()))

    def regenerate(self) -> None:
        """Answer the last question again. The worker asks the question as the engine's conversation holds it
        (with its length hint), so only the answer's length and sampling are chosen here."""
        if self.asking or not self._chat.can_regenerate:
            return
        turn = self._chat.begin_regenerate()
        if turn is None:
            return
        self.asking = True
        _, max_tokens = compose(turn.question, self._presets.length_key())
        self._worker.ask(AskRequest(regenerate=True, max_tokens=max_tokens, temperature=REGENERATE_TEMPERATURE,
                                    seed=random.randrange(2**31)))

    def _text(self, text: str) -> None:
        if self.asking:
            self._chat.append(text)

    def _restarted(self) -> None:
        """The model's process was restarted mid-answer: the answer is written again from the start."""
        if self.asking:
            self._chat.restart_answer()

    def _answered(self, reply: Reply) -> None:
        if not self.asking:
            return
        self.asking = False
        self._chat.finish(reply)
        self._update_regenerate()
        if reply.generated_tokens:
            self._status.set_reply(reply)
        if self._read_aloud.isChecked() and reply.text:
            self._speaker.say(reply.text)

    def _failed(self, message: str) -> None:
        if self.asking:
            self.asking = False
            # The picture may never have reached the model (it failed while encoding): send it again.
            self._picture_is_new = self._picture_is_new or not self._chat.turns
            self._chat.fail(message)
            self._update_regenerate()

    def _update_regenerate(self) -> None:
        """The last finished answer can be regenerated while the worker still holds this conversation."""
        self._chat.set_can_regenerate(bool(self._chat.turns) and not self._picture_is_new)

    def export(self, path: Path) -> None:
        """Markdown, or plain text for a .txt file."""
        render = conversation_text if path.suffix.lower() == ".txt" else conversation_markdown
        write_file(path, render(self._chat.turns, model=self._model_name(), source=self.description))
