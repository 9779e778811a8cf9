"""The values the runtime hands out and takes in: answer options, image rows, timings and answers.

Below both ``model`` and ``conversation`` (which import them from here), so neither needs the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from glimpse.engine.errors import InputError

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SamplingOptions:
    """``temperature`` 0 means greedy; ``top_p`` keeps the smallest set of tokens whose probability reaches it."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InputError(f"max_tokens must be a positive whole number, not {self.max_tokens!r}.")
        if not self.temperature >= 0.0:
            raise InputError(f"temperature must be 0 or more, not {self.temperature!r}.",
                             "Use 0 for the most likely answer, about 0.2-0.7 for variety.")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], not {self.top_p!r}.")


@dataclass(frozen=True)
class Timings:
    """Where the time went, in milliseconds, and how many positions each part used.

    ``ttft_ms`` runs from the call to the first token (preprocessing, encoding and prefill included).
    ``prefill_positions`` counts what was evaluated for this turn; ``cached_positions`` what the cache already had.
    """

    preprocess_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    ttft_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    decode_tokens_per_s: float = 0.0
    image_tokens: int = 0
    prompt_tokens: int = 0
    prefill_positions: int = 0
    cached_positions: int = 0
    generated_tokens: int = 0


@dataclass(frozen=True)
class Answer:
    """A finished answer. ``finish_reason`` is "stop" (the model ended it), "length" (``max_tokens`` reached) or
    "cancelled". ``dropped_turns`` counts earlier turns left out of this prompt to fit the context."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    timings: Timings
    dropped_turns: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "dropped_turns": self.dropped_turns,
            "notes": list(self.notes),
            "timings": {k: round(v, 3) if isinstance(v, float) else v for k, v in vars(self.timings).items()},
        }


@dataclass(frozen=True)
class ImageRows:
    """An encoded image: rows in the language model's space, and how they were made."""

    rows: F32Array
    size: int
    tiles: tuple[int, int] | None
    preprocess_ms: float
    encode_ms: float


@dataclass(frozen=True)
class Restart:
    """An item of an answer's stream from a model that runs in a process of its own (engine.runner): that process
    stopped, and a new one answers again from the start. The pieces before this one are void; ``notice`` says what
    happened in one sentence."""

    notice: str
