"""A conversation about one image: turns, KV-cache bookkeeping and the context budget.

The prompt of every turn is rebuilt as a list of positions (token ids, and a negative marker id for each image
row) and compared with what llama.cpp's cache already holds. Only the part after the longest common prefix is
evaluated: a follow-up prefills just its new text; a new image after the same system header reuses the header; a
conversation resumed after another one used the cache re-injects its stored rows without re-encoding.

When a turn would not fit the context (prompt plus ``max_tokens``), the oldest turns are dropped and the image
stays, attached to the oldest kept question; the answer's ``dropped_turns`` says how many went.

:meth:`Conversation.drop_last_turn` takes back the last answer (to regenerate it): asking its question again
rebuilds a prompt that the cache already holds, so nothing is encoded and only the last position is evaluated
before the new answer starts.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from glimpse.engine.errors import Cancelled, ContextFullError, InputError
from glimpse.engine.runtime import prompt
from glimpse.engine.runtime.llm import LanguageModel, image_marker
from glimpse.engine.runtime.sampling import Sampler
from glimpse.engine.runtime.types import Answer, ImageRows, SamplingOptions, Timings


class ImageModel(Protocol):
    """What a conversation uses of its model. ``engine.runtime.model.Model`` is the one there is; it imports this
    module to make conversations, so this module names what it needs instead of importing that one back."""

    @property
    def llm(self) -> LanguageModel: ...

    @property
    def stop_ids(self) -> tuple[int, int]: ...

    @property
    def n_ctx(self) -> int: ...

    def encode_image(self, image: Image.Image, *, size: int | None = None, tiles: tuple[int, int] | None = None,
                     cancel: threading.Event | None = None) -> ImageRows: ...

    def begin_generation(self) -> threading.Event: ...


@dataclass
class _Turn:
    question: str
    answer_ids: list[int]


class Conversation:
    """Questions and answers about one image. Use :meth:`Model.conversation` to start one."""

    def __init__(self, model: ImageModel, image: Image.Image | ImageRows, *, size: int, tiles: tuple[int, int] | None,
                 system: str = prompt.SYSTEM_PROMPT) -> None:
        self._model = model
        self._image = image if isinstance(image, Image.Image) else None
        self._rows: ImageRows | None = image if isinstance(image, ImageRows) else None
        self._size = size
        self._tiles = tiles
        self._system = system
        self._turns: list[_Turn] = []
        self._writing: _Turn | None = None  # the turn whose answer is being generated
        self._dropped: tuple[_Turn, str] | None = None  # the last turn drop_last_turn took back, and its answer
        self._first_kept = 0
        self._tokens: dict[str, list[int]] = {}

    @property
    def turns(self) -> list[tuple[str, str]]:
        """(question, answer) pairs so far, including any dropped from the prompt."""
        llm = self._model.llm
        return [(t.question, llm.detokenize(t.answer_ids)) for t in self._turns]

    @property
    def image_rows(self) -> ImageRows | None:
        return self._rows

    def drop_last_turn(self) -> tuple[str, str]:
        """Take back the last question and its answer; returns them as (question, answer).

        Ask the question again to regenerate the answer: the earlier turns stay, and the image and everything
        before the question come from llama.cpp's cache. Raises :class:`InputError` when there is no answer yet
        or the last one is still being generated.
        """
        if not self._turns:
            raise InputError("There is no answer to take back in this conversation.", "Ask a question first.")
        if self._turns[-1] is self._writing:
            raise InputError("The last answer is still being written.", "Stop it or let it finish first.")
        turn = self._turns.pop()
        # Turns left out to fit the context stay left out, but a kept turn must never be skipped.
        self._first_kept = min(self._first_kept, len(self._turns))
        answer = self._model.llm.detokenize(turn.answer_ids)
        self._dropped = (turn, answer)
        return turn.question, answer

    def restore_turn(self, question: str, answer: str) -> None:
        """Put a finished turn back at the end, e.g. the one :meth:`drop_last_turn` took back when its regeneration
        was stopped before a word or failed. That turn comes back token for token (so llama.cpp's cache still
        matches it); any other answer is tokenized. Raises :class:`InputError` while an answer is being written."""
        if self._writing is not None:
            raise InputError("An answer is still being written.", "Stop it or let it finish first.")
        dropped, self._dropped = self._dropped, None
        if dropped is not None and dropped[0].question == question and dropped[1] == answer:
            self._turns.append(dropped[0])
        else:
            self._turns.append(_Turn(question, self._model.llm.tokenize(answer, special=False)))

    def prepare(self, cancel: threading.Event | None = None) -> ImageRows:
        """Encode the image now (if it is not yet) and put the system prompt and the image rows in llama.cpp's
        cache, so the first question evaluates only its own words. A window calls this as soon as a picture is
        chosen, while the user is still typing; without it the first question does the same work itself.
        ``cancel`` is checked between the views of a tiled image and before the cache is filled."""
        if self._writing is not None:
            raise InputError("An answer is still being written.", "Stop it or let it finish first.")
        rows = self._ensure_rows(cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled("Reading the image")
        self._sync(self._head() + [image_marker(rows.rows)] * rows.rows.shape[0])
        return rows

    def _ensure_rows(self, cancel: threading.Event | None = None) -> ImageRows:
        if self._rows is None:
            assert self._image is not None
            self._rows = self._model.encode_image(self._image, size=self._size, tiles=self._tiles, cancel=cancel)
        return self._rows

    # -- prompt ----------------------------------------------------------------------------------------------------

    def _tok(self, text: str) -> list[int]:
        ids = self._tokens.get(text)
        if ids is None:
            ids = self._tokens[text] = self._model.llm.tokenize(text, special=True)
        return ids

    def _head(self) -> list[int]:
        """The prompt before the image: the system prompt and the start of the user's turn."""
        return self._tok(prompt.head(self._system))

    def _positions(self, question: str, first: int) -> tuple[list[int], int]:
        """The prompt for ``question`` with turns from ``first`` on: (position ids, text token count)."""
        assert self._rows is not None
        n_rows = self._rows.rows.shape[0]
        markers = [image_marker(self._rows.rows)] * n_rows
        kept = self._turns[first:]
        out: list[int] = []
        for piece in prompt.pieces([t.question for t in kept] + [question], [t.answer_ids for t in kept],
                                   self._system):
            if isinstance(piece, prompt.ImageSlot):
                out += markers
            elif isinstance(piece, str):
                out += self._tok(piece)
            else:
                out += piece
        return out, len(out) - n_rows

    # -- asking ----------------------------------------------------------------------------------------------------

    def ask(self, question: str, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
            seed: int | None = None, cancel: threading.Event | None = None) -> Answer:
        """Ask and wait for the whole answer."""
        for item in self.stream(question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                cancel=cancel):
            if isinstance(item, Answer):
                return item
        raise AssertionError("stream ended without an Answer")  # pragma: no cover

    def stream(self, question: str, *, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, cancel: threading.Event | None = None) -> Iterator[str | Answer]:
        """Yield text pieces as they are generated, then the :class:`Answer`.

        Cancel with ``cancel.set()`` or :meth:`Model.cancel` from any thread: generation stops before the next
        token and the answer so far is returned with ``finish_reason`` "cancelled".
        """
        question = question.strip() if isinstance(question, str) else ""
        if not question:
            raise InputError("The question is empty.", "Type a question about the image.")
        options = SamplingOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
        stop = self._model.begin_generation()
        return self._generate(question, options, stop, cancel)

    def _generate(self, question: str, options: SamplingOptions, stop: threading.Event,
                  cancel: threading.Event | None) -> Iterator[str | Answer]:
        model, llm = self._model, self._model.llm
        t0 = time.perf_counter()
        preprocess_ms = encode_ms = 0.0

        def cancelled() -> bool:
            return stop.is_set() or (cancel is not None and cancel.is_set())

        if self._rows is None:
            rows = self._ensure_rows()
            preprocess_ms, encode_ms = rows.preprocess_ms, rows.encode_ms
        assert self._rows is not None
        n_rows = self._rows.rows.shape[0]

        positions, text_tokens, dropped = self._fit(question, options.max_tokens)
        t_prefill = time.perf_counter()
        if cancelled():
            raise Cancelled("The question")
        cached = self._sync(positions)
        t_first = time.perf_counter()
        prefill_ms = (t_first - t_prefill) * 1e3

        sampler = Sampler(options)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        ids: list[int] = []
        pieces: list[str] = []
        finish = "length"
        ttft_ms = 0.0
        t_decode = time.perf_counter()
        turn = _Turn(question, ids)
        self._turns.append(turn)
        self._writing = turn
        try:
            logits = llm.logits()
            for _ in range(options.max_tokens):
                if cancelled():
                    finish = "cancelled"
                    break
                token = sampler(logits)
                if not ids:
                    ttft_ms = (time.perf_counter() - t0) * 1e3
                    t_decode = time.perf_counter()
                if token in model.stop_ids:
                    finish = "stop"
                    break
                ids.append(token)
                piece = decoder.decode(llm.token_bytes(token))
                llm.eval_tokens([token])
                if piece:
                    pieces.append(piece)
                    yield piece
                logits = llm.logits()
            tail = decoder.decode(b"", final=True)
            if tail:
                pieces.append(tail)
                yield tail
        except BaseException:
            # The turn is incomplete in the cache; the next prompt's prefix match repairs the cache from here.
            self._turns.pop()
            raise
        finally:
            self._writing = None
        t_end = time.perf_counter()
        decode_s = t_end - t_decode
        timings = Timings(
            preprocess_ms=preprocess_ms,
            encode_ms=encode_ms,
            prefill_ms=prefill_ms,
            ttft_ms=ttft_ms or (t_end - t0) * 1e3,
            decode_ms=decode_s * 1e3,
            total_ms=(t_end - t0) * 1e3,
            decode_tokens_per_s=(len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else 0.0,
            image_tokens=n_rows,
            prompt_tokens=text_tokens,
            prefill_positions=len(positions) - cached,
            cached_positions=cached,
            generated_tokens=len(ids),
        )
        notes = (f"{dropped} earlier turn(s) were left out to fit the context window.",) if dropped else ()
        yield Answer("".join(pieces), tuple(ids), finish, timings, dropped, notes)

    def _fit(self, question: str, max_tokens: int) -> tuple[list[int], int, int]:
        """The prompt that fits ``n_ctx`` with room for ``max_tokens``, dropping the oldest turns if needed."""
        n_ctx = self._model.n_ctx
        first = self._first_kept
        while True:
            positions, text_tokens = self._positions(question, first)
            if len(positions) + max_tokens <= n_ctx:
                break
            if first >= len(self._turns):
                assert self._rows is not None
                raise ContextFullError(
                    f"The image ({self._rows.rows.shape[0]} positions) and the question ({text_tokens} tokens) with "
                    f"room for {max_tokens} answer tokens need {len(positions) + max_tokens} positions, but the "
                    f"context holds {n_ctx}.",
                    "Use a smaller image size, a shorter question or fewer max tokens, or load the model with a "
                    "larger n_ctx.",
                    gui_hint="Choose a smaller image size or a shorter answer length, or ask a shorter question.")
            first += 1
        dropped = first - self._first_kept
        self._first_kept = first
        return positions, text_tokens, dropped

    def _sync(self, positions: list[int]) -> int:
        """Make the cache hold exactly ``positions`` with live logits; returns how many were already cached."""
        llm = self._model.llm
        history = llm.history
        common = 0
        for a, b in zip(history, positions, strict=False):
            if a != b:
                break
            common += 1
        # The logits of the last position are needed: re-evaluate at least one position.
        common = min(common, len(positions) - 1)
        llm.rewind(common)
        assert self._rows is not None
        rows = self._rows.rows
        i = common
        while i < len(positions):
            j = i
            if positions[i] < 0:
                while j < len(positions) and positions[j] < 0:
                    j += 1
                start = positions.index(positions[i])
                llm.eval_embeddings(rows[i - start:j - start], marker=positions[i])
            else:
                while j < len(positions) and positions[j] >= 0:
                    j += 1
                llm.eval_tokens(positions[i:j])
            i = j
        return common
