"""The model worker on its QThread, on the tiny converted model: load, ask, follow up, stop, fail, live captions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from glimpse.app.worker import IDLE, AskRequest, LiveRequest, ModelWorker, PrepareRequest, Reply
from glimpse.engine.runtime.caption import open_video
from glimpse.engine.runtime.conversation import Conversation
from glimpse.engine.runtime.model import Model


@pytest.fixture
def worker(qtbot: QtBot, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelWorker]:
    # These tests reach into the engine's objects (Model, Conversation), so the model runs in this process; the
    # worker with the model in its runner process, crashes included, is tested in tests/app/test_runner_faults.py.
    monkeypatch.setenv("GLIMPSE_RUNNER", "0")
    w = ModelWorker()
    with qtbot.waitSignal(w.model_ready, timeout=20_000):
        w.load(str(tiny_model_dir), threads=1)  # 2 shared cores: more threads spin against each other
    yield w
    assert w.shutdown()


def ask(qtbot: QtBot, w: ModelWorker, req: AskRequest) -> tuple[Reply, list[str]]:
    pieces: list[str] = []
    w.text.connect(pieces.append)
    try:
        with qtbot.waitSignal(w.answered, timeout=20_000) as blocker:
            w.ask(req)
    finally:
        w.text.disconnect(pieces.append)
    reply = blocker.args[0]
    assert isinstance(reply, Reply)
    return reply, pieces


def test_ask_then_follow_up_streams_and_reuses_the_image(qtbot: QtBot, worker: ModelWorker,
                                                         picture: np.ndarray) -> None:
    reply, pieces = ask(qtbot, worker, AskRequest("What is this?", max_tokens=24, image=picture, size=256))
    assert len(pieces) > 1  # streamed in several updates, not one at the end
    assert "".join(pieces).strip() == reply.text
    assert reply.generated_tokens == 24 and reply.encode_ms > 0 and reply.ttft_ms > 0

    follow, pieces = ask(qtbot, worker, AskRequest("And then?", max_tokens=12))
    assert pieces and follow.generated_tokens == 12
    assert follow.encode_ms == 0  # no second encode: the image rows came from the cache
    assert follow.cached_positions > 16  # the image and the first turn were still in llama.cpp's cache


def test_regenerate_takes_back_the_last_answer_only(qtbot: QtBot, worker: ModelWorker, picture: np.ndarray,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = ask(qtbot, worker, AskRequest("What is this?", max_tokens=8, image=picture, size=256))
    second, _ = ask(qtbot, worker, AskRequest("And then?", max_tokens=8))
    encodes: list[object] = []
    real_encode = Model.encode_image
    monkeypatch.setattr(Model, "encode_image", lambda *a, **k: encodes.append(a) or real_encode(*a, **k))

    # At temperature 0 the same question gives the same answer: proof it was the same question, same history.
    same, pieces = ask(qtbot, worker, AskRequest(regenerate=True, max_tokens=8))
    assert pieces and same.text == second.text and same.encode_ms == 0
    assert same.cached_positions > second.cached_positions  # everything up to the question was cached
    varied, _ = ask(qtbot, worker, AskRequest(regenerate=True, max_tokens=8, temperature=0.7, seed=5))
    assert varied.finish_reason in ("length", "stop")
    turns = worker.worker._conversation.turns  # type: ignore[union-attr]
    assert [q for q, _ in turns] == ["What is this?", "And then?"]
    assert turns[0][1].strip() == first.text and turns[1][1].strip() == varied.text
    assert encodes == []


def _stop_after_the_prefill(monkeypatch: pytest.MonkeyPatch, req: AskRequest) -> None:
    """Make ``req`` stopped by the user after its prompt is in the cache, before the first token."""
    real_sync = Conversation._sync

    def sync_then_stop(self: Conversation, positions: list[int]) -> int:
        cached = real_sync(self, positions)
        req.cancel.set()
        return cached

    monkeypatch.setattr(Conversation, "_sync", sync_then_stop)


def test_an_answer_stopped_before_its_first_word_leaves_no_turn(qtbot: QtBot, worker: ModelWorker,
                                                                picture: np.ndarray,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ask(qtbot, worker, AskRequest("What is this?", max_tokens=4, image=picture, size=256))
    req = AskRequest("And then?", max_tokens=50)
    _stop_after_the_prefill(monkeypatch, req)
    reply, _ = ask(qtbot, worker, req)
    assert reply.finish_reason == "cancelled" and reply.generated_tokens == 0
    # The chat shows no answer for it, so Regenerate must find the first answer as the last one.
    assert [q for q, _ in worker.worker._conversation.turns] == ["What is this?"]  # type: ignore[union-attr]


def test_a_regenerate_that_writes_nothing_keeps_the_old_answer(qtbot: QtBot, worker: ModelWorker,
                                                                picture: np.ndarray,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = ask(qtbot, worker, AskRequest("What is this?", max_tokens=6, image=picture, size=256))
    req = AskRequest(regenerate=True, max_tokens=50, temperature=0.7, seed=3)
    _stop_after_the_prefill(monkeypatch, req)
    reply, _ = ask(qtbot, worker, req)
    assert reply.finish_reason == "cancelled" and reply.generated_tokens == 0
    turns = worker.worker._conversation.turns  # type: ignore[union-attr]
    assert [(q, a.strip()) for q, a in turns] == [("What is this?", first.text)]

    def broken_sync(self: Conversation, positions: list[int]) -> int:
        raise RuntimeError("llama.cpp fell over")

    monkeypatch.setattr(Conversation, "_sync", broken_sync)
    with qtbot.waitSignal(worker.failed, timeout=10_000):
        worker.ask(AskRequest(regenerate=True, max_tokens=5))
    assert worker.worker._conversation.turns == turns  # type: ignore[union-attr]


def test_a_picture_read_ahead_is_used_only_for_itself(qtbot: QtBot, worker: ModelWorker, picture: np.ndarray,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    encodes: list[object] = []
    real_encode = Model.encode_image
    monkeypatch.setattr(Model, "encode_image", lambda *a, **k: encodes.append(a) or real_encode(*a, **k))
    skipped = PrepareRequest(picture, 1, size=256)
    skipped.cancel.set()  # superseded before it ran: nothing is encoded
    with qtbot.waitSignal(worker.prepared, timeout=10_000) as prepared:
        worker.prepare(skipped)
    assert prepared.args == [1, False] and encodes == []

    with qtbot.waitSignal(worker.prepared, timeout=10_000) as prepared:
        worker.prepare(PrepareRequest(picture, 2, size=256))
    assert prepared.args == [2, True] and len(encodes) == 1
    reply, _ = ask(qtbot, worker, AskRequest("What is this?", max_tokens=4, image=picture, picture=2, size=256))
    assert reply.read_ahead and len(encodes) == 1

    other = np.ascontiguousarray(picture[:, ::-1])
    reply, _ = ask(qtbot, worker, AskRequest("What is this?", max_tokens=4, image=other, picture=3, size=256))
    assert not reply.read_ahead and reply.encode_ms > 0 and len(encodes) == 2  # another picture: encoded
    reply, _ = ask(qtbot, worker, AskRequest("What is this?", max_tokens=4, image=picture, picture=2, size=256))
    assert len(encodes) == 3  # picture 2 is no longer the conversation's: encoded again


def test_a_newer_picture_stops_reading_the_older_one_between_tiles(qtbot: QtBot, worker: ModelWorker,
                                                                    picture: np.ndarray,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    views: list[int] = []
    real_encode = Model.encode
    first_view, newer_sent = threading.Event(), threading.Event()

    def encode(self: Model, pixels: np.ndarray) -> np.ndarray:
        views.append(pixels.shape[-1])
        if len(views) == 1:  # hold the first view of the tiled picture until the window has sent a newer one
            first_view.set()
            newer_sent.wait(10)
        return real_encode(self, pixels)

    monkeypatch.setattr(Model, "encode", encode)
    results: list[tuple[int, bool]] = []
    worker.prepared.connect(lambda picture_id, ready: results.append((picture_id, ready)))
    worker.prepare(PrepareRequest(picture, 1, size=256, tiles=(2, 2)))
    qtbot.waitUntil(first_view.is_set, timeout=10_000)
    worker.prepare(PrepareRequest(np.ascontiguousarray(picture[::-1]), 2, size=256))  # a new picture
    newer_sent.set()
    qtbot.waitUntil(lambda: len(results) == 2, timeout=20_000)
    assert results == [(1, False), (2, True)]
    assert len(views) == 2  # one view of the tiled picture (its four tiles skipped), then the new picture


def test_follow_up_without_an_image_says_what_to_do(qtbot: QtBot, worker: ModelWorker) -> None:
    with qtbot.waitSignal(worker.failed, timeout=10_000) as blocker:
        worker.ask(AskRequest("Hello?"))
    assert "no image to ask about" in blocker.args[0]


def test_stop_ends_generation_within_a_token(qtbot: QtBot, worker: ModelWorker, picture: np.ndarray) -> None:
    seen: list[str] = []

    def stop_at_once(piece: str) -> None:
        # Runs on the worker thread (direct connection), so the count of tokens so far is exact.
        if not seen:
            worker.stop()
        seen.append(piece)

    worker.worker.text.connect(stop_at_once, Qt.ConnectionType.DirectConnection)
    reply, _ = ask(qtbot, worker, AskRequest("Describe it.", max_tokens=2000, image=picture, size=256))
    assert reply.finish_reason == "cancelled"
    # The first update carries one token; stop was called while it was being delivered: at most one more.
    assert reply.generated_tokens <= 2


def test_stop_from_the_gui_thread_is_prompt(qtbot: QtBot, worker: ModelWorker, picture: np.ndarray) -> None:
    worker.text.connect(lambda _: worker.stop())
    reply, _ = ask(qtbot, worker, AskRequest("Describe it.", max_tokens=3000, image=picture, size=256))
    assert reply.finish_reason == "cancelled" and reply.generated_tokens < 3000


def test_an_exception_in_the_worker_becomes_a_message(qtbot: QtBot, worker: ModelWorker, picture: np.ndarray,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Model, "encode_image", boom)
    states: list[str] = []
    worker.state_changed.connect(states.append)
    with qtbot.waitSignal(worker.failed, timeout=10_000) as blocker:
        worker.ask(AskRequest("What?", image=picture))
    assert "RuntimeError: boom" in blocker.args[0]
    qtbot.waitUntil(lambda: states[-1:] == [IDLE])
    monkeypatch.undo()
    reply, _ = ask(qtbot, worker, AskRequest("Still there?", max_tokens=4, image=picture, size=256))
    assert reply.generated_tokens == 4  # the worker carries on after a failure


def test_model_load_failure_is_a_sentence(qtbot: QtBot, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json", encoding="utf-8")
    w = ModelWorker()
    try:
        with qtbot.waitSignal(w.model_failed, timeout=10_000) as blocker:
            w.load(str(tmp_path / "broken"))
        assert "corrupt" in blocker.args[0]
    finally:
        assert w.shutdown()


def test_first_start_on_a_cpu_says_it_is_measuring(qtbot: QtBot, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_TUNE", "1")
    w = ModelWorker()
    states: list[str] = []
    w.state_changed.connect(states.append)
    try:
        with qtbot.waitSignal(w.model_ready, timeout=60_000):
            w.load(str(tiny_model_dir), threads=1)
        qtbot.waitUntil(lambda: states[-1] == IDLE, timeout=5_000)  # model_ready comes just before IDLE
        measuring = [s for s in states if s.startswith("Finding the fastest settings")]
        assert measuring and "(1/" in measuring[0]
        assert states.index(measuring[-1]) < len(states) - 2  # back to loading, then idle
    finally:
        assert w.shutdown()


def test_live_captions_from_a_video(qtbot: QtBot, worker: ModelWorker, video: Path) -> None:
    source = open_video(video, realtime=False)
    captions = []
    worker.captioned.connect(lambda c, r: captions.append((c, r)))
    with qtbot.waitSignal(worker.live_ended, timeout=30_000) as blocker:
        worker.live(LiveRequest(source, "Describe what you see.", every=0.0, size=256))
    assert blocker.args[0] == "ended"
    assert len(captions) >= 3
    assert all(c.text and r.generated_tokens > 0 for c, r in captions)
    assert [c.frame_index for c, _ in captions] == sorted(c.frame_index for c, _ in captions)
    source.close()


def test_stop_ends_a_caption_loop(qtbot: QtBot, worker: ModelWorker, video: Path) -> None:
    source = open_video(video, realtime=True)
    try:
        with qtbot.waitSignal(worker.captioned, timeout=20_000):
            worker.live(LiveRequest(source, "Describe.", every=5.0, size=256))
        started = threading.Event()
        worker.live_ended.connect(lambda *_: started.set())
        with qtbot.waitSignal(worker.live_ended, timeout=5_000) as blocker:
            worker.stop()  # the loop is waiting out its 5 s interval: it must not finish waiting
        assert blocker.args[0] == "stopped"
    finally:
        source.close()
