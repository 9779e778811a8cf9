"""The model worker: the one object that owns the engine's model, living on its own QThread.

The model itself runs in a runner process (engine.runner): a native crash or a hung kernel there costs a sentence
(``notice``) and a restart, and the answer being written starts again (``answer_restarted``); a second failure
unloads the model (``model_lost``). ``GLIMPSE_RUNNER=0`` loads it inside this process instead.

The window talks to it only through :class:`ModelWorker`, which turns method calls into queued signals, so a load,
a question or a caption loop never runs on the GUI thread. Requests run one at a time in order. Stopping does not
wait for the queue: ``ModelWorker.stop`` sets the cancel events of every unfinished request and calls
``Model.cancel`` directly (the engine allows that from any thread), so the running generation ends after the
current token and queued requests end at once.

Text reaches the window a few tokens at a time: each signal crosses threads and repaints the chat, so one per
token would spend more time redrawing than a small model spends generating.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PySide6.QtCore import QObject, QThread, Signal, Slot

from glimpse.app.jobs import describe_error
from glimpse.app.qtcompat import emit
from glimpse.app.threads import new_qthread
from glimpse.engine import (
    Answer,
    Cancelled,
    Frame,
    FrameSource,
    GlimpseError,
    Restart,
    RunnerError,
    RunnerModel,
    caption_stream,
)

if TYPE_CHECKING:
    from glimpse.engine import Conversation, Model, RunnerConversation

log = logging.getLogger(__name__)

NO_MODEL, LOADING, IDLE, WATCHING, READING, GENERATING = (
    "no model", "loading model", "idle", "watching", "reading image", "generating")
LIVE_SIZE = 512  # live captions trade detail for speed unless the user picks a size
PIECES_PER_UPDATE = 3
SECONDS_PER_UPDATE = 0.08


@dataclass(frozen=True)
class Reply:
    """A finished answer or caption, with the figures the status line shows."""

    text: str
    finish_reason: str
    ttft_ms: float = 0.0
    encode_ms: float = 0.0
    tokens_per_s: float = 0.0
    generated_tokens: int = 0
    cached_positions: int = 0
    notes: tuple[str, ...] = ()
    read_ahead: bool = False  # the image was encoded before the question came (``encode_ms`` is that encoding)

    @classmethod
    def from_answer(cls, answer: Answer, *, before_ms: float = 0.0, encode_ms: float | None = None,
                    read_ahead: bool = False) -> Reply:
        """``before_ms``: time spent before the engine's stream call (an image encoded up front) that belongs to
        the time to first token."""
        t = answer.timings
        return cls(answer.text.strip(), answer.finish_reason, t.ttft_ms + before_ms,
                   t.encode_ms if encode_ms is None else encode_ms, t.decode_tokens_per_s, t.generated_tokens,
                   t.cached_positions, answer.notes, read_ahead)

    @property
    def image_note(self) -> str:
        if self.read_ahead:
            return f"image read ahead ({self.encode_ms:.0f} ms)"
        return f"encode {self.encode_ms:.0f} ms" if self.encode_ms else "image reused"

    @property
    def summary(self) -> str:
        parts = [f"first token {self.ttft_ms:.0f} ms", self.image_note]
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.1f} tok/s")
        parts.append(f"{self.generated_tokens} tokens")
        if self.finish_reason == "cancelled":
            parts.append("stopped")
        elif self.finish_reason == "length":
            parts.append("cut at the length limit")
        return ", ".join(parts)


@dataclass(frozen=True)
class AskRequest:
    """A question. With ``image`` it starts a new conversation about that image; without, it follows up on the
    current one (the image is not encoded again). ``regenerate`` takes back the current conversation's last answer
    and asks its question again (``question`` is then unused): the earlier turns stay and the image, the earlier
    turns and the question come from the cache."""

    question: str = ""
    max_tokens: int = 256
    image: npt.NDArray[np.uint8] | None = None
    picture: int | None = None  # which picture ``image`` is: one already read ahead (``PrepareRequest``) is reused
    size: int = 0  # 0: the model's own size
    tiles: tuple[int, int] | None = None  # a grid of tiles after the whole picture (small text)
    temperature: float = 0.0
    seed: int | None = None
    regenerate: bool = False
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class PrepareRequest:
    """Read a picture ahead: encode it and put it in llama.cpp's cache while the user types the first question,
    which then only evaluates its own words. ``picture`` names it for the ``AskRequest`` that follows."""

    image: npt.NDArray[np.uint8]
    picture: int
    size: int = 0  # 0: the model's own size
    tiles: tuple[int, int] | None = None
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class LiveRequest:
    source: FrameSource
    prompt: str
    every: float = 0.0
    size: int = 0  # 0: LIVE_SIZE
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


class _Batcher:
    """Joins pieces into a few-token updates; the first piece goes out at once so the first token is seen."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
        self._buf: list[str] = []
        self._last = 0.0
        self._sent_any = False

    def add(self, piece: str) -> None:
        self._buf.append(piece)
        now = time.monotonic()
        if not self._sent_any or len(self._buf) >= PIECES_PER_UPDATE or now - self._last >= SECONDS_PER_UPDATE:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._send("".join(self._buf))
            self._buf.clear()
            self._sent_any = True
            self._last = time.monotonic()

    @property
    def started(self) -> bool:
        return self._sent_any

    def reset(self) -> None:
        self.flush()
        self._sent_any = False


class Worker(QObject):
    """Lives on the worker thread. Use it through :class:`ModelWorker`."""

    state_changed = Signal(str)
    model_ready = Signal(str, int)  # the model's name, its default image size
    model_failed = Signal(str)
    text = Signal(str)  # the next few tokens of the answer or caption being written
    answered = Signal(object)  # Reply
    caption_started = Signal()
    captioned = Signal(object, object)  # engine.runtime.caption.Caption, Reply
    live_ended = Signal(str, str)  # "stopped" | "ended" | "error", and a sentence for the last two
    failed = Signal(str)
    prepared = Signal(int, bool)  # the picture, and whether it is ready (False: not read ahead after all)
    request_done = Signal(object)  # the request's cancel event, so the host can forget it
    notice = Signal(str)  # the model's process stopped and is being restarted: one sentence
    answer_restarted = Signal()  # the answer or caption being written starts again (its text so far is void)
    model_lost = Signal(str)  # the model's process failed twice: the model is unloaded, and why
    devices = Signal(str, str)  # which device runs each part ("LLM: CPU, vision: CPU"), and why not the GPU ("")

    def __init__(self) -> None:
        super().__init__()
        self._model: Model | RunnerModel | None = None
        self._conversation: Conversation | RunnerConversation | None = None
        self._picture: int | None = None  # the picture the conversation is about, when the window named it
        self._read_ahead_ms = 0.0  # how long reading that picture ahead took (0: it was not read ahead)
        self.current_state = NO_MODEL
        self._devices = ("", "")

    def _state(self, state: str) -> None:
        self.current_state = state  # read from the GUI thread while it closes (the signal may still be queued)
        emit(self.state_changed, state)

    def _send_text(self, text: str) -> None:
        emit(self.text, text)

    def cancel_generation(self) -> None:
        """Any thread: stop the running generation after the current token."""
        model = self._model
        if model is not None:
            model.cancel()

    def _close_model(self) -> None:
        self._conversation, self._picture = None, None
        if self._model is not None:
            self._model.close()
            self._model = None

    def _tuning_status(self, _text: str, done: int, total: int) -> None:
        """The first start of a model on a CPU measures its settings (seconds): the status line says so."""
        self._state(LOADING if done >= total else
                    f"Finding the fastest settings for this computer, once ({done + 1}/{total})…")

    @Slot(str, int, str, object)
    def load(self, name_or_path: str, threads: int, device: str = "auto",
             cancel: threading.Event | None = None) -> None:
        self._close_model()
        self._state(LOADING)
        try:
            model: Model | RunnerModel
            if os.environ.get("GLIMPSE_RUNNER", "1") == "0":
                # Only here does the window's process load the runtimes (onnxruntime, llama.cpp) itself.
                from glimpse.engine import load_model  # noqa: PLC0415

                model = load_model(name_or_path, threads=threads or None, cancel=cancel, status=self._tuning_status,
                                   device=device)
            else:
                model = RunnerModel(name_or_path, threads=threads or None, cancel=cancel,
                                    status=self._tuning_status, on_notice=self._notice, device=device)
        except Cancelled:  # a newer load, or the window closing: the first load's hashing stops at once
            self._state(NO_MODEL)
            return
        except Exception as e:
            if not isinstance(e, GlimpseError):
                log.exception("loading %s failed", name_or_path)
            self._state(NO_MODEL)
            emit(self.model_failed, describe_error(e))
            return
        finally:
            if cancel is not None:
                emit(self.request_done, cancel)
        self._model = model
        self._devices = ("", "")
        self._say_devices()
        emit(self.model_ready, model.name, model.default_size)
        self._state(IDLE)

    def _notice(self, text: str) -> None:
        emit(self.notice, text)

    def _say_devices(self) -> None:
        """The status line's devices, when they changed (a runner restarted after a GPU crash runs on the CPU)."""
        if self._model is None:
            return
        now = (self._model.devices, self._model.gpu_not_used)
        if now != self._devices:
            self._devices = now
            emit(self.devices, *now)

    def _lost(self, e: RunnerError) -> None:
        """The model's process failed twice: the model is unloaded, and the window offers to load it again."""
        self._close_model()
        emit(self.model_lost, describe_error(e))

    def _stream(self, items: Iterator[str | Answer | Restart]) -> Answer:
        batcher = _Batcher(self._send_text)
        answer: Answer | None = None
        for item in items:
            if isinstance(item, Answer):
                answer = item
            elif isinstance(item, Restart):
                batcher.reset()
                emit(self.answer_restarted)
                self._say_devices()
            else:
                batcher.add(item)
        batcher.flush()
        if answer is None:  # pragma: no cover - the engine always ends a stream with an Answer
            raise RuntimeError("the answer stream ended without an answer")
        return answer

    @Slot(object)
    def ask(self, req: AskRequest) -> None:
        question = req.question
        taken_back: tuple[str, str] | None = None  # a regenerated answer, put back unless a new one replaces it
        try:
            if req.regenerate and self._conversation is not None:
                # Even for a request stopped before it ran: the chat has already taken the answer back.
                taken_back = self._conversation.drop_last_turn()
                question = taken_back[0]
            if req.cancel.is_set():
                raise Cancelled("The question")
            model = self._model
            if model is None:
                raise GlimpseError("No model is loaded.", "Choose or download one in the model manager.")
            encode_ms = before_ms = 0.0
            read_ahead = False
            if req.image is not None and req.picture is not None and req.picture == self._picture \
                    and self._conversation is not None:
                # This picture is already encoded (read ahead while the question was typed, or by a question
                # that failed after encoding it): only the first answer reports the reading ahead.
                read_ahead, encode_ms, self._read_ahead_ms = bool(self._read_ahead_ms), self._read_ahead_ms, 0.0
            elif req.image is not None:
                self._state(READING)
                t0 = time.perf_counter()
                rows = model.encode_image(req.image, size=req.size or None, tiles=req.tiles)
                self._conversation, self._picture, self._read_ahead_ms = model.conversation(rows), req.picture, 0.0
                before_ms, encode_ms = (time.perf_counter() - t0) * 1e3, rows.encode_ms
            conversation = self._conversation
            if conversation is None:
                raise GlimpseError("There is no image to ask about.",
                                   "Freeze a camera frame, take a screenshot, paste or open an image first.")
            if req.cancel.is_set():
                raise Cancelled("The question")
            self._state(GENERATING)
            answer = self._stream(conversation.stream(
                question, max_tokens=req.max_tokens, temperature=req.temperature, seed=req.seed, cancel=req.cancel))
            if answer.finish_reason == "cancelled" and not answer.text.strip():
                # Stopped before the first word: the chat keeps no turn for it, so neither does the conversation
                # (Regenerate takes back the conversation's last turn and must find the chat's last answer).
                conversation.drop_last_turn()
            else:
                taken_back = None  # the new answer replaces it
            self._put_back(taken_back)
            emit(self.answered, Reply.from_answer(answer, before_ms=before_ms, encode_ms=encode_ms,
                                                  read_ahead=read_ahead))
        except Cancelled:
            self._put_back(taken_back)
            emit(self.answered, Reply("", "cancelled"))
        except Exception as e:
            self._put_back(taken_back)
            if not isinstance(e, GlimpseError):
                log.exception("a question failed")
            emit(self.failed, describe_error(e))
            if isinstance(e, RunnerError):
                self._lost(e)
        finally:
            self._state(IDLE if self._model is not None else NO_MODEL)
            emit(self.request_done, req.cancel)

    @Slot(object)
    def prepare(self, req: PrepareRequest) -> None:
        ready = False
        try:
            model = self._model
            if req.cancel.is_set() or model is None:
                return  # a newer picture came, or the model is going: the question will send the picture itself
            self._state(READING)
            rows = model.encode_image(req.image, size=req.size or None, tiles=req.tiles, cancel=req.cancel)
            conversation = model.conversation(rows)
            conversation.prepare(req.cancel)
            self._conversation, self._picture, self._read_ahead_ms = conversation, req.picture, rows.encode_ms
            ready = True
        except Cancelled:  # a newer picture, Stop, or the window closing
            pass
        except RunnerError as e:
            self._lost(e)
        except Exception as e:  # the question will try again and report it: reading ahead is only a head start
            log.info("reading picture %d ahead failed: %s", req.picture, e)
        finally:
            self._state(IDLE if self._model is not None else NO_MODEL)
            emit(self.prepared, req.picture, ready)
            emit(self.request_done, req.cancel)

    def _put_back(self, turn: tuple[str, str] | None) -> None:
        """A regeneration that wrote nothing keeps the answer it was meant to replace (the chat puts it back too)."""
        if turn is not None and self._conversation is not None:
            self._conversation.restore_turn(*turn)

    @Slot(object)
    def live(self, req: LiveRequest) -> None:
        batcher = _Batcher(self._send_text)

        def on_frame(_frame: Frame) -> None:  # a frame goes to the model (again, after a restart)
            batcher.reset()
            self._state(READING)
            emit(self.caption_started)

        def on_piece(piece: str) -> None:
            if not batcher.started:
                self._state(GENERATING)
            batcher.add(piece)

        kind, message = "stopped", ""
        try:
            model = self._model
            if model is None:
                raise GlimpseError("No model is loaded.", "Choose or download one in the model manager.")
            self._state(WATCHING)
            # The current conversation stays valid: the engine re-injects its cached image rows if captions
            # used the cache in between.
            captions = caption_stream(model, req.source, every=req.every, size=req.size or LIVE_SIZE,
                                      prompt=req.prompt, cancel=req.cancel, on_piece=on_piece,
                                      on_frame=on_frame, sleep=req.cancel.wait)
            for caption in captions:
                batcher.flush()
                self._state(WATCHING)
                if caption.answer.finish_reason != "cancelled":  # half a caption is not worth keeping
                    emit(self.captioned, caption, Reply.from_answer(caption.answer))
            if not req.cancel.is_set() and req.source.ended:
                kind, message = "ended", f"{req.source.name} has ended."
        except Cancelled:
            pass
        except Exception as e:
            if not isinstance(e, GlimpseError):
                log.exception("live captions failed")
            kind, message = "error", describe_error(e)
            if isinstance(e, RunnerError):
                self._lost(e)
        finally:
            self._state(IDLE if self._model is not None else NO_MODEL)
            emit(self.live_ended, kind, message)
            emit(self.request_done, req.cancel)

    @Slot()
    def shutdown(self) -> None:
        """Free the model on the thread that used it, then end the thread's event loop."""
        try:
            self._close_model()
        finally:
            thread = QThread.currentThread()
            thread.quit()


class ModelWorker(QObject):
    """The GUI thread's handle on the worker. Requests go out as queued signals; the worker's results are relayed
    by signal-to-signal connections, so they are emitted here, on the GUI thread, and anything may listen to them
    (a plain Python callable connected to a signal of an object on another thread would run on that thread)."""

    state_changed = Signal(str)
    model_ready = Signal(str, int)
    model_failed = Signal(str)
    text = Signal(str)
    answered = Signal(object)
    caption_started = Signal()
    captioned = Signal(object, object)
    live_ended = Signal(str, str)
    failed = Signal(str)
    prepared = Signal(int, bool)
    notice = Signal(str)
    answer_restarted = Signal()
    model_lost = Signal(str)
    devices = Signal(str, str)

    _load = Signal(str, int, str, object)
    _ask = Signal(object)
    _live = Signal(object)
    _prepare = Signal(object)
    _shutdown = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.worker = Worker()
        self._thread = new_qthread("glimpse model worker")
        self.worker.moveToThread(self._thread)
        self._load.connect(self.worker.load)
        self._ask.connect(self.worker.ask)
        self._live.connect(self.worker.live)
        self._prepare.connect(self.worker.prepare)
        self._reading: threading.Event | None = None  # the last read-ahead's cancel event
        self._shutdown.connect(self.worker.shutdown)
        for name in ("state_changed", "model_ready", "model_failed", "text", "answered", "caption_started",
                     "captioned", "live_ended", "failed", "prepared", "notice", "answer_restarted", "model_lost",
                     "devices"):
            getattr(self.worker, name).connect(getattr(self, name))
        self.worker.request_done.connect(self._forget)
        self._unfinished: list[threading.Event] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    def load(self, name_or_path: str, threads: int = 0, device: str = "auto") -> None:
        if self._closed:  # e.g. the window's first load, scheduled before it was closed
            return
        self.stop()
        cancel = threading.Event()
        self._track(cancel)
        emit(self._load, name_or_path, threads, device, cancel)

    def ask(self, req: AskRequest) -> None:
        self._track(req.cancel)
        emit(self._ask, req)

    def live(self, req: LiveRequest) -> None:
        self._track(req.cancel)
        emit(self._live, req)

    def prepare(self, req: PrepareRequest) -> None:
        """Read a picture ahead (see ``PrepareRequest``); a newer one makes an older one still waiting pointless."""
        if self._reading is not None:
            self._reading.set()
        self._reading = req.cancel
        self._track(req.cancel)
        emit(self._prepare, req)

    def _track(self, event: threading.Event) -> None:
        if self._closed:
            raise RuntimeError("the model worker has been shut down")
        with self._lock:
            self._unfinished.append(event)

    @Slot(object)
    def _forget(self, event: object) -> None:
        with self._lock:
            self._unfinished = [e for e in self._unfinished if e is not event]

    @property
    def state(self) -> str:
        """What the worker is doing right now (``state_changed`` reports the same, a moment later)."""
        return self.worker.current_state

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._unfinished)

    def stop(self) -> None:
        """Stop the running request after the current token and drop the queued ones; returns at once."""
        with self._lock:
            for event in self._unfinished:
                event.set()
        self.worker.cancel_generation()

    def shutdown(self, timeout_s: float = 30.0) -> bool:
        """Stop, free the model and end the thread; True when the thread has ended."""
        if self._closed:
            return not self._thread.isRunning()
        self._closed = True
        self.stop()
        emit(self._shutdown)
        return bool(self._thread.wait(int(timeout_s * 1000)))
