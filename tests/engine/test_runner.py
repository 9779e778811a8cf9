"""The model in its own process (engine/runner): the same answers as in-process, and every injected fault (a
crash by signal, a hang, a runner killed from outside, a parent that dies) ending in a sentence, a restart or a
clean exit, never a traceback, a hang or a process left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from glimpse.engine.errors import Cancelled, GlimpseError, ModelFolderError
from glimpse.engine.runner import RunnerError, RunnerModel, faults
from glimpse.engine.runner.protocol import PeerGone, ProtocolError, encode, read_message, write_message
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.types import Answer, Restart

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return (np.random.default_rng(7).random((120, 160, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, picture: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The in-process model's greedy token ids for QUESTION, then for a follow-up."""
    with load_model(tiny_model_dir, n_ctx=1024, threads=1) as model:
        conv = model.conversation(picture, size=256)
        return conv.ask(QUESTION, max_tokens=8).token_ids, conv.ask("And then?", max_tokens=6).token_ids


@pytest.fixture
def notices() -> list[str]:
    return []


def _runner(tiny_model_dir: Path, notices: list[str]) -> RunnerModel:
    return RunnerModel(tiny_model_dir, n_ctx=1024, threads=1, on_notice=notices.append)


def _collect(items: Iterator[str | Answer | Restart]) -> tuple[list[str | Restart], Answer]:
    seen: list[str | Restart] = []
    for item in items:
        if isinstance(item, Answer):
            return seen, item
        seen.append(item)
    raise AssertionError("the stream ended without an answer")


# -- the wire format --------------------------------------------------------------------------------------------------

def test_messages_carry_headers_and_arrays() -> None:
    r, w = os.pipe()
    try:
        rows = np.arange(12, dtype=np.float32).reshape(3, 4)
        write_message(w, {"op": "x", "text": "ü"}, rows)
        write_message(w, {"op": "y"})
        header, array = read_message(r)
        assert header == {"op": "x", "text": "ü"} and array is not None and np.array_equal(array, rows)
        assert read_message(r) == ({"op": "y"}, None)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("damage", ["truncated", "huge", "not json", "wrong shape", "no description"])
def test_a_damaged_frame_is_an_error_not_an_allocation(damage: str) -> None:
    frame = b"".join(bytes(p) for p in encode({"op": "x"}, np.zeros((2, 2), np.float32)))
    if damage == "truncated":
        frame = frame[:-3]
    elif damage == "huge":
        frame = (1 << 30).to_bytes(4, "little") + frame[4:]
    elif damage == "not json":
        frame = frame[:12] + b"}" + frame[13:]
    elif damage == "wrong shape":
        frame = frame.replace(b"[2,2]", b"[2,3]")
    else:
        frame = frame.replace(b'"array"', b'"arrax"')
    r, w = os.pipe()
    try:
        os.write(w, frame)
        os.close(w)
        w = -1
        with pytest.raises(PeerGone if damage == "truncated" else ProtocolError):
            read_message(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_fault_specs_are_parsed_and_typos_ignored() -> None:
    assert faults.parse("segv@answer#1, hang@load") == [faults.Fault("segv", "answer", 1),
                                                        faults.Fault("hang", "load", None)]
    assert faults.parse("segfault@answer,segv@later,segv@load#x") == []


# -- answers through the runner ---------------------------------------------------------------------------------------

def test_the_runner_answers_as_the_model_does_in_process(tiny_model_dir: Path, picture: np.ndarray,
                                                         reference: tuple[tuple[int, ...], ...],
                                                         notices: list[str]) -> None:
    with _runner(tiny_model_dir, notices) as model:
        assert model.pid is not None and model.pid != os.getpid()
        conv = model.conversation(picture, size=256)
        pieces, answer = _collect(conv.stream(QUESTION, max_tokens=8))
        assert answer.token_ids == reference[0]
        assert "".join(str(p) for p in pieces) == answer.text
        follow = conv.ask("And then?", max_tokens=6)
        assert follow.token_ids == reference[1] and follow.timings.encode_ms == 0  # the image came from the cache
        rows = model.encode_image(picture, size=256)
        assert rows.rows.shape == (16, 64) and rows.rows.dtype == np.float32
        assert model.conversation(rows).ask(QUESTION, max_tokens=8).token_ids == reference[0]
        assert conv.drop_last_turn()[0] == "And then?" and [q for q, _ in conv.turns] == [QUESTION]
        assert model.starts == 1 and notices == []


def test_errors_in_the_runner_arrive_as_the_same_sentences(tiny_model_dir: Path, tmp_path: Path,
                                                           notices: list[str]) -> None:
    with pytest.raises(ModelFolderError):
        _runner(tmp_path, notices)  # not a model folder: the runner's own sentence, then it ends
    with _runner(tiny_model_dir, notices) as model:
        conv = model.conversation(np.zeros((64, 64, 3), np.uint8), size=256)
        with pytest.raises(GlimpseError) as raised:
            conv.ask("word " * 3000, max_tokens=4)  # more than the 1024 positions: refused inside the runner
        assert not isinstance(raised.value, RunnerError) and "context" in str(raised.value).lower()
        assert model.starts == 1 and model.pid is not None  # an error, not a crash: the runner serves on


@pytest.mark.parametrize(("fault", "signal_name"), [("segv@answer#1", "SIGSEGV"), ("ill@prefill#1", "SIGILL"),
                                                    ("abort@answer#1", "SIGABRT")])
def test_a_crash_costs_a_sentence_and_the_question_is_answered_again(
        tiny_model_dir: Path, picture: np.ndarray, reference: tuple[tuple[int, ...], ...], notices: list[str],
        monkeypatch: pytest.MonkeyPatch, fault: str, signal_name: str) -> None:
    monkeypatch.setenv(faults.ENV, fault)
    with _runner(tiny_model_dir, notices) as model:
        first_pid = model.pid
        assert model.kernels.startswith("as built") and "proven by the canary" in model.kernels
        conv = model.conversation(picture, size=256)
        pieces, answer = _collect(conv.stream(QUESTION, max_tokens=8))
        restarts = [p for p in pieces if isinstance(p, Restart)]
        assert len(restarts) == 1 and signal_name in restarts[0].notice
        after = pieces[pieces.index(restarts[0]) + 1:]
        assert "".join(str(p) for p in after) == answer.text  # the answer again, whole, after the restart
        assert answer.token_ids == reference[0]  # the safer configuration answers the same (greedy, tiny model)
        assert model.starts == 2 and model.pid != first_pid and not psutil.pid_exists(first_pid or -1)
        assert notices == [restarts[0].notice] and "restarting" in notices[0]
        # The restarted runner stepped down the kernels' fallback chain from the rung the canary had passed.
        assert model.kernels.startswith("no extra buffer types")
        assert f"chosen after the model's process stopped (killed by {signal_name})" in model.kernels
        # The conversation moved with it: the follow-up is answered from the new runner's cache.
        assert conv.ask("And then?", max_tokens=6).token_ids == reference[1]


def test_a_second_crash_unloads_the_model_with_a_sentence(tiny_model_dir: Path, picture: np.ndarray,
                                                          notices: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "segv@prefill")  # every runner crashes
    with _runner(tiny_model_dir, notices) as model:
        conv = model.conversation(picture, size=256)
        with pytest.raises(RunnerError, match=r"stopped again \(killed by SIGSEGV\).*unloaded") as failed:
            _collect(conv.stream(QUESTION, max_tokens=4))
        assert "again" in failed.value.hint and len(notices) == 1
        assert model.pid is None  # nothing left running
        with pytest.raises(RunnerError, match="unloaded"):  # and it stays unloaded until loaded again
            conv.ask(QUESTION, max_tokens=4)


def test_a_crash_while_loading_restarts_once(tiny_model_dir: Path, notices: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "ill@load#1")
    with _runner(tiny_model_dir, notices) as model:
        assert model.starts == 2 and model.name and "while loading the model (killed by SIGILL)" in notices[0]
    monkeypatch.setenv(faults.ENV, "ill@load")
    with pytest.raises(RunnerError, match="stopped again"):
        _runner(tiny_model_dir, notices)


def test_a_hung_runner_misses_its_deadline_and_is_replaced(tiny_model_dir: Path, picture: np.ndarray,
                                                           reference: tuple[tuple[int, ...], ...],
                                                           notices: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "hang@answer#1")
    monkeypatch.setenv("GLIMPSE_RUNNER_DEADLINE_SCALE", "0.1")  # 3 s between two pieces instead of 30
    with _runner(tiny_model_dir, notices) as model:
        hung = model.pid
        pieces, answer = _collect(model.conversation(picture, size=256).stream(QUESTION, max_tokens=8))
        assert any(isinstance(p, Restart) and "made no progress" in p.notice for p in pieces)
        assert answer.token_ids == reference[0] and not psutil.pid_exists(hung or -1)


def test_stop_ends_a_stuck_answer_and_the_next_question_is_answered(tiny_model_dir: Path, picture: np.ndarray,
                                                                    reference: tuple[tuple[int, ...], ...],
                                                                    notices: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "hang@answer#1")  # a kernel that never returns, and a user who presses Stop
    with _runner(tiny_model_dir, notices) as model:
        conv = model.conversation(picture, size=256)
        stream = conv.stream(QUESTION, max_tokens=8)
        assert isinstance(next(stream), str)  # the first piece, then the runner hangs
        threading.Timer(0.2, model.cancel).start()
        with pytest.raises(Cancelled):
            list(stream)
        assert conv.ask(QUESTION, max_tokens=8).token_ids == reference[0]  # a new runner, silently (it was Stop)
        assert model.starts == 2 and notices == []


def test_a_runner_killed_between_questions_is_restarted_with_the_conversation(
        tiny_model_dir: Path, picture: np.ndarray, reference: tuple[tuple[int, ...], ...], notices: list[str]) -> None:
    with _runner(tiny_model_dir, notices) as model:
        conv = model.conversation(picture, size=256)
        assert conv.ask(QUESTION, max_tokens=8).token_ids == reference[0]
        os.kill(model.pid or -1, signal.SIGKILL)  # the system's OOM killer, say
        time.sleep(0.2)
        assert conv.ask("And then?", max_tokens=6).token_ids == reference[1]  # the first turn was replayed
        assert model.starts == 2 and len(notices) == 1 and "SIGKILL" in notices[0]


def test_the_runner_does_not_outlive_its_parent(tiny_model_dir: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        from glimpse.engine.runner import RunnerModel
        model = RunnerModel({str(tiny_model_dir)!r}, n_ctx=1024, threads=1)
        print(model.pid, flush=True)
        os.kill(os.getpid(), 9)  # the window crashing or killed: no cleanup runs
    """)
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                            check=False)
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    runner = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10  # the pipe's end (and PR_SET_PDEATHSIG) ends it at once; allow for a busy CPU
    while psutil.pid_exists(runner) and psutil.Process(runner).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the runner outlived its parent"
        time.sleep(0.05)


# -- the command line -------------------------------------------------------------------------------------------------

def _ask(model: Path, photo: Path, fault: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, faults.ENV: fault}
    return subprocess.run([sys.executable, "-m", "glimpse.engine", "ask", str(model), str(photo), QUESTION,
                           "--size", "256", "--max-tokens", "6", "--n-ctx", "1024"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300, check=False)


def test_glimpse_ask_answers_after_a_crash_or_ends_with_a_sentence(tiny_model_dir: Path, tmp_path: Path,
                                                                   picture: np.ndarray) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(picture).save(photo)
    once = _ask(tiny_model_dir, photo, "segv@answer#1")
    assert once.returncode == 0, once.stderr
    assert "killed by SIGSEGV" in once.stderr and "trying once more" in once.stderr and once.stdout.strip()
    twice = _ask(tiny_model_dir, photo, "segv@prefill")
    assert 0 < twice.returncode < 128
    assert "glimpse: error: The model's process stopped again (killed by SIGSEGV)" in twice.stderr
    assert "Traceback" not in twice.stderr


def test_glimpse_caption_captions_through_a_crash_or_ends_with_a_sentence(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    from tests.engine.test_caption import write_video  # noqa: PLC0415 (one video writer for the caption tests)

    video = write_video(tmp_path / "scenes.avi")

    def caption(fault: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "glimpse.engine", "caption", str(tiny_model_dir), "--source",
                               str(video), "--count", "2", "--jsonl", "--size", "256", "--n-ctx", "1024"],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, faults.ENV: fault},
                              timeout=300, check=False)

    once = caption("segv@answer#1")
    assert once.returncode == 0, once.stderr
    # The video plays in real time: frames that pass during the restart are gone, so the second may not come.
    assert 1 <= len(once.stdout.strip().splitlines()) <= 2 and "killed by SIGSEGV" in once.stderr
    twice = caption("ill@answer")
    assert 0 < twice.returncode < 128 and "stopped again (killed by SIGILL)" in twice.stderr
    assert "Traceback" not in twice.stderr
