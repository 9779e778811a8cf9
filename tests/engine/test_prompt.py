"""The prompt the product sends, position for position, against the checkpoint's own chat template.

The reference is the ``chat_template`` in the checkpoint's ``tokenizer_config.json``, rendered with jinja2 the way
transformers' ``apply_chat_template`` does (``messages``, ``add_generation_prompt=True``), the image written as
LLaVA's ``<image>`` placeholder at the start of the first kept user turn. The product's side is what
``Conversation`` hands to llama.cpp: token ids, and one marker per image row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from glimpse.engine.runtime import prompt
from glimpse.engine.runtime.conversation import Conversation
from glimpse.engine.runtime.llm import image_marker
from glimpse.engine.runtime.model import Model, load_model

SIZE = 256
PLACEHOLDER = "<image>"
# Answers start with a letter, as generated ones do after "assistant\n": Qwen2's pre-tokenizer splits there, so
# tokenizing the whole rendered text and tokenizing the product's pieces one by one must agree.
TURNS = [("What is this?", "A cat on a keyboard."), ("What colour is it?", "Grey, with white paws."),
         ("Is it asleep?", "No, it looks at the camera.")]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Iterator[Model]:
    with load_model(tiny_model_dir, n_ctx=1024, threads=2) as m:
        yield m


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(11).random((90, 160, 3)) * 255).astype(np.uint8)


def render_template(checkpoint: Path, turns: list[tuple[str, str]], question: str) -> str:
    """The checkpoint's chat template for ``turns`` then ``question``, the image before the first question."""
    template = json.loads((checkpoint / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    messages = [{"role": "system", "content": prompt.SYSTEM_PROMPT}]
    for i, (q, a) in enumerate(turns):
        messages += [{"role": "user", "content": f"{PLACEHOLDER}\n{q}" if i == 0 else q},
                     {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question if turns else f"{PLACEHOLDER}\n{question}"})
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders it
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def expected_positions(model: Model, text: str, rows: np.ndarray) -> list[int]:
    before, after = text.split(PLACEHOLDER)
    return (model.llm.tokenize(before) + [image_marker(rows)] * rows.shape[0] + model.llm.tokenize(after))


def conversation_with(model: Model, image: np.ndarray, turns: list[tuple[str, str]],
                      tiles: tuple[int, int] | None = None) -> Conversation:
    conv = model.conversation(image, size=SIZE, tiles=tiles)
    conv.prepare()
    for q, a in turns:
        conv.restore_turn(q, a)
    return conv


def sent(conv: Conversation, question: str, max_tokens: int = 8) -> tuple[list[int], int]:
    """The positions the conversation would evaluate for ``question``, and how many turns it left out."""
    positions, _, dropped = conv._fit(question, max_tokens)
    return positions, dropped


def test_first_turn(model: Model, image: np.ndarray, tiny_checkpoint: Path) -> None:
    conv = conversation_with(model, image, [])
    positions, dropped = sent(conv, "What is this?")
    rows = conv.image_rows
    assert rows is not None and dropped == 0
    assert positions == expected_positions(model, render_template(tiny_checkpoint, [], "What is this?"), rows.rows)


def test_follow_ups(model: Model, image: np.ndarray, tiny_checkpoint: Path) -> None:
    conv = conversation_with(model, image, TURNS)
    positions, dropped = sent(conv, "Where is it?")
    assert conv.image_rows is not None and dropped == 0
    expected = expected_positions(model, render_template(tiny_checkpoint, TURNS, "Where is it?"),
                                  conv.image_rows.rows)
    assert positions == expected


def test_dropped_turns_move_the_image_to_the_oldest_kept_question(model: Model, image: np.ndarray,
                                                                  tiny_checkpoint: Path) -> None:
    conv = conversation_with(model, image, TURNS)
    rows = conv.image_rows
    assert rows is not None
    kept = expected_positions(model, render_template(tiny_checkpoint, TURNS[2:], "Where is it?"), rows.rows)
    with_one_more = expected_positions(model, render_template(tiny_checkpoint, TURNS[1:], "Where is it?"),
                                       rows.rows)
    # Room for the answer such that the last turn fits with the image and the one before it does not.
    room = model.n_ctx - len(kept)
    assert len(with_one_more) + room > model.n_ctx
    positions, dropped = sent(conv, "Where is it?", max_tokens=room)
    assert dropped == 2
    assert positions == kept


def test_tiles_are_one_image_slot(model: Model, image: np.ndarray, tiny_checkpoint: Path) -> None:
    conv = conversation_with(model, image, TURNS[:1], tiles=(2, 2))
    rows = conv.image_rows
    assert rows is not None and rows.rows.shape[0] == 5 * (SIZE // 64) ** 2  # the whole picture and four tiles
    positions, _ = sent(conv, "Read the small print.")
    expected = expected_positions(model, render_template(tiny_checkpoint, TURNS[:1], "Read the small print."),
                                  rows.rows)
    assert positions == expected


def test_the_comparison_catches_a_changed_template(model: Model, image: np.ndarray, tiny_checkpoint: Path) -> None:
    """A prompt that differs by one newline from the template does not pass the comparison above."""
    conv = conversation_with(model, image, [])
    positions, _ = sent(conv, "What is this?")
    assert conv.image_rows is not None
    text = render_template(tiny_checkpoint, [], "What is this?").replace(f"{PLACEHOLDER}\n", PLACEHOLDER)
    assert positions != expected_positions(model, text, conv.image_rows.rows)


def test_pieces_place_answers_between_turns() -> None:
    pieces = prompt.pieces(["q1", "q2"], [[7, 8]], system="S")
    assert pieces == [prompt.head("S"), prompt.IMAGE, prompt.after_image("q1"), [7, 8], prompt.next_turn("q2")]
    assert prompt.render(prompt.pieces(["q"], [])) == prompt.render(prompt.first_turn("q"))
    with pytest.raises(ValueError, match="2 questions need 1 answers"):
        prompt.pieces(["q1", "q2"], [])
