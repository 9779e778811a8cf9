"""The runner process: owns one loaded :class:`~engine.runtime.model.Model` and answers requests over a pipe.

Started by :class:`engine.runner.client.RunnerProcess` as ``glimpse _runner`` (the frozen app) or
``python -m glimpse.engine _runner`` (engine.system.self_command), so it runs the same code and native libraries as the
window or command that started it. Everything native (onnxruntime's session, llama.cpp's context) lives here, so a
kernel that crashes or hangs takes only this process with it.

Its stdin carries requests, its original stdout replies (engine.runner.protocol); file descriptor 1 is pointed at
stderr first, so a native library's stray ``printf`` can never corrupt a reply. A reader thread takes requests as they
come: ``cancel`` acts at once (the answer stops after the current token), the rest queue for the main thread, one at
a time. When the pipe from the parent ends (it closed, or died), the process ends at once, mid-work or not: nothing
of it outlives its parent.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from glimpse.engine.errors import Cancelled, GlimpseError, InputError
from glimpse.engine.models.model_folder import LLM_FILE, read_manifest
from glimpse.engine.runner import faults
from glimpse.engine.runner.protocol import PeerGone, ProtocolError, read_message, write_message
from glimpse.engine.runtime.canary import choose_kernels, step_down
from glimpse.engine.runtime.conversation import Conversation
from glimpse.engine.runtime.model import Model, load_model, resolve_model
from glimpse.engine.runtime.tuning import StatusFn
from glimpse.engine.runtime.types import Answer, ImageRows
from glimpse.engine.runtime.vision import flush_denormals
from glimpse.engine.runtime.vision_providers import choose_vision
from glimpse.engine.system import die_with_parent, peak_rss_bytes

log = logging.getLogger("glimpse.runner")


class _Request:
    def __init__(self, header: dict[str, Any], array: npt.NDArray[Any] | None) -> None:
        self.header = header
        self.array = array
        self.rid = int(header.get("rid", 0))
        self.cancel = threading.Event()


class Server:
    def __init__(self, fd_in: int, fd_out: int, start: int) -> None:
        self._in = fd_in
        self._out = fd_out
        self._start = start
        self._write_lock = threading.Lock()
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._current: _Request | None = None
        self._model: Model | None = None
        self._conversations: dict[int, Conversation] = {}

    # -- the pipe --------------------------------------------------------------------------------------------------

    def send(self, rid: int, header: dict[str, Any], array: npt.NDArray[Any] | None = None) -> None:
        with self._write_lock:
            write_message(self._out, {"rid": rid, **header}, array)

    def _read_loop(self) -> None:
        while True:
            try:
                header, array = read_message(self._in)
            except PeerGone:
                os._exit(0)  # the parent is gone: no teardown of native state, nothing left behind
            except ProtocolError as e:
                log.error("the runner's pipe carried something unreadable (%s); ending", e)
                os._exit(3)
            if header.get("op") == "cancel":
                current = self._current
                if current is not None and current.rid == header.get("rid"):
                    current.cancel.set()
                    if self._model is not None:
                        self._model.cancel()
                continue
            self._queue.put(_Request(header, array))

    # -- the work --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        threading.Thread(target=self._read_loop, name="glimpse runner pipe", daemon=True).start()
        self.send(0, {"ev": "hello", "pid": os.getpid()})
        while True:
            req = self._queue.get()
            if req is None or req.header.get("op") == "close":
                break
            self._current = req
            try:
                self._handle(req)
            except Cancelled:
                self.send(req.rid, {"ev": "cancelled"})
            except GlimpseError as e:
                self.send(req.rid, {"ev": "error", "type": type(e).__name__, "message": e.message, "hint": e.hint,
                                    "gui_hint": e.gui_hint})
            except Exception as e:  # a bug: report it as one, keep serving
                log.error("%s failed:\n%s", req.header.get("op"), traceback.format_exc())
                self.send(req.rid, {"ev": "error", "type": "internal", "message": f"{type(e).__name__}: {e}",
                                    "hint": "", "gui_hint": ""})
            finally:
                self._current = None
        if self._model is not None:
            self._model.close()
        return 0

    def _model_or_fail(self) -> Model:
        if self._model is None:
            raise InputError("No model is loaded in the runner.", "Load a model first.")
        return self._model

    def _conversation(self, header: dict[str, Any]) -> Conversation:
        try:
            return self._conversations[int(header["cid"])]
        except (KeyError, ValueError, TypeError):
            raise InputError("The runner has no such conversation.", "Ask about the picture again.") from None

    def _handle(self, req: _Request) -> None:
        h, rid = req.header, req.rid
        op = h.get("op")
        if op == "load":
            self._load(req)
        elif op == "encode":
            model = self._model_or_fail()
            rows = model.encode_image(_picture(req.array), size=h.get("size"), tiles=_tiles(h.get("tiles")),
                                      cancel=req.cancel)
            self.send(rid, {"ev": "rows", **_rows_meta(rows)}, rows.rows)
        elif op == "conversation":
            model = self._model_or_fail()
            image: Image.Image | ImageRows
            if h.get("kind") == "rows":
                if req.array is None or req.array.dtype != np.float32:
                    raise InputError("Image rows must be float32.")
                image = ImageRows(np.ascontiguousarray(req.array), int(h["size"]), _tiles(h.get("tiles")),
                                  float(h.get("preprocess_ms", 0.0)), float(h.get("encode_ms", 0.0)))
            else:
                image = _picture(req.array)
            self._conversations[int(h["cid"])] = model.conversation(image, size=h.get("size"),
                                                                     tiles=_tiles(h.get("tiles")))
            self.send(rid, {"ev": "ok"})
        elif op == "stream":
            self._stream(req)
        elif op == "prepare":
            rows = self._conversation(h).prepare(req.cancel)
            self.send(rid, {"ev": "ok", **_rows_meta(rows)})
        elif op == "drop_last_turn":
            question, answer = self._conversation(h).drop_last_turn()
            self.send(rid, {"ev": "ok", "turn": [question, answer]})
        elif op == "restore_turn":
            self._conversation(h).restore_turn(str(h["question"]), str(h["answer"]))
            self.send(rid, {"ev": "ok"})
        elif op == "forget":
            self._conversations.pop(int(h.get("cid", -1)), None)
            self.send(rid, {"ev": "ok"})
        elif op == "stats":
            # Whether this thread (which made the sessions and runs them) computes subnormal floats as zero.
            flushed = bool(np.float32(1e-40) * np.float32(1.0) == 0)
            self.send(rid, {"ev": "ok", "peak_rss_bytes": peak_rss_bytes(), "denormals_flushed": flushed})
        else:
            raise InputError(f"The runner does not know the request {op!r}.")

    def _load(self, req: _Request) -> None:
        h, rid = req.header, req.rid
        if self._model is not None:
            self._model.close()
            self._model, self._conversations = None, {}

        def status(text: str, done: int, total: int) -> None:
            self.send(rid, {"ev": "status", "text": text, "done": done, "total": total})

        faults.commit("load", self._start)
        options: dict[str, Any] = {"tune": bool(h.get("tune", True)), "retune": bool(h.get("retune", False))}
        device = str(h.get("device", "cpu"))
        options.update(_safer(str(h["model"]), int(h.get("safer", 0)), str(h.get("why", "")), status, device))
        model = load_model(h["model"], threads=h.get("threads"), n_ctx=int(h.get("n_ctx", 4096)), status=status,
                           cancel=req.cancel, device=device, **options)
        self._model = model
        self.send(rid, {"ev": "ready", "name": model.name, "default_size": model.default_size, "n_ctx": model.n_ctx,
                        "threads": model.threads, "settings": asdict(model.settings),
                        "settings_text": model.settings.describe(), "tuning_report": model.tuning_report,
                        "folder": str(model.folder), "kernels": _kernels(model), "devices": model.devices,
                        "gpu_driver": model.gpu_driver, "gpu_not_used": model.gpu_not_used,
                        "vision_check": model.vision_check, "pid": os.getpid()})

    def _stream(self, req: _Request) -> None:
        h, rid = req.header, req.rid
        conversation = self._conversation(h)
        faults.commit("prefill", self._start)
        sent_first = False
        for item in conversation.stream(str(h["question"]), max_tokens=int(h.get("max_tokens", 256)),
                                        temperature=float(h.get("temperature", 0.0)),
                                        top_p=float(h.get("top_p", 1.0)), seed=h.get("seed"), cancel=req.cancel):
            if isinstance(item, Answer):
                self.send(rid, {"ev": "answer", "answer": _answer_dict(item), "turns": conversation.turns})
            else:
                self.send(rid, {"ev": "piece", "text": item})
                if not sent_first:
                    sent_first = True
                    faults.commit("answer", self._start)


def _safer(model: str, level: int, why: str, status: StatusFn, device: str = "cpu") -> dict[str, Any]:
    """What a restart after a crash loads with: ``level`` rungs down the kernels' fallback chain from the one the
    canary proved (the canary missed what the real model's shapes reach); from the GPU, one rung down is the CPU, so
    a driver that crashed costs the GPU, not the answer; and the vision encoder on the CPU. The measured runtime
    settings stay: each was checked to leave the answers unchanged, and dropping them would cost a restart the
    optimisation of a new vision graph (about 10 s for the 0.5B model's fp32 encoder)."""
    if level < 1:
        return {}
    options: dict[str, Any] = {"retune": False}
    folder = resolve_model(model)
    proven = choose_kernels(folder / LLM_FILE, read_manifest(folder).quant, status=status, device=device)
    if proven.proven:  # with GLIMPSE_CANARY=0 the user chose to run the kernels as built
        options["kernels"] = step_down(proven, level, why or "it stopped")
    # The vision encoder's GPU provider goes too: which native part stopped the process is not known, and the CPU's
    # encoder is the one that has been seen to work with every model.
    vision = choose_vision(folder, device, status=status)
    if vision.on_gpu:
        options["vision"] = vision.on_cpu(f"The model's process stopped ({why or 'it stopped'}) while the vision "
                                          f"encoder ran on {vision.label}, so it runs on the CPU.")
    return options


def _kernels(model: Model) -> str:
    return model.kernels.describe() if model.kernels is not None else ""


def _tiles(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise InputError(f"Tiles {value!r} are not rows x columns.")


def _picture(array: npt.NDArray[Any] | None) -> Image.Image:
    if array is None or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError("The picture did not arrive as RGB pixels.", "Choose the picture again.")
    return Image.fromarray(array, "RGB")


def _rows_meta(rows: ImageRows) -> dict[str, Any]:
    return {"size": rows.size, "tiles": list(rows.tiles) if rows.tiles else None,
            "preprocess_ms": rows.preprocess_ms, "encode_ms": rows.encode_ms}


def _answer_dict(answer: Answer) -> dict[str, Any]:
    return {"text": answer.text, "token_ids": list(answer.token_ids), "finish_reason": answer.finish_reason,
            "timings": asdict(answer.timings), "dropped_turns": answer.dropped_turns, "notes": list(answer.notes)}


def main(argv: list[str]) -> int:
    start = int(argv[argv.index("--start") + 1]) if "--start" in argv else 1
    fd_out = os.dup(1)
    os.dup2(2, 1)  # stray prints (Python or native) go to stderr, never into a reply
    sys.stdout = sys.stderr
    fd_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the parent, which cancels through the pipe
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    flush_denormals()  # this process is Glimpse's own: its floating-point state is its business
    return Server(fd_in, fd_out, start).run()
