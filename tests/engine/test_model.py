"""The public engine API on a tiny converted model: prompts, cache reuse, cancellation, context budget, errors."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import jinja2
import numpy as np
import pytest
from PIL import Image

from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, write_checkpoint
from glimpse.engine.errors import (
    Cancelled,
    ContextFullError,
    ImageError,
    InputError,
    ModelFolderError,
    ModelNotFoundError,
)
from glimpse.engine.models.model_folder import file_entry
from glimpse.engine.runtime import conversation
from glimpse.engine.runtime.model import Answer, Model, load_model
from glimpse.engine.runtime.preprocess import tile_views
from glimpse.engine.runtime.prompt import SYSTEM_PROMPT, first_turn, next_turn, render

SIZE = 256  # 16 image rows with the 64x downsampling


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Iterator[Model]:
    with load_model(tiny_model_dir, n_ctx=1024, threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(7).random((120, 200, 3)) * 255).astype(np.uint8)


# -- the template -------------------------------------------------------------------------------------------------

def _chat_template(checkpoint: Path, messages: list[dict[str, str]]) -> str:
    config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    return jinja2.Environment().from_string(config["chat_template"]).render(
        messages=messages, add_generation_prompt=True)


def test_first_turn_matches_the_checkpoints_template(tiny_checkpoint: Path) -> None:
    expected = _chat_template(tiny_checkpoint, [{"role": "system", "content": SYSTEM_PROMPT},
                                                {"role": "user", "content": "<image>\nWhat is this?"}])
    assert render(first_turn("What is this?")) == expected


def test_follow_up_matches_the_checkpoints_template(tiny_checkpoint: Path) -> None:
    expected = _chat_template(tiny_checkpoint, [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "What colour?"}])
    assert render(first_turn("What is this?")) + "A cat." + next_turn("What colour?") == expected


# -- answers -------------------------------------------------------------------------------------------------------

def test_ask_returns_text_ids_and_timings(model: Model, image: np.ndarray) -> None:
    answer = model.ask(image, "What is this?", size=SIZE, max_tokens=12)
    assert answer.finish_reason == "length"
    assert len(answer.token_ids) == 12
    assert answer.text == model.llm.detokenize(answer.token_ids)
    t = answer.timings
    assert t.image_tokens == 16 and t.generated_tokens == 12
    assert t.encode_ms > 0 and t.prefill_ms > 0 and t.ttft_ms >= t.prefill_ms and t.decode_tokens_per_s > 0
    assert t.prompt_tokens + t.image_tokens == t.prefill_positions + t.cached_positions


def test_stream_yields_pieces_then_the_answer(model: Model, image: np.ndarray) -> None:
    items = list(model.stream(image, "Describe it.", size=SIZE, max_tokens=8))
    *pieces, answer = items
    assert isinstance(answer, Answer) and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == answer.text


def test_inputs_accepted(model: Model, image: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    Image.fromarray(image).save(path)
    a = model.ask(image, "What?", size=SIZE, max_tokens=5)
    b = model.ask(path, "What?", size=SIZE, max_tokens=5)
    c = model.ask(Image.fromarray(image), "What?", size=SIZE, max_tokens=5)
    assert a.token_ids == b.token_ids == c.token_ids


def test_rows_reach_llama_cpp_unchanged(model: Model, image: np.ndarray) -> None:
    """First-step logits of ask() equal a hand-built prompt: header tokens, encoder rows, question tokens."""
    rows = model.encode(model.preprocess(image, SIZE))
    llm = model.llm
    pieces = first_turn("What is this?")
    llm.rewind(0)
    llm.eval_tokens(llm.tokenize(pieces[0]))  # type: ignore[arg-type]
    llm.eval_embeddings(rows)
    llm.eval_tokens(llm.tokenize(pieces[2]))  # type: ignore[arg-type]
    expected = int(np.argmax(llm.logits()))
    llm.rewind(0)
    answer = model.ask(image, "What is this?", size=SIZE, max_tokens=1)
    assert answer.token_ids == (expected,)


def _prefill_logits(model: Model, conv: object, question: str) -> np.ndarray:
    positions, _, _ = conv._fit(question, 1)  # type: ignore[attr-defined]
    conv._sync(positions)  # type: ignore[attr-defined]
    return model.llm.logits()


def test_follow_up_reuses_the_cache_with_the_same_logits(model: Model, image: np.ndarray) -> None:
    conv = model.conversation(image, size=SIZE)
    first = conv.ask("What is this?", max_tokens=6)
    follow = conv.ask("Say more.", max_tokens=6)
    # Only the new text was prefilled: the image and the first turn came from the cache, nothing re-encoded.
    assert follow.timings.encode_ms == 0.0
    assert follow.timings.cached_positions >= first.timings.prefill_positions + first.timings.cached_positions
    assert follow.timings.prefill_positions <= len(model.llm.tokenize(next_turn("Say more."))) + 1
    # Logits after a cached prefill equal a recompute from an empty cache.
    cached = _prefill_logits(model, conv, "And the colours?")
    model.llm.rewind(0)
    fresh = _prefill_logits(model, conv, "And the colours?")
    np.testing.assert_allclose(cached, fresh, rtol=0, atol=1e-3 * float(np.abs(fresh).max()))
    assert int(np.argmax(cached)) == int(np.argmax(fresh))


def test_switching_conversations_reinjects_rows_without_encoding(model: Model, image: np.ndarray) -> None:
    a = model.conversation(image, size=SIZE)
    a.ask("First?", max_tokens=3)
    other = np.ascontiguousarray(image[::-1])
    model.ask(other, "Other image?", size=SIZE, max_tokens=3)
    again = a.ask("Back to the first?", max_tokens=3)
    assert again.timings.encode_ms == 0.0 and again.timings.image_tokens == 16


def test_drop_last_turn_then_ask_again_reuses_the_cache(model: Model, image: np.ndarray,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    conv = model.conversation(image, size=SIZE)
    first = conv.ask("What is this?", max_tokens=6)
    second = conv.ask("Say more.", max_tokens=6)
    encodes: list[object] = []
    real_encode = model.vision.encode
    monkeypatch.setattr(model.vision, "encode", lambda *a, **k: encodes.append(a) or real_encode(*a, **k))

    assert conv.drop_last_turn() == ("Say more.", second.text)
    assert conv.turns == [("What is this?", first.text)]
    again = conv.ask("Say more.", max_tokens=6)  # temperature 0: the same answer as before
    assert again.token_ids == second.token_ids and again.text == second.text
    assert conv.turns == [("What is this?", first.text), ("Say more.", again.text)]
    # Nothing encoded; the image, the first turn and the question were all still in llama.cpp's cache.
    assert encodes == [] and again.timings.encode_ms == 0.0
    t, before = again.timings, second.timings
    assert t.cached_positions + t.prefill_positions == before.cached_positions + before.prefill_positions
    assert t.prefill_positions <= len(model.llm.tokenize(next_turn("Say more.")))
    assert t.cached_positions > before.cached_positions


def test_prepare_reads_the_picture_before_the_question(model: Model, image: np.ndarray,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    plain = model.conversation(image, size=SIZE).ask("What is this?", max_tokens=6)

    conv = model.conversation(image, size=SIZE)
    rows = conv.prepare()  # what a window does while the user types
    assert rows.encode_ms > 0 and rows.rows.shape[0] == plain.timings.image_tokens
    encodes: list[object] = []
    real_encode = model.vision.encode
    monkeypatch.setattr(model.vision, "encode", lambda *a, **k: encodes.append(a) or real_encode(*a, **k))
    answer = conv.ask("What is this?", max_tokens=6)
    assert answer.token_ids == plain.token_ids  # the same prompt, so the same answer at temperature 0
    assert encodes == [] and answer.timings.encode_ms == 0.0
    # Only the question's own tokens were evaluated after the question came.
    assert answer.timings.prefill_positions <= answer.timings.prompt_tokens - len(conv._head())
    assert answer.timings.cached_positions >= len(conv._head()) + rows.rows.shape[0]


def test_reading_a_tiled_image_stops_between_views(model: Model, image: np.ndarray,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cancel = threading.Event()
    views: list[object] = []
    real_encode = model.vision.encode

    def encode_then_cancel(pixels: np.ndarray) -> np.ndarray:
        views.append(pixels.shape)
        cancel.set()  # Stop pressed while the first view is being encoded
        return real_encode(pixels)

    monkeypatch.setattr(model.vision, "encode", encode_then_cancel)
    conv = model.conversation(image, size=SIZE, tiles=(2, 2))
    with pytest.raises(Cancelled):
        conv.prepare(cancel)
    assert len(views) == 1  # the four tiles were never encoded
    monkeypatch.setattr(model.vision, "encode", real_encode)
    rows = conv.prepare()  # and nothing half-done was kept: reading again works
    assert rows.rows.shape[0] == 5 * (SIZE // 64) ** 2


def test_a_turn_taken_back_can_be_restored_exactly(model: Model, image: np.ndarray) -> None:
    conv = model.conversation(image, size=SIZE)
    first = conv.ask("What is this?", max_tokens=6)
    second = conv.ask("Say more.", max_tokens=6)
    follow = conv.ask("And then?", max_tokens=6)  # what a third question gets after the first two
    conv.drop_last_turn()
    question, answer = conv.drop_last_turn()
    conv.restore_turn(question, answer)  # a regeneration that wrote nothing puts the answer back
    assert conv.turns == [("What is this?", first.text), ("Say more.", second.text)]
    again = conv.ask("And then?", max_tokens=6)
    # The restored turn has its original tokens, so the prompt is the same as before: same answer, all cached
    # up to the new question.
    assert again.token_ids == follow.token_ids
    assert again.timings.prefill_positions <= len(model.llm.tokenize(next_turn("And then?")))
    conv.restore_turn("Typed in by hand?", "Yes.")  # any other turn is tokenized
    assert conv.turns[-1] == ("Typed in by hand?", "Yes.")


def test_drop_every_turn_then_ask_the_first_question_again(model: Model, image: np.ndarray) -> None:
    conv = model.conversation(image, size=SIZE)
    first = conv.ask("What is this?", max_tokens=5)
    conv.ask("And then?", max_tokens=5)
    conv.drop_last_turn()
    assert conv.drop_last_turn() == ("What is this?", first.text)
    assert conv.turns == []
    with pytest.raises(InputError, match="no answer to take back"):
        conv.drop_last_turn()
    again = conv.ask("What is this?", max_tokens=5)
    assert again.token_ids == first.token_ids and again.timings.encode_ms == 0.0
    assert conv.turns == [("What is this?", again.text)]


def test_the_answer_being_written_cannot_be_dropped(model: Model, image: np.ndarray) -> None:
    conv = model.conversation(image, size=SIZE)
    conv.ask("What is this?", max_tokens=3)
    stream = conv.stream("Go on.", max_tokens=20)
    assert isinstance(next(stream), str)
    with pytest.raises(InputError, match="still being written"):
        conv.drop_last_turn()
    stream.close()  # an abandoned answer is not kept
    assert [q for q, _ in conv.turns] == ["What is this?"]


def test_dropping_turns_after_the_context_filled_keeps_later_turns_in_the_prompt(tiny_model_dir: Path,
                                                                                image: np.ndarray) -> None:
    with load_model(tiny_model_dir, n_ctx=512, threads=2) as small:
        conv = small.conversation(image, size=SIZE)
        answers = [conv.ask(f"Question number {i}?", max_tokens=100) for i in range(6)]
        assert sum(a.dropped_turns for a in answers) >= 2
        while len(conv.turns) > 1:
            conv.drop_last_turn()
        follow = conv.ask("Still there?", max_tokens=4)
        last = conv.ask("And now?", max_tokens=4)
        # The prompt of the last question holds the answer before it: it came from the cache.
        assert last.timings.cached_positions >= follow.timings.cached_positions + follow.timings.prefill_positions
        assert [q for q, _ in conv.turns] == ["Question number 0?", "Still there?", "And now?"]


def test_cancel_stops_within_one_token(model: Model, image: np.ndarray) -> None:
    asked = threading.Event()
    done = threading.Event()

    def canceller() -> None:
        asked.wait(10)
        model.cancel()
        done.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    items = []
    for item in model.stream(image, "Go on and on.", size=SIZE, max_tokens=50):
        items.append(item)
        if not asked.is_set():
            asked.set()
            done.wait(10)
    thread.join()
    answer = items[-1]
    assert isinstance(answer, Answer)
    assert answer.finish_reason == "cancelled"
    assert answer.timings.generated_tokens == 1


def test_stops_on_im_end(model: Model, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = model.stop_ids[0]

    class Scripted:
        def __init__(self, options: object) -> None:
            self.calls = 0

        def __call__(self, logits: np.ndarray) -> int:
            self.calls += 1
            return 100 + self.calls if self.calls < 3 else stop

    monkeypatch.setattr(conversation, "Sampler", Scripted)
    answer = model.ask(image, "Short?", size=SIZE, max_tokens=20)
    assert answer.finish_reason == "stop" and answer.token_ids == (101, 102)


def test_sampling_is_seeded(model: Model, image: np.ndarray) -> None:
    a = model.ask(image, "Q?", size=SIZE, max_tokens=8, temperature=0.8, seed=3)
    b = model.ask(image, "Q?", size=SIZE, max_tokens=8, temperature=0.8, seed=3)
    greedy = model.ask(image, "Q?", size=SIZE, max_tokens=8)
    narrow = model.ask(image, "Q?", size=SIZE, max_tokens=8, temperature=0.8, top_p=1e-9, seed=4)
    assert a.token_ids == b.token_ids
    assert narrow.token_ids == greedy.token_ids


# -- the context budget --------------------------------------------------------------------------------------------

def test_old_turns_are_dropped_but_the_image_stays(tiny_model_dir: Path, image: np.ndarray) -> None:
    with load_model(tiny_model_dir, n_ctx=512, threads=2) as small:
        conv = small.conversation(image, size=SIZE)
        answers = [conv.ask(f"Question number {i}?", max_tokens=100) for i in range(6)]
        dropped = [a for a in answers if a.dropped_turns]
        assert dropped, "six 100-token turns cannot fit in 512 positions"
        assert "left out to fit the context" in dropped[0].notes[0]
        assert all(a.timings.image_tokens == 16 for a in answers)
        # The image is still at the start of the prompt: the header and its rows came from the cache.
        assert dropped[0].timings.cached_positions >= 16
        with pytest.raises(ContextFullError, match=r"need .* positions, but the context holds 512"):
            conv.ask("Too long?", max_tokens=500)


# -- tiles ---------------------------------------------------------------------------------------------------------

def test_tile_order_is_global_then_row_major() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :100, 0] = 255  # left half red
    img[:, 100:, 2] = 255  # right half blue
    views = tile_views(img, (1, 2), SIZE)
    assert len(views) == 3 and all(v.shape == (1, 3, SIZE, SIZE) for v in views)
    global_view, left, right = views
    assert global_view[0, 0, 128, 10] == 1.0 and global_view[0, 2, 128, 245] == 1.0
    assert left[0, 0].mean() > 0.9 and left[0, 2].mean() < 0.1
    assert right[0, 2].mean() > 0.9 and right[0, 0].mean() < 0.1


def test_tiles_join_rows(model: Model, image: np.ndarray) -> None:
    rows = model.encode_image(image, size=SIZE, tiles=(2, 2))
    assert rows.rows.shape == (16 * 5, model.llm.n_embd)
    np.testing.assert_array_equal(rows.rows[:16], model.encode(model.preprocess(image, SIZE)))
    answer = model.ask(rows, "Read it.", max_tokens=3)
    assert answer.timings.image_tokens == 80


# -- errors --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("question", ["", "   ", "\n"])
def test_empty_question(model: Model, image: np.ndarray, question: str) -> None:
    with pytest.raises(InputError, match="question is empty"):
        model.ask(image, question, size=SIZE)


def test_bad_size_and_image(model: Model, image: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="multiple of 64"):
        model.ask(image, "Q?", size=300)
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError):
        model.ask(bad, "Q?", size=SIZE)
    with pytest.raises(InputError, match="max_tokens"):
        model.ask(image, "Q?", size=SIZE, max_tokens=0)


def test_unknown_model_name() -> None:
    with pytest.raises(ModelNotFoundError, match="No model called 'nope' is installed"):
        load_model("nope")
    with pytest.raises(ModelFolderError, match="not a model folder"):
        load_model("/no/such/folder")


def test_corrupt_file_is_caught_on_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    gguf = copy / "llm.gguf"
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0x01
    gguf.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="sha256 does not match"):
        load_model(copy)


def test_mismatched_halves_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = write_checkpoint(tmp_path / "ck", CheckpointSpec(llm=LlmSpec(hidden=96, heads=4, kv_heads=2), seed=9))
    other_model = convert_checkpoint(other, tmp_path / "other", quant="f16")
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    shutil.copy(other_model / "llm.gguf", copy / "llm.gguf")
    manifest = json.loads((copy / "model.json").read_text())
    manifest["files"]["llm.gguf"] = file_entry(copy / "llm.gguf")
    (copy / "model.json").write_text(json.dumps(manifest))
    # The GGUF header is checked against model.json before llama.cpp loads it.
    with pytest.raises(ModelFolderError, match=r"llm\.gguf does not match its model\.json: "
                                               r"qwen2\.embedding_length is 96, but 64 was expected"):
        load_model(copy)
    # With model.json describing the new language model, the two halves' widths still disagree.
    manifest["llm"] = json.loads((other_model / "model.json").read_text())["llm"]
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"do not belong together: embedding widths vision\.onnx 64, "
                                               r"llm\.gguf 96"):
        load_model(copy)
