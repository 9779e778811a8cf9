"""The ``qwen_2`` conversation template FastVLM was trained with, image first in the first user turn.

The one place the template is written: :class:`~engine.runtime.conversation.Conversation` builds every prompt it
sends with :func:`pieces`, and the tests render the checkpoint's own ``tokenizer_config.json`` chat template with
jinja2 and compare. A prompt is a list of pieces: text pieces are tokenized on their own (Qwen2 has no BOS), one
``IMAGE`` piece marks where the image rows go, and earlier answers stay as the caller holds them (token ids in the
product, so the cache matches what was generated). Follow-up turns append only new text, so the cached image and
earlier turns are reused as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

TEMPLATE_ID: Final = "qwen_2"
SYSTEM_PROMPT: Final = "You are a helpful assistant."
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
ENDOFTEXT: Final = "<|endoftext|>"
STOP_TOKENS: Final = (IM_END, ENDOFTEXT)


@dataclass(frozen=True)
class ImageSlot:
    """Where the image rows go."""


IMAGE: Final = ImageSlot()
Piece = str | ImageSlot
AnswerT = TypeVar("AnswerT")


def head(system: str = SYSTEM_PROMPT) -> str:
    """The prompt before the image: the system turn and the start of the user's turn."""
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n"


def after_image(question: str) -> str:
    """The first question, after the image rows, and the start of the assistant's turn."""
    return f"\n{question}{IM_END}\n{IM_START}assistant\n"


def first_turn(question: str, system: str = SYSTEM_PROMPT) -> list[Piece]:
    """System turn, then the user turn with the image first and the question after a newline."""
    return [head(system), IMAGE, after_image(question)]


def next_turn(question: str) -> str:
    """Text that follows an answer whose tokens are already in the cache (the stop token was sampled, not fed)."""
    return f"{IM_END}\n{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"


def pieces(questions: Sequence[str], answers: Sequence[AnswerT],
           system: str = SYSTEM_PROMPT) -> list[str | ImageSlot | AnswerT]:
    """The whole prompt for ``questions`` (the last one unanswered) and the ``answers`` to all but the last.

    The image belongs to the first question given: when older turns are left out to fit the context, the caller
    passes only the kept ones and the image moves to the oldest kept question.
    """
    if len(questions) != len(answers) + 1:
        raise ValueError(f"{len(questions)} questions need {len(questions) - 1} answers, not {len(answers)}")
    out: list[str | ImageSlot | AnswerT] = [*first_turn(questions[0], system)]
    for answer, question in zip(answers, questions[1:], strict=True):
        out += [answer, next_turn(question)]
    return out


def render(pieces: Sequence[Piece], image_placeholder: str = "<image>") -> str:
    """The prompt as one string, the image shown as ``image_placeholder`` (for tests and logs)."""
    return "".join(image_placeholder if isinstance(p, ImageSlot) else p for p in pieces)
