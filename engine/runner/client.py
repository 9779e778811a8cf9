"""The model in a process of its own: the window and the command line hold a :class:`RunnerModel`, which behaves like
:class:`engine.runtime.model.Model` while onnxruntime and llama.cpp run in a child process (engine.runner.server).

A native crash, a driver fault or a hung kernel then costs a sentence, not the app:

- the runner dies (any signal, any exit): the pipe ends at once and the request fails with the reason;
- the runner stops making progress: every request has a deadline for its next message that scales with the work
  (the picture's views, the positions to evaluate), and a runner that misses it is killed;
- either way the client says so in one sentence (``on_notice``, and a :class:`Restart` item in an answer's stream),
  starts a new runner on a safer configuration (the kernel canary's next rung down from the one it proved) and asks
  once more, replaying the conversation: the picture and
  the turns so far. A second failure unloads the model and says how to load it again.
- Stop ends a stuck answer at once: the runner is told to cancel, and if it cannot say so within a second it is
  killed and replaced on the next request.

The deadlines of the work (not of starting and loading) scale with ``GLIMPSE_RUNNER_DEADLINE_SCALE`` (default 1;
the tests shrink them).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from glimpse.engine import errors
from glimpse.engine.errors import Cancelled, GlimpseError, InputError
from glimpse.engine.models.model_folder import ModelManifest, read_manifest
from glimpse.engine.runner.protocol import PeerGone, ProtocolError, read_message, write_message
from glimpse.engine.runtime.preprocess import ImageInput, check_size, load_image
from glimpse.engine.runtime.types import Answer, ImageRows, Restart, Timings
from glimpse.engine.system import self_command

if TYPE_CHECKING:
    from glimpse.engine.runtime.tuning import RuntimeSettings, StatusFn

log = logging.getLogger("glimpse.runner")

NoticeFn = Callable[[str], None]
Exchange = Generator[dict[str, Any], None, tuple[dict[str, Any], "npt.NDArray[Any] | None"]]

# Seconds, before GLIMPSE_RUNNER_DEADLINE_SCALE. Generous: they catch a runner that is stuck, not a slow computer.
START_S = 60.0  # the process starts and imports its runtimes (a frozen app from a slow disk included)
LOAD_EVENT_S = 300.0  # between two load events (hashing a large model, one tuning step)
VIEW_S = 60.0  # one encoder view (a 1024 px view takes 2-8 s on 2 cores)
POSITION_S = 0.25  # one prefill position (about 0.01 s on 2 cores for the 0.5B model)
TOKEN_S = 30.0  # between two answer pieces
CALL_S = 30.0  # a request that does no model work
CANCEL_GRACE_S = 1.0  # how long a cancelled request may take to say so before its runner is killed


def _scale() -> float:
    try:
        value = float(os.environ.get("GLIMPSE_RUNNER_DEADLINE_SCALE", "1"))
    except ValueError:
        return 1.0
    return value if value > 0 else 1.0


def describe_exit(returncode: int | None) -> str:
    """A runner's end in words: "killed by SIGSEGV", "exited with status 3"."""
    if returncode is None:
        return "stopped responding"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class RunnerError(GlimpseError):
    """The model's process failed twice (or could not start): the model is unloaded."""


class RunnerDied(Exception):
    """The runner ended or stopped making progress mid-request (internal: the client recovers or raises
    :class:`RunnerError`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _rebuild_error(h: dict[str, Any]) -> GlimpseError:
    name = str(h.get("type", ""))
    cls = getattr(errors, name, None)
    if name == "internal" or not (isinstance(cls, type) and issubclass(cls, GlimpseError)):
        cls = errors.InferenceError
    if cls is Cancelled:
        return Cancelled()
    err: GlimpseError = cls.__new__(cls)
    GlimpseError.__init__(err, str(h.get("message", "")), str(h.get("hint", "")), gui_hint=h.get("gui_hint"))
    return err


def _drain(events: Exchange, on_event: Callable[[dict[str, Any]], None] | None = None,
           ) -> tuple[dict[str, Any], npt.NDArray[Any] | None]:
    """Run an exchange to its end, handing each progress event to ``on_event``; its result."""
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            result: tuple[dict[str, Any], npt.NDArray[Any] | None] = done.value
            return result
        if on_event is not None:
            on_event(event)


class RunnerProcess:
    """One runner process and its pipe. Requests are made one at a time (from one thread); :meth:`kill` and the
    cancel of a request may come from any thread."""

    def __init__(self, start: int = 1) -> None:
        self.start = start
        self.ended_on_purpose = False  # killed by the client, or its death already reported by a request
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            # A session of its own: Ctrl-C in a terminal reaches the parent, which cancels through the pipe.
            self._proc = subprocess.Popen(self_command("_runner", "--start", str(start)), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, env=env,
                                          start_new_session=True)
        except OSError as e:
            raise RunnerError(f"Glimpse could not start the model's process ({e}).",
                              "Reinstall Glimpse: the installation may be incomplete.") from e
        assert self._proc.stdin is not None and self._proc.stdout is not None and self._proc.stderr is not None
        self._in = self._proc.stdout.fileno()
        self._out = self._proc.stdin.fileno()
        threading.Thread(target=self._relay_stderr, args=(self._proc.stderr,), name="glimpse runner stderr",
                         daemon=True).start()
        header, _ = self.request_hello()
        if header.get("ev") != "hello":
            self.kill()
            raise RunnerDied(f"it said {header.get('ev')!r} instead of hello")
        self.pid = int(header.get("pid", self._proc.pid))

    def _relay_stderr(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.stderr_tail.append(line)
            log.debug("runner %d: %s", self._proc.pid, line)

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def kill(self) -> None:
        """End the runner now (SIGKILL) and reap it."""
        self.ended_on_purpose = True
        with contextlib.suppress(OSError):
            self._proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)

    def close(self) -> None:
        """Ask the runner to end, then make sure it has: it frees its model itself, or is killed after 3 s."""
        if self.alive:
            with contextlib.suppress(OSError), self._write_lock:
                write_message(self._out, {"op": "close"})
            try:
                self._proc.wait(3)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def _died(self, what: str) -> RunnerDied:
        """The runner's pipe ended or broke: reap it (briefly) and say how it ended."""
        self.ended_on_purpose = True  # the request that saw it die says so
        try:
            code = self._proc.wait(2)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self._proc.returncode
        tail = " | ".join(list(self.stderr_tail)[-5:])
        log.info("the model's process %d %s %s; its last lines: %s", self._proc.pid, describe_exit(code), what,
                    tail or "(none)")
        return RunnerDied(describe_exit(code))

    def post(self, header: dict[str, Any]) -> None:
        """Send a message that needs no answer (its reply, if any, is skipped)."""
        with contextlib.suppress(OSError), self._write_lock:
            write_message(self._out, {"rid": 0, **header})

    def exchange(self, header: dict[str, Any], array: npt.NDArray[Any] | None = None, *, first_s: float,
                 next_s: float = TOKEN_S, cancel: Callable[[], bool] | None = None, scaled: bool = True) -> Exchange:
        """Send one request; yield its progress events ("status", "piece") as they come and return its result.
        The first message must come within ``first_s`` seconds, each later one within ``next_s`` (both scaled).
        ``cancel()`` true: the runner is told to stop; one that has not stopped within a second is killed."""
        rid = next(self._ids)
        try:
            with self._write_lock:
                write_message(self._out, {"rid": rid, **header}, array)
        except OSError:
            raise self._died("before a request") from None
        scale = _scale() if scaled else 1.0
        return (yield from self._messages(rid, first_s * scale, next_s * scale, cancel))

    def request(self, header: dict[str, Any], array: npt.NDArray[Any] | None = None, *, first_s: float,
                next_s: float = TOKEN_S, on_event: Callable[[dict[str, Any]], None] | None = None,
                cancel: Callable[[], bool] | None = None,
                scaled: bool = True) -> tuple[dict[str, Any], npt.NDArray[Any] | None]:
        """:meth:`exchange`, with the progress events handed to ``on_event``."""
        return _drain(self.exchange(header, array, first_s=first_s, next_s=next_s, cancel=cancel, scaled=scaled),
                      on_event)

    def request_hello(self) -> tuple[dict[str, Any], npt.NDArray[Any] | None]:
        """Wait for the hello a runner sends once it has started (rid 0, no request)."""
        return _drain(self._messages(0, START_S, START_S, None))

    def _messages(self, rid: int, first_s: float, next_s: float,
                  cancel: Callable[[], bool] | None) -> Exchange:
        deadline = time.monotonic() + first_s
        waited = first_s
        cancelled_at: float | None = None
        while True:
            now = time.monotonic()
            if cancel is not None and cancelled_at is None and cancel():
                cancelled_at = now
                with contextlib.suppress(OSError), self._write_lock:
                    write_message(self._out, {"op": "cancel", "rid": rid})
            if cancelled_at is not None and now - cancelled_at > CANCEL_GRACE_S:
                log.info("the model's process did not stop within %.0f s of Stop; ending it", CANCEL_GRACE_S)
                self.kill()
                raise Cancelled("The answer")
            if now > deadline:
                log.info("the model's process made no progress for %.0f s; ending it", waited)
                self.kill()
                raise RunnerDied(f"it made no progress for {waited:.0f} s")
            ready, _, _ = select.select([self._in], [], [], min(0.05, max(0.0, deadline - now)))
            if not ready:
                continue
            try:
                header, array = read_message(self._in)
            except PeerGone:
                raise self._died("mid-request") from None
            except ProtocolError as e:
                self.kill()
                raise RunnerDied(f"its reply was unreadable ({e})") from e
            if header.get("rid", 0) != rid:
                continue  # the reply to a message that needed none
            event = header.get("ev")
            if event in ("status", "piece"):
                deadline, waited = time.monotonic() + next_s, next_s
                yield header
                continue
            if event == "error":
                raise _rebuild_error(header)
            if event == "cancelled":
                raise Cancelled("The answer")
            return header, array


@dataclass
class _Source:
    """What a conversation is about, kept by the client so a restarted runner can be given it again."""

    pixels: npt.NDArray[np.uint8] | None
    rows: ImageRows | None
    size: int | None
    tiles: tuple[int, int] | None

    def message(self) -> tuple[dict[str, Any], npt.NDArray[Any]]:
        tiles = list(self.tiles) if self.tiles else None
        if self.rows is not None:
            return ({"kind": "rows", "size": self.rows.size, "tiles": tiles, "preprocess_ms": self.rows.preprocess_ms,
                     "encode_ms": self.rows.encode_ms}, self.rows.rows)
        assert self.pixels is not None
        return {"kind": "image", "size": self.size, "tiles": tiles}, self.pixels

    @property
    def views(self) -> int:
        return 1 + (self.tiles[0] * self.tiles[1] if self.tiles else 0)

    @property
    def positions(self) -> int:
        return int(self.rows.rows.shape[0]) if self.rows is not None else 256 * self.views


def _pixels(image: ImageInput) -> npt.NDArray[np.uint8]:
    """RGB uint8 pixels of any picture the engine takes, checked here (a bad file is a sentence before any work)."""
    return np.ascontiguousarray(np.asarray(load_image(image).convert("RGB"), dtype=np.uint8))


class RunnerModel:
    """A model loaded in a runner process; the same methods as :class:`engine.runtime.model.Model` that the window,
    the command line, captions and the benchmark use. Not thread-safe, except :meth:`cancel`."""

    def __init__(self, path_or_name: str | Path, *, threads: int | None = None, n_ctx: int = 4096,
                 tune: bool = True, retune: bool = False, status: StatusFn | None = None,
                 on_notice: NoticeFn | None = None, cancel: threading.Event | None = None,
                 device: str = "cpu") -> None:
        self._spec: dict[str, Any] = {"model": str(path_or_name), "threads": threads, "n_ctx": n_ctx, "tune": tune,
                                      "retune": retune, "device": device}
        self._status = status
        self._on_notice = on_notice
        self._cancel = threading.Event()
        self._proc: RunnerProcess | None = None
        self._starts = 0
        self._safer = 0
        self._why = ""  # how the last runner stopped, for the kernel choice of the next (engine.runtime.canary)
        self._info: dict[str, Any] = {}
        self._cids = itertools.count(1)
        self._unloaded: str | None = None
        self._manifest: ModelManifest | None = None
        self._forgotten: collections.deque[int] = collections.deque()  # conversations gone; the runner drops them
        try:
            self._with_restart(lambda: None, "loading the model", load_cancel=cancel)
        except BaseException:
            self.close()
            raise

    # -- the process -----------------------------------------------------------------------------------------------

    def _notice(self, text: str) -> None:
        log.info("%s", text)
        if self._on_notice is not None:
            self._on_notice(text)

    def _start(self, load_cancel: threading.Event | None = None) -> RunnerProcess:
        if self._proc is not None and self._proc.alive:
            return self._proc
        if self._proc is not None:
            old, self._proc = self._proc, None
            old.close()
            if not old.ended_on_purpose:  # it died between requests (say, the system ran out of memory)
                self._notice(f"The model's process had stopped ({describe_exit(old.returncode)}); Glimpse is "
                             "starting it again.")
        self._starts += 1
        proc = RunnerProcess(self._starts)
        self._proc = proc

        def relay(h: dict[str, Any]) -> None:
            if self._status is not None:
                self._status(str(h.get("text", "")), int(h.get("done", 0)), int(h.get("total", 1)))

        header, _ = proc.request({"op": "load", **self._spec, "safer": self._safer, "why": self._why},
                                 first_s=LOAD_EVENT_S,
                                 next_s=LOAD_EVENT_S, on_event=relay, scaled=False,
                                 cancel=(load_cancel.is_set if load_cancel is not None else None))
        self._spec["retune"] = False  # measured once; a restart uses the cache (or, safer, the defaults)
        self._info = header
        return proc

    def _with_restart(self, op: Callable[[], Any], what: str, load_cancel: threading.Event | None = None) -> Any:
        """Run ``op`` on a live runner; if the runner dies, say so, restart it on a safer configuration and run
        ``op`` once more; a second death unloads the model."""
        if self._unloaded:
            raise self._still_unloaded()
        try:
            self._start(load_cancel)
            return op()
        except RunnerDied as first:
            self._notice(self._restart_sentence(first, what))
            self._safer, self._why = self._safer + 1, first.reason
            try:
                self._start(load_cancel)
                return op()
            except RunnerDied as second:
                raise self._give_up(second) from None

    def _still_unloaded(self) -> RunnerError:
        return RunnerError(str(self._unloaded), "Load the model again (run the command again).",
                           gui_hint="Choose the model again under Model to load it.")

    def _restart_sentence(self, died: RunnerDied, what: str) -> str:
        return (f"The model's process stopped while {what} ({died.reason}); Glimpse is restarting it with safer "
                "settings and trying once more.")

    def _give_up(self, died: RunnerDied) -> RunnerError:
        self._unloaded = f"The model's process stopped again ({died.reason}), so the model is unloaded."
        if self._proc is not None:
            self._proc.kill()
            self._proc = None
        return RunnerError(self._unloaded, "Run the command again to load it once more.",
                           gui_hint="Choose the model again under Model to load it once more.")

    def _exchange(self, header: dict[str, Any], array: npt.NDArray[Any] | None = None, *, first_s: float = CALL_S,
                  next_s: float = TOKEN_S, cancel: threading.Event | None = None) -> Exchange:
        proc = self._start()
        while self._forgotten:
            proc.post({"op": "forget", "cid": self._forgotten.popleft()})

        def stop() -> bool:
            return self._cancel.is_set() or (cancel is not None and cancel.is_set())

        return (yield from proc.exchange(header, array, first_s=first_s, next_s=next_s, cancel=stop))

    def _request(self, header: dict[str, Any], array: npt.NDArray[Any] | None = None, *, first_s: float = CALL_S,
                 cancel: threading.Event | None = None) -> tuple[dict[str, Any], npt.NDArray[Any] | None]:
        return _drain(self._exchange(header, array, first_s=first_s, cancel=cancel))

    # -- facts -----------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return str(self._info.get("name", ""))

    @property
    def default_size(self) -> int:
        return int(self._info.get("default_size", 1024))

    @property
    def n_ctx(self) -> int:
        return int(self._info.get("n_ctx", 0))

    @property
    def threads(self) -> int:
        return int(self._info.get("threads", 0))

    @property
    def settings(self) -> RuntimeSettings:
        # The window's process never imports the runtimes (tuning imports onnxruntime): only this property does.
        from glimpse.engine.runtime.tuning import RuntimeSettings  # noqa: PLC0415

        return RuntimeSettings(**self._info.get("settings", {}))

    @property
    def tuning_report(self) -> dict[str, Any] | None:
        report = self._info.get("tuning_report")
        return report if isinstance(report, dict) else None

    @property
    def kernels(self) -> str:
        return str(self._info.get("kernels", ""))

    @property
    def devices(self) -> str:
        """Which device runs each part ("LLM: Vulkan (llvmpipe ..., 25/25 layers), vision: CPU")."""
        return str(self._info.get("devices", ""))

    @property
    def gpu_driver(self) -> str:
        """The GPU's driver as Vulkan names it, "" on the CPU."""
        return str(self._info.get("gpu_driver", ""))

    @property
    def vision_check(self) -> str:
        """How the vision encoder's GPU provider passed its check, "" on the CPU."""
        return str(self._info.get("vision_check", ""))

    @property
    def gpu_not_used(self) -> str:
        """Why the GPU was tried and is not used, one sentence for each half of the model that it applies to ("" when
        both are on a GPU or none was asked for)."""
        return str(self._info.get("gpu_not_used", ""))

    @property
    def folder(self) -> Path:
        return Path(str(self._info.get("folder", "")))

    @property
    def manifest(self) -> ModelManifest:
        if self._manifest is None:
            self._manifest = read_manifest(self.folder)
        return self._manifest

    @property
    def pid(self) -> int | None:
        """The runner's process id (None while there is none)."""
        return self._proc.pid if self._proc is not None and self._proc.alive else None

    @property
    def starts(self) -> int:
        """How many runner processes this model has started (1 until a crash)."""
        return self._starts

    def runner_stats(self) -> dict[str, Any]:
        """The runner's own figures: ``peak_rss_bytes``, ``denormals_flushed``."""
        header, _ = self._request({"op": "stats"})
        return {k: v for k, v in header.items() if k not in ("rid", "ev")}

    def runner_peak_rss_bytes(self) -> int:
        return int(self.runner_stats().get("peak_rss_bytes", 0))

    # -- lifetime --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """End the runner (it frees the model). Safe to call twice."""
        if self._proc is not None:
            self._proc.close()
            self._proc = None

    def __enter__(self) -> RunnerModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> None:
        """Stop the request in progress (any thread): after the current token, or at once if the runner is stuck."""
        self._cancel.set()

    def begin_generation(self) -> None:
        self._cancel.clear()

    # -- pictures and questions ------------------------------------------------------------------------------------

    def encode_image(self, image: ImageInput, *, size: int | None = None, tiles: tuple[int, int] | None = None,
                     cancel: threading.Event | None = None) -> ImageRows:
        """Preprocess and encode in the runner; the rows come back (about 1 MB for a 1024 px view of the 0.5B)."""
        size = check_size(size or self.default_size)
        pixels = _pixels(image)
        views = 1 + (tiles[0] * tiles[1] if tiles else 0)
        self.begin_generation()

        def op() -> ImageRows:
            header, rows = self._request({"op": "encode", "size": size, "tiles": list(tiles) if tiles else None},
                                         pixels, first_s=VIEW_S * views, cancel=cancel)
            if rows is None or rows.dtype != np.float32 or rows.ndim != 2:
                raise RunnerDied("it sent no image rows")
            return ImageRows(rows, int(header["size"]), tiles, float(header.get("preprocess_ms", 0.0)),
                             float(header.get("encode_ms", 0.0)))

        result: ImageRows = self._with_restart(op, "reading the picture")
        return result

    def conversation(self, image: ImageInput | ImageRows, *, size: int | None = None,
                     tiles: tuple[int, int] | None = None) -> RunnerConversation:
        """A conversation about one picture, kept in the runner (and replayed into a new one after a restart)."""
        if isinstance(image, ImageRows):
            source = _Source(None, image, image.size, image.tiles)
        else:
            source = _Source(_pixels(image), None, check_size(size or self.default_size), tiles)
        return RunnerConversation(self, next(self._cids), source)

    def ask(self, image: ImageInput | ImageRows, question: str, *, size: int | None = None,
            tiles: tuple[int, int] | None = None, max_tokens: int = 256, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = None) -> Answer:
        return self.conversation(image, size=size, tiles=tiles).ask(
            question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def stream(self, image: ImageInput | ImageRows, question: str, *, size: int | None = None,
               tiles: tuple[int, int] | None = None, max_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None) -> Iterator[str | Answer | Restart]:
        return self.conversation(image, size=size, tiles=tiles).stream(
            question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)


class RunnerConversation:
    """A conversation held by the runner, mirrored here: its picture and turns, so that a restarted runner gets it
    back as it was. The same methods as :class:`engine.runtime.conversation.Conversation`."""

    def __init__(self, model: RunnerModel, cid: int, source: _Source) -> None:
        self._model = model
        self._cid = cid
        self._source = source
        self._turns: list[tuple[str, str]] = []
        self._start = 0  # the runner start in which the runner holds this conversation (0: none yet)

    @property
    def turns(self) -> list[tuple[str, str]]:
        return list(self._turns)

    @property
    def image_rows(self) -> ImageRows | None:
        return self._source.rows

    def _ensure(self) -> None:
        """Make sure the current runner holds this conversation: give it the picture and replay the turns."""
        model = self._model
        model._start()
        if self._start == model.starts:
            return
        header, array = self._source.message()
        model._request({"op": "conversation", "cid": self._cid, **header}, array)
        for question, answer in self._turns:
            model._request({"op": "restore_turn", "cid": self._cid, "question": question, "answer": answer})
        self._start = model.starts

    def _call(self, header: dict[str, Any], what: str, **kw: Any) -> dict[str, Any]:
        def op() -> dict[str, Any]:
            self._ensure()
            reply, _ = self._model._request({"cid": self._cid, **header}, **kw)
            return reply

        result: dict[str, Any] = self._model._with_restart(op, what)
        return result

    def prepare(self, cancel: threading.Event | None = None) -> ImageRows | None:
        """Read the picture ahead in the runner (see Conversation.prepare)."""
        self._model.begin_generation()
        source = self._source
        self._call({"op": "prepare"}, "reading the picture", first_s=VIEW_S * source.views
                   + POSITION_S * source.positions, cancel=cancel)
        return source.rows

    def drop_last_turn(self) -> tuple[str, str]:
        if not self._turns:
            raise InputError("There is no answer to take back in this conversation.", "Ask a question first.")
        reply = self._call({"op": "drop_last_turn"}, "taking back an answer")
        question, answer = (str(x) for x in reply["turn"])
        self._turns.pop()
        return question, answer

    def restore_turn(self, question: str, answer: str) -> None:
        self._call({"op": "restore_turn", "question": question, "answer": answer}, "putting back an answer")
        self._turns.append((question, answer))

    def ask(self, question: str, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
            seed: int | None = None, cancel: threading.Event | None = None) -> Answer:
        answer: Answer | None = None
        for item in self.stream(question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                cancel=cancel):
            if isinstance(item, Answer):
                answer = item
        assert answer is not None
        return answer

    def stream(self, question: str, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, cancel: threading.Event | None = None) -> Iterator[str | Answer | Restart]:
        """Yield the answer's pieces, then the Answer. If the runner dies on the way, a :class:`Restart` comes
        first (what was yielded so far is void), then the whole answer again from a restarted runner."""
        model = self._model
        model.begin_generation()
        if not question.strip():
            raise InputError("The question is empty.", "Type a question first.")
        request = {"op": "stream", "cid": self._cid, "question": question, "max_tokens": max_tokens,
                   "temperature": temperature, "top_p": top_p, "seed": seed}
        positions = self._source.positions + len(question) + sum(len(q) + len(a) for q, a in self._turns)
        first_s = POSITION_S * positions + (0 if self._start == model.starts and self._turns else
                                            VIEW_S * self._source.views)
        for attempt in (1, 2):
            try:
                if model._unloaded:
                    raise model._still_unloaded()
                self._ensure()
                events = model._exchange(request, first_s=first_s, cancel=cancel)
                while True:
                    try:
                        event = next(events)
                    except StopIteration as done:
                        reply: dict[str, Any] = done.value[0]
                        break
                    if event.get("ev") == "piece":
                        yield str(event.get("text", ""))
                self._turns = [(str(q), str(a)) for q, a in reply.get("turns", [])]
                yield _answer(reply["answer"])
                return
            except RunnerDied as died:
                if attempt == 2:
                    raise model._give_up(died) from None
                notice = model._restart_sentence(died, "answering")
                model._notice(notice)
                model._safer, model._why = model._safer + 1, died.reason
                yield Restart(notice)
                first_s = POSITION_S * positions + VIEW_S * self._source.views + LOAD_EVENT_S

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None and self._start and self._start == model.starts:
            model._forgotten.append(self._cid)  # sent before the model's next request (never from here: any thread)


def _answer(d: dict[str, Any]) -> Answer:
    return Answer(str(d["text"]), tuple(int(i) for i in d["token_ids"]), str(d["finish_reason"]),
                  Timings(**d["timings"]), int(d.get("dropped_turns", 0)), tuple(str(n) for n in d.get("notes", ())))
