"""The public engine API: ``load_model`` -> ``Model`` -> ``ask`` / ``stream`` / ``conversation``.

A ``Model`` owns one vision encoder (onnxruntime) and one language model (llama.cpp) with a single KV cache.
Every question is a :class:`~engine.conversation.Conversation` about one image: the image is encoded once, its rows
go into llama.cpp as embeddings, and a follow-up only prefills its own new text. Not thread-safe: one thread asks,
any thread may call :meth:`Model.cancel`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from engine.errors import REDO_MODEL_GUI, Cancelled, InputError, ModelFolderError
from engine.llm import LanguageModel
from engine.model_folder import LLM_FILE, VISION_FILE, ModelManifest, verify
from engine.preprocess import ImageInput, check_size, load_image, preprocess, tile_views
from engine.prompt import ENDOFTEXT, IM_END
from engine.sampling import SamplingOptions
from engine.tuning import DEFAULTS, RuntimeSettings, StatusFn, settings_for, tuning_enabled
from engine.vision import VisionEncoder

if TYPE_CHECKING:
    from engine.conversation import Conversation

F32Array = npt.NDArray[np.float32]
log = logging.getLogger("glimpse")
_VERIFIED_STAMP = ".glimpse-verified"


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


class Model:
    """A loaded FastVLM model folder. Use :func:`load_model` to make one; close it (or use ``with``) to free memory."""

    def __init__(self, folder: Path, manifest: ModelManifest, *, settings: RuntimeSettings, n_ctx: int) -> None:
        self.folder = folder
        self.manifest = manifest
        self.settings = settings = settings.resolved()
        self.tuning_report: dict[str, Any] | None = None  # what the measurement behind ``settings`` timed
        self.threads = settings.threads_batch
        self.vision = VisionEncoder(folder / VISION_FILE, threads=settings.vision_threads,
                                    level=settings.vision_level)
        try:
            self.llm = LanguageModel(folder / LLM_FILE, n_ctx=n_ctx, n_threads=settings.threads,
                                     n_threads_batch=settings.threads_batch, n_batch=settings.n_batch,
                                     n_ubatch=settings.n_ubatch, flash_attn=settings.flash_attn,
                                     kv_type=settings.kv_type)
        except BaseException:
            self.vision.close()
            raise
        widths = {"vision.onnx": self.vision.hidden, "llm.gguf": self.llm.n_embd, "model.json": manifest.llm_hidden}
        if len({w for w in widths.values() if w is not None}) != 1:
            self.close()
            raise ModelFolderError(
                f"The files in {folder} do not belong together: embedding widths "
                + ", ".join(f"{k} {v}" for k, v in widths.items()) + ".",
                "Convert the model again so both halves come from one checkpoint.",
                gui_hint=f"{REDO_MODEL_GUI} Both halves must come from one checkpoint.")
        self.stop_ids = self._special_id(IM_END), self._special_id(ENDOFTEXT)
        self._cancel = threading.Event()
        self._warm_up()

    def _warm_up(self) -> None:
        """One throw-away decode of a row and a token: llama.cpp sizes its compute buffers on the first decode of
        each kind (hundreds of ms), which would otherwise land on the user's first question."""
        self.llm.eval_embeddings(np.zeros((1, self.llm.n_embd), np.float32), marker=-1)
        self.llm.eval_tokens([self.stop_ids[0]])
        self.llm.rewind(0)

    def _special_id(self, text: str) -> int:
        ids = self.llm.tokenize(text, special=True)
        if len(ids) != 1:
            self.close()
            raise ModelFolderError(f"{self.folder / LLM_FILE} has no single token for {text}.",
                                   "This is not a FastVLM (Qwen2) language model; convert the model again.",
                                   gui_hint=f"This is not a FastVLM (Qwen2) language model. {REDO_MODEL_GUI}")
        return ids[0]

    # -- lifetime --------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def default_size(self) -> int:
        return self.manifest.image_size

    @property
    def n_ctx(self) -> int:
        return self.llm.n_ctx

    def close(self) -> None:
        """Free onnxruntime's session and llama.cpp's model and context. Safe to call twice."""
        self.vision.close()
        if hasattr(self, "llm"):
            self.llm.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- images ----------------------------------------------------------------------------------------------------

    def preprocess(self, image: ImageInput, size: int = 1024) -> F32Array:
        """float32 [1, 3, size, size] in [0, 1]: padded to a black square, Pillow bicubic, /255."""
        return preprocess(image, size)

    def encode(self, pixels: F32Array) -> F32Array:
        """float32 [tokens, hidden] image rows, already in the language model's space."""
        return self.vision.encode(pixels)

    def encode_image(self, image: ImageInput, *, size: int | None = None, tiles: tuple[int, int] | None = None,
                     cancel: threading.Event | None = None) -> ImageRows:
        """Preprocess and encode; with ``tiles`` the global view then the tiles, each at ``size``. ``cancel``
        is checked between views (raising :class:`Cancelled`): a view itself runs to its end."""
        size = check_size(size or self.default_size)
        t0 = time.perf_counter()
        views = [self.preprocess(image, size)] if tiles is None else tile_views(image, tiles, size)
        t1 = time.perf_counter()
        parts = []
        for view in views:
            if cancel is not None and cancel.is_set():
                raise Cancelled("Reading the image")
            parts.append(self.encode(view))
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        t2 = time.perf_counter()
        return ImageRows(np.ascontiguousarray(rows), size, tiles, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    # -- questions -------------------------------------------------------------------------------------------------

    def conversation(self, image: ImageInput | ImageRows, *, size: int | None = None,
                     tiles: tuple[int, int] | None = None) -> Conversation:
        """A conversation about one image. The image is encoded on the first question (or now, if given rows)."""
        from engine.conversation import Conversation

        if not isinstance(image, ImageRows):
            check_size(size or self.default_size)
            image = load_image(image)
        return Conversation(self, image, size=size or self.default_size, tiles=tiles)

    def ask(self, image: ImageInput | ImageRows, question: str, *, size: int | None = None,
            tiles: tuple[int, int] | None = None, max_tokens: int = 256, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = None) -> Answer:
        """Answer one question about one image (blocking)."""
        return self.conversation(image, size=size, tiles=tiles).ask(
            question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def stream(self, image: ImageInput | ImageRows, question: str, *, size: int | None = None,
               tiles: tuple[int, int] | None = None, max_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None) -> Iterator[str | Answer]:
        """Yield the answer's text pieces as they are generated, then the final :class:`Answer`."""
        return self.conversation(image, size=size, tiles=tiles).stream(
            question, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)

    def cancel(self) -> None:
        """Stop the generation in progress after the current token (any thread may call this)."""
        self._cancel.set()

    def _begin_generation(self) -> threading.Event:
        self._cancel.clear()
        return self._cancel


def _options(max_tokens: int, temperature: float, top_p: float, seed: int | None) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _verify_once(folder: Path) -> ModelManifest:
    """Full sha256 verification the first time a folder is loaded (and whenever a file changed since); later loads
    check sizes only. The stamp records each file's size and modification time."""
    manifest = verify(folder, check_hashes=False)
    stamp = {n: [(folder / n).stat().st_size, (folder / n).stat().st_mtime_ns] for n in manifest.files}
    stamp_path = folder / _VERIFIED_STAMP
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
            return manifest
    except (OSError, ValueError):
        pass
    manifest = verify(folder, check_hashes=True)
    with contextlib.suppress(OSError):  # a read-only folder is verified on every load instead
        stamp_path.write_text(json.dumps(stamp), encoding="utf-8")
    return manifest


def resolve_model(path_or_name: str | Path) -> Path:
    """A model folder path, or the folder of an installed model of that name (ModelNotFoundError otherwise)."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    text = str(path_or_name)
    if path.exists() or "/" in text or "\\" in text:
        raise ModelFolderError(f"{path} is not a model folder.",
                               "Give a folder made by `glimpse convert`, or the name of an installed model.",
                               gui_hint="Choose an installed model, or download or import one in the model manager.")
    from engine.store import Store

    return Store.default().path(text)


def load_model(path_or_name: str | Path, *, threads: int | None = None, n_ctx: int = 4096,
               n_batch: int | None = None, flash_attn: bool | None = None, tune: bool = True, retune: bool = False,
               status: StatusFn | None = None) -> Model:
    """Load a model folder (or an installed model by name, e.g. "fastvlm-0.5b").

    ``n_ctx`` is the context window in positions (a 1024 px image takes 256). The folder is checked first (sizes
    always, sha256 on first load), so a damaged file is reported as a sentence instead of crashing a runtime.

    The runtimes' CPU-dependent settings come from a short measurement made the first time this model runs on this
    CPU and cached (engine/tuning.py; ``status(text, done, total)`` hears about each step); ``retune`` measures
    again, ``tune=False`` (or GLIMPSE_TUNE=0) uses the built-in defaults. ``threads``, ``n_batch`` and
    ``flash_attn``, when given, override what was measured.
    """
    if n_ctx < 512:
        raise InputError(f"n_ctx {n_ctx} is too small.", "Use at least 512 (4096 is the default).")
    if threads is not None and threads < 1:
        raise InputError(f"threads {threads} is not a thread count.", "Use 1 or more, or leave it out.")
    folder = resolve_model(path_or_name)
    manifest = _verify_once(folder)
    settings, report = DEFAULTS, None
    if retune or (tune and tuning_enabled()):
        tuned = settings_for(folder, manifest, retune=retune, status=status)
        settings, report = tuned.settings, tuned.report
    settings = settings.with_overrides(threads=threads, n_batch=n_batch, flash_attn=flash_attn)
    fallback = DEFAULTS.with_overrides(threads=threads, n_batch=n_batch, flash_attn=flash_attn)
    try:
        model = Model(folder, manifest, settings=settings, n_ctx=n_ctx)
    except ModelFolderError as e:
        if settings == fallback:
            raise
        # A cache entry edited by hand, or a runtime update that no longer takes a measured setting: the defaults
        # are always safe, and a damaged file fails again with them and is reported as such.
        log.warning("The measured settings did not load (%s); using the defaults.", e)
        model, report = Model(folder, manifest, settings=fallback, n_ctx=n_ctx), None
    model.tuning_report = report
    return model


__all__ = ["Answer", "ImageRows", "Model", "Timings", "load_model"]
