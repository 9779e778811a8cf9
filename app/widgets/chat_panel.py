"""Ask mode's panel: the conversation about the current picture, streaming in, with Stop, Copy, Regenerate and
Export.

The transcript is a list of HTML blocks: pictures, notes, errors, and one block per answered turn. Regenerate
writes the new answer into the block of the answer it replaces, so the transcript reads as if it had been the
answer all along."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from glimpse.app.announce import announce
from glimpse.app.export import ChatTurn
from glimpse.app.qtcompat import emit
from glimpse.app.rich_text import markdown_document, markdown_html
from glimpse.app.widgets.transcript import Transcript
from glimpse.app.worker import Reply

# A streamed answer is drawn again at most this often: at 30+ tokens/s, drawing on every token would re-lay out
# the whole transcript that many times a second, and a half-written table or list would flicker as it grows.
RENDER_INTERVAL_MS = 100


@dataclass
class _Pending:
    question: str
    asked_at: float
    text: str = ""


class ChatPanel(QWidget):
    ask = Signal(str)  # what was typed; "" means "use the chosen preset"
    stop = Signal()
    regenerate = Signal()
    export = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.transcript = Transcript()
        self.transcript.setAccessibleName("Conversation")
        self.input = QLineEdit()
        self.input.setPlaceholderText("Ask about the picture, or press Enter to use the preset")
        self.input.setAccessibleName("Question")
        self.input.setAccessibleDescription("Type a question about the picture; Enter asks it, an empty question "
                                            "asks the chosen preset")
        self.transcript.setAccessibleDescription("The questions and answers about the current picture; in a code "
                                                 "block, the context menu copies it")
        self.send_button = QPushButton("Ask")
        self.stop_button = QPushButton("Stop")
        self.copy_button = QPushButton("Copy")
        self.regenerate_button = QPushButton("Regenerate")
        self.export_button = QPushButton("Export…")
        self.copy_button.setToolTip("Copy the last answer")
        self.regenerate_button.setToolTip("Answer the last question again, with some variety")
        self.export_button.setToolTip("Save this conversation as Markdown")

        ask_row = QHBoxLayout()
        ask_row.addWidget(self.input, 1)
        ask_row.addWidget(self.send_button)
        ask_row.addWidget(self.stop_button)
        tools = QHBoxLayout()
        for button in (self.copy_button, self.regenerate_button, self.export_button):
            tools.addWidget(button)
        tools.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.transcript, 1)
        layout.addLayout(ask_row)
        layout.addLayout(tools)

        self.input.returnPressed.connect(self._send)
        self.send_button.clicked.connect(self._send)
        self.stop_button.clicked.connect(lambda: emit(self.stop))
        self.stop_button.setToolTip("Stop the answer (Esc)")
        self.send_button.setToolTip("Ask the question (Enter)")
        self.copy_button.clicked.connect(self.copy_last)
        self.regenerate_button.clicked.connect(lambda: emit(self.regenerate))
        self.export_button.clicked.connect(lambda: emit(self.export))

        self._blocks: list[str] = []  # finished HTML blocks: pictures, turns, errors
        self._turns: list[ChatTurn] = []  # the conversation about the current picture
        self._turn_blocks: list[int] = []  # the index in _blocks of each turn's block
        self._pending: _Pending | None = None
        self._slot: int | None = None  # the block the pending answer replaces; None: a new block at the end
        self._taken_back: tuple[ChatTurn, str] | None = None  # the answer being regenerated, and its block
        self._busy = False
        self.can_regenerate = False
        self.renders = 0  # how often the transcript was drawn (streaming draws at most every RENDER_INTERVAL_MS)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render)
        self._update_buttons()

    # -- what the window calls ------------------------------------------------------------------------------------

    def new_picture(self, description: str) -> None:
        self._turns, self._turn_blocks, self._slot, self._taken_back = [], [], None, None
        self.can_regenerate = False
        self._blocks.append(f"<p style='color:#666'><i>New picture: {html.escape(description)}</i></p>")
        self._render()

    def begin_answer(self, question: str) -> None:
        self._pending = _Pending(question, time.time())
        self.set_busy(True)
        self._render()

    def begin_regenerate(self) -> ChatTurn | None:
        """Take back the last answer and write the next one in its place; returns the turn taken back."""
        if not self._turns or self._pending is not None:
            return None
        turn = self._turns.pop()
        self._slot = self._turn_blocks.pop()
        self._taken_back = (turn, self._blocks[self._slot])
        self.begin_answer(turn.question)
        return turn

    def _put_back(self, note: str) -> bool:
        """After a regeneration that wrote nothing: show the answer it was meant to replace again, with ``note``;
        False when the pending answer was not a regeneration."""
        taken_back, self._taken_back = self._taken_back, None
        if taken_back is None:
            return False
        turn, block = taken_back
        self._turn_blocks.append(self._put(block + f"<p style='color:#666'><i>{html.escape(note)}</i></p>"))
        self._turns.append(turn)
        return True

    def _put(self, block: str) -> int:
        """Add a finished block where the pending answer was shown; returns its index."""
        slot, self._slot = self._slot, None
        if slot is None:
            self._blocks.append(block)
            return len(self._blocks) - 1
        self._blocks[slot] = block
        return slot

    def append(self, text: str) -> None:
        if self._pending is not None:
            self._pending.text += text
            if not self._render_timer.isActive():
                self._render_timer.start()

    def restart_answer(self) -> None:
        """The answer being written starts again (its model's process was restarted): its text so far goes."""
        if self._pending is not None:
            self._pending.text = ""
            self._render()

    def finish(self, reply: Reply) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        text = reply.text or pending.text.strip()
        if reply.finish_reason == "cancelled" and not text:
            if not self._put_back("Regenerating was stopped before the first word; this answer is kept."):
                self._put(self._turn_html(pending.question, "", "stopped before the first word"))
        else:
            self._taken_back = None
            turn = ChatTurn(pending.question, text, pending.asked_at, reply.summary)
            notes = "".join(f"<p style='color:#8a5a00'>{html.escape(note)}</p>" for note in reply.notes)
            self._turn_blocks.append(self._put(self._turn_html(turn.question, turn.answer, turn.stats) + notes))
            self._turns.append(turn)
            # What a screen reader says is the text as shown, not its Markdown marks.
            announce(self.transcript, "Glimpse answered: " + markdown_document(turn.answer).toPlainText())
        self.set_busy(False)
        self._render()

    def fail(self, message: str) -> None:
        pending, self._pending = self._pending, None
        question = pending.question if pending is not None else ""
        if self._put_back("Regenerating failed; this answer is kept."):
            self._blocks.append(f"<p style='color:#a00'>{html.escape(message)}</p>")
        else:
            self._put((self._turn_html(question, "", "") if question else "")
                      + f"<p style='color:#a00'>{html.escape(message)}</p>")
        self.set_busy(False)
        self._render()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._update_buttons()

    @property
    def turns(self) -> list[ChatTurn]:
        return list(self._turns)

    @property
    def busy(self) -> bool:
        return self._busy

    def last_answer(self) -> str:
        return self._turns[-1].answer if self._turns else ""

    def copy_last(self) -> None:
        if self.last_answer():
            QGuiApplication.clipboard().setText(self.last_answer())

    def plain_text(self) -> str:
        if self._render_timer.isActive():  # what has streamed in so far, not what was last drawn
            self._render()
        return self.transcript.toPlainText()

    # -- drawing --------------------------------------------------------------------------------------------------

    def _update_buttons(self) -> None:
        self.send_button.setEnabled(not self._busy)
        self.stop_button.setEnabled(self._busy)
        has = bool(self._turns)
        self.copy_button.setEnabled(has)
        self.export_button.setEnabled(has)
        self.regenerate_button.setEnabled(has and self.can_regenerate and not self._busy)

    def set_can_regenerate(self, on: bool) -> None:
        self.can_regenerate = on
        self._update_buttons()

    @staticmethod
    def _turn_html(question: str, answer: str, stats: str) -> str:
        q = html.escape(question)
        # The answer's Markdown is formatted; the question stays as typed.
        out = f"<p><b>You:</b> {q}</p><p><b>Glimpse:</b></p>{markdown_html(answer)}"
        if stats:
            out += f"<p style='color:#777;font-size:small'>{html.escape(stats)}</p>"
        return out

    def _render(self) -> None:
        blocks = list(self._blocks)
        if self._pending is not None:
            block = self._turn_html(self._pending.question, self._pending.text or "…", "")
            if self._slot is None:
                blocks.append(block)
            else:
                blocks[self._slot] = block
        self._render_timer.stop()
        bar = self.transcript.verticalScrollBar()
        # Follow the answer only when the reader is at the end; someone scrolled back to read stays where they are.
        following, kept = bar.value() >= bar.maximum() - 4, bar.value()
        self.transcript.setHtml("".join(blocks))
        bar.setValue(bar.maximum() if following else kept)
        self.renders += 1
        self._update_buttons()

    def _send(self) -> None:
        if self._busy:
            return
        question = self.input.text().strip()
        self.input.clear()
        emit(self.ask, question)
