"""The ``qwen_2`` conversation template FastVLM was trained with, image first in the first user turn.

A prompt is a list of pieces: text pieces are tokenized on their own (Qwen2 has no BOS), and one ``IMAGE`` piece
marks where the image rows go. Follow-up turns append only new text, so the cached image and earlier turns are
reused as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

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


def first_turn(question: str, system: str = SYSTEM_PROMPT) -> list[Piece]:
    """System turn, then the user turn with the image first and the question after a newline."""
    return [
        f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n",
        IMAGE,
        f"\n{question}{IM_END}\n{IM_START}assistant\n",
    ]


def next_turn(question: str) -> str:
    """Text that follows an answer whose tokens are already in the cache (the stop token was sampled, not fed)."""
    return f"{IM_END}\n{IM_START}user\n{question}{IM_END}\n{IM_START}assistant\n"


def render(pieces: list[Piece], image_placeholder: str = "<image>") -> str:
    """The prompt as one string, the image shown as ``image_placeholder`` (for tests and logs)."""
    return "".join(image_placeholder if isinstance(p, ImageSlot) else p for p in pieces)
