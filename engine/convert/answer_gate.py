"""The answer-level gate: does a quantized vision encoder keep the answers the language model gives?

An int8 encoder's image rows are never compared only with each other. The converted language model reads the
float32 rows of each held-out view and answers its question greedily (``ANSWER_TOKENS`` tokens); that answer is
then fed again, token by token (teacher forcing), after the quantized rows instead. At every answer position the
gate compares the two next-token distributions:

- KL divergence D(float32 || quantized), in nats: the mean over all positions of all views, and the worst single
  position;
- top-1 agreement: how often the quantized rows' most likely next token is the float32 answer's token;
- and, on the rows themselves, a mean-centred cosine: both row sets minus the float32 rows' mean row, so the
  projector's bias (the same in every row) cannot hide differences the way a plain cosine lets it.

The thresholds (``GateThresholds``) were picked from measurements on the full FastVLM-0.5B geometry; see
docs/benchmarks.md, "The answer-level gate".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from glimpse.engine.convert.vision_int8 import embed
from glimpse.engine.errors import ConversionError
from glimpse.engine.runtime.canary import choose_kernels
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.prompt import IM_END, first_turn

if TYPE_CHECKING:
    from glimpse.engine.runtime.llm import LanguageModel

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ANSWER_TOKENS = 12
# A view at side S is only used when the picture's longer side is at least this fraction of S: a 1024 px view of
# a 400 px thumbnail would measure the resampler's blur, not what users show the model.
NATIVE_FRACTION = 0.75
PHOTO_QUESTION = "Describe this picture in one sentence."
TEXT_QUESTION = "What does the text in this picture say?"


def question_for(image: Path) -> str:
    """Screenshots and documents are asked to be read, photographs to be described (the two main uses)."""
    return TEXT_QUESTION if image.name.split("_")[0] in ("screen", "doc") else PHOTO_QUESTION


@dataclass(frozen=True)
class GateView:
    """One held-out picture at one input side, with its question."""

    image: Path
    size: int
    question: str

    @property
    def key(self) -> str:
        return f"{self.image.name}@{self.size}"


def native_side(image: Path) -> int:
    """The longer side of ``image`` in pixels, read from its header."""

    try:
        with Image.open(image) as img:
            return max(img.size)
    except (OSError, ValueError) as e:
        raise ConversionError(f"The held-out image {image.name} cannot be read ({e}).",
                              "Reinstall Glimpse, or use --vision-precision fp32.") from e


def gate_views(images: Sequence[Path], sizes: Sequence[int]) -> list[GateView]:
    """Every held-out image at every side in ``sizes`` its own resolution supports (see ``NATIVE_FRACTION``)."""
    sides = {p: native_side(p) for p in images}
    return [GateView(p, s, question_for(p)) for s in sizes for p in images if sides[p] >= NATIVE_FRACTION * s]


@dataclass(frozen=True)
class GateThresholds:
    """When a quantized encoder's answers count as unchanged. See docs/benchmarks.md for how each was chosen."""

    max_mean_kl: float = 0.02
    max_worst_kl: float = 0.5
    min_top1: float = 0.95
    min_centred_cosine: float = 0.99

    def to_json(self) -> dict[str, float]:
        return {"max_mean_kl": self.max_mean_kl, "max_worst_kl": self.max_worst_kl, "min_top1": self.min_top1,
                "min_centred_cosine": self.min_centred_cosine}


@dataclass
class Reference:
    """The float32 side of one view: its rows, its prompt around them, its greedy answer and the log-probabilities
    at each answer position."""

    rows: F32
    tail: list[int]
    answer: list[int]
    logprobs: F64  # (len(answer), vocab)


@dataclass(frozen=True)
class GateFigures:
    """How quantized rows compare with float32 rows, at the answer and at the rows."""

    passed: bool
    mean_kl: float
    worst_kl: float
    top1: float
    centred_cosine: float  # the lowest over the views
    views: int
    positions: int
    sizes: tuple[int, ...]
    thresholds: GateThresholds
    failed: tuple[str, ...] = ()  # which figures missed their threshold, as sentences
    per_view: dict[str, dict[str, float]] = field(default_factory=dict)
    # False when the rows already failed (``AnswerGate.rows(..., rows_first=True)``): the language model was not
    # asked, the KL and top-1 figures are NaN, and ``views`` counts only the views encoded before the failure.
    answers_compared: bool = True

    def summary(self) -> str:
        if not self.answers_compared:
            return (f"centred cosine {self.centred_cosine:.4f} on the first {self.views} view(s) "
                    f"({', '.join(self.per_view)}); answers not compared")
        return (f"mean KL {self.mean_kl:.4f}, worst KL {self.worst_kl:.3f}, top-1 {100 * self.top1:.1f} %, "
                f"centred cosine {self.centred_cosine:.4f} over {self.views} views")

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:  # JSON has no NaN: a figure not measured is null
            return round(x, 6) if math.isfinite(x) else None

        return {
            "passed": self.passed,
            "answers_compared": self.answers_compared,
            "mean_kl": num(self.mean_kl),
            "worst_kl": num(self.worst_kl),
            "top1": num(self.top1),
            "centred_cosine": num(self.centred_cosine),
            "views": self.views,
            "answer_positions": self.positions,
            "sizes": list(self.sizes),
            "thresholds": self.thresholds.to_json(),
            "failed": list(self.failed),
            "per_view": {k: {m: num(v) for m, v in d.items()} for k, d in self.per_view.items()},
        }


def log_softmax(logits: npt.NDArray[Any]) -> F64:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return np.asarray(x - np.log(np.exp(x).sum(axis=-1, keepdims=True)), dtype=np.float64)


def kl_divergence(p_log: F64, q_log: F64) -> F64:
    """D(p || q) per row, in nats, from log-probabilities (rows are positions)."""
    return np.asarray((np.exp(p_log) * (p_log - q_log)).sum(axis=-1), dtype=np.float64)


def centred_cosine(reference: F32, actual: F32) -> float:
    """Cosine of the two row sets flattened, after subtracting the reference's mean row from both; float64.

    A bias shared by every row (the projector's) cancels, so the figure reflects how the rows differ from each
    other, which is what the language model reads. Non-finite or shape-mismatched input gives -1.
    """
    a = np.asarray(reference, dtype=np.float64).reshape(-1, reference.shape[-1])
    b = np.asarray(actual, dtype=np.float64).reshape(-1, actual.shape[-1])
    if a.shape != b.shape:
        return -1.0
    mean = a.mean(axis=0, keepdims=True)
    a, b = (a - mean).ravel(), (b - mean).ravel()
    den = math.sqrt(float(a @ a) * float(b @ b))
    value = float(a @ b) / den if den > 0 else (1.0 if not (a.any() or b.any()) else -1.0)
    return value if math.isfinite(value) else -1.0


def _head(llm: LanguageModel) -> list[int]:
    return llm.tokenize(str(first_turn("")[0]))


def _tail(llm: LanguageModel, question: str) -> list[int]:
    return llm.tokenize(str(first_turn(question)[2]))


def _prefill(llm: LanguageModel, head: list[int], rows: F32, tail: list[int]) -> None:
    """The prompt of one view, reusing the system prompt already in the cache."""
    if llm.n_past >= len(head) and llm.history[:len(head)] == head:
        llm.rewind(len(head))
    else:
        llm.rewind(0)
        llm.eval_tokens(head)
    llm.eval_embeddings(np.ascontiguousarray(rows, dtype=np.float32))
    llm.eval_tokens(tail)


def reference_answers(llm: LanguageModel, rows: Mapping[str, F32], views: Sequence[GateView],
                      tick: Any = None) -> dict[str, Reference]:
    """Greedy float32 answers (up to ``ANSWER_TOKENS``, stopping at the end of turn) and their distributions."""
    head = _head(llm)
    stops = set(llm.tokenize(IM_END)) | set(llm.tokenize("<|endoftext|>"))
    out: dict[str, Reference] = {}
    for view in views:
        if tick is not None:
            tick()
        tail = _tail(llm, view.question)
        _prefill(llm, head, rows[view.key], tail)
        answer: list[int] = []
        logprobs: list[F64] = []
        for _ in range(ANSWER_TOKENS):
            lp = log_softmax(llm.logits())
            token = int(lp.argmax())
            answer.append(token)
            logprobs.append(lp)
            if token in stops:
                break
            llm.eval_tokens([token])
        out[view.key] = Reference(rows[view.key], tail, answer, np.stack(logprobs))
    return out


def compare(llm: LanguageModel, references: Mapping[str, Reference], rows: Mapping[str, F32],
            views: Sequence[GateView], thresholds: GateThresholds, tick: Any = None) -> GateFigures:
    """Teacher-force each float32 answer after the quantized ``rows`` and judge the differences."""
    head = _head(llm)
    kls: list[float] = []
    agree = 0
    per_view: dict[str, dict[str, float]] = {}
    cosine_min = 1.0
    for view in views:
        if tick is not None:
            tick()
        ref = references[view.key]
        actual = rows[view.key]
        cos = centred_cosine(ref.rows, actual)
        cosine_min = min(cosine_min, cos)
        if not np.isfinite(actual).all():
            per_view[view.key] = {"mean_kl": math.inf, "worst_kl": math.inf, "top1": 0.0, "centred_cosine": -1.0}
            kls.extend([math.inf] * len(ref.answer))
            continue
        _prefill(llm, head, actual, ref.tail)
        first = llm.logits()
        # The rest of the answer in one batch: the logits after each token predict the next one.
        rest = llm.eval_tokens_with_logits(ref.answer[:-1])
        q_log = log_softmax(np.concatenate([first[None, :], rest]))
        view_kl = kl_divergence(ref.logprobs, q_log)
        hits = int((q_log.argmax(axis=-1) == np.asarray(ref.answer)).sum())
        agree += hits
        kls.extend(float(k) for k in view_kl)
        per_view[view.key] = {"mean_kl": float(view_kl.mean()), "worst_kl": float(view_kl.max()),
                              "top1": hits / len(ref.answer), "centred_cosine": cos}
    positions = len(kls)
    mean_kl = float(np.mean(kls)) if kls else math.inf
    worst_kl = float(np.max(kls)) if kls else math.inf
    top1 = agree / positions if positions else 0.0
    failed = []
    if not mean_kl <= thresholds.max_mean_kl:
        failed.append(f"mean KL {mean_kl:.4f} > {thresholds.max_mean_kl}")
    if not worst_kl <= thresholds.max_worst_kl:
        failed.append(f"worst KL {worst_kl:.3f} > {thresholds.max_worst_kl}")
    if not top1 >= thresholds.min_top1:
        failed.append(f"top-1 agreement {100 * top1:.1f} % < {100 * thresholds.min_top1:.0f} %")
    if not cosine_min >= thresholds.min_centred_cosine:
        failed.append(f"centred cosine {cosine_min:.4f} < {thresholds.min_centred_cosine}")
    return GateFigures(passed=not failed, mean_kl=mean_kl, worst_kl=worst_kl, top1=top1, centred_cosine=cosine_min,
                       views=len(views), positions=positions, sizes=tuple(sorted({v.size for v in views})),
                       thresholds=thresholds, failed=tuple(failed), per_view=per_view)


class AnswerGate:
    """The float32 side of the gate, computed once: rows on every view, and (on first need) the language model's
    answers to them; then ``judge`` any number of quantized graphs against it. Owns a ``LanguageModel`` once the
    answers exist; close it (or use ``with``).

    The answers are the expensive half (a language model load and a prefill per view). ``rows(...,
    rows_first=True)`` encodes the largest views first and stops at the first whose centred cosine already misses
    its threshold, so a graph that fails on its rows never costs the answers at all.
    """

    def __init__(self, float_graph: Path, llm_path: Path, views: Sequence[GateView],
                 thresholds: GateThresholds | None = None, *, threads: int | None = None,
                 tick: Any = None) -> None:

        if not views:
            raise ConversionError("No held-out picture is large enough for the int8 gate.",
                                  "Reinstall Glimpse, or use --vision-precision fp32.")
        self.views = list(views)
        self.thresholds = thresholds or GateThresholds()
        self.threads = threads
        self.llm_path = llm_path
        self.float_rows = embed(float_graph, self._plain(self.views), threads=threads, tick=tick)
        self._llm: LanguageModel | None = None
        self._references: dict[str, Reference] | None = None

    @staticmethod
    def _plain(views: Sequence[GateView]) -> list[tuple[str, Path, int]]:
        return [(v.key, v.image, v.size) for v in views]

    @property
    def has_answers(self) -> bool:
        return self._references is not None

    def answers(self, tick: Any = None) -> dict[str, Reference]:
        """The float32 answers (computed on the first call: loads the language model)."""
        if self._references is None:
            longest = max(r.shape[0] for r in self.float_rows.values())
            # The kernels the canary proves for this file's weight type: an AMX build GCC 12 broke would otherwise
            # end the conversion by a signal.
            kernels = choose_kernels(self.llm_path, threads=self.threads)
            llm = LanguageModel(self.llm_path, n_ctx=longest + 256, n_threads=self.threads,
                                extra_bufts=kernels.extra_bufts, cpu_variant=kernels.variant)
            try:
                self._references = reference_answers(llm, self.float_rows, self.views, tick=tick)
            except BaseException:
                llm.close()
                raise
            self._llm = llm
        return self._references

    @property
    def references(self) -> dict[str, Reference]:
        return self.answers()

    @property
    def llm(self) -> LanguageModel:
        self.answers()
        assert self._llm is not None
        return self._llm

    def rows(self, graph: Path, tick: Any = None, *, rows_first: bool = False) -> dict[str, F32] | GateFigures:
        """The quantized ``graph``'s rows on every view; with ``rows_first``, largest views first, and the failing
        figures instead as soon as one view's centred cosine misses the threshold."""
        if not rows_first:
            return embed(graph, self._plain(self.views), threads=self.threads, tick=tick)
        order = sorted(self.views, key=lambda v: -v.size)
        cosines: dict[str, float] = {}

        def misses(key: str, actual: F32) -> bool:
            cosines[key] = centred_cosine(self.float_rows[key], actual)
            return not cosines[key] >= self.thresholds.min_centred_cosine

        out = embed(graph, self._plain(order), threads=self.threads, tick=tick, until=misses)
        key, cos = next(reversed(cosines.items()))
        if not cos >= self.thresholds.min_centred_cosine:
            per_view = {k: {"mean_kl": math.nan, "worst_kl": math.nan, "top1": math.nan, "centred_cosine": c}
                        for k, c in cosines.items()}
            return GateFigures(
                passed=False, mean_kl=math.nan, worst_kl=math.nan, top1=math.nan, centred_cosine=cos,
                views=len(per_view), positions=0, sizes=tuple(sorted({v.size for v in order})),
                thresholds=self.thresholds, answers_compared=False, per_view=per_view,
                failed=(f"centred cosine {cos:.4f} < {self.thresholds.min_centred_cosine} ({key})",))
        return out

    def compare(self, rows: Mapping[str, F32], tick: Any = None) -> GateFigures:
        return compare(self.llm, self.references, rows, self.views, self.thresholds, tick=tick)

    def judge(self, graph: Path, tick: Any = None, *, rows_first: bool = False) -> GateFigures:
        """Run the quantized ``graph`` on every view and compare its answers with float32's."""
        rows = self.rows(graph, tick, rows_first=rows_first)
        if isinstance(rows, GateFigures):
            return rows
        return self.compare(rows, tick=tick)

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def __enter__(self) -> AnswerGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
