"""``LanguageModel``: the one owner of the llama.cpp model and context.

It evaluates token ids and image rows (float32 embeddings of the model's width) into one KV cache, reads the logits
of the last position, and rewinds the cache. Everything llama.cpp would assert on (and so abort the whole process)
is checked here first and raised as a Python exception instead.

Image rows go in through llama.cpp's low-level batch API, since ``llama_cpp.Llama`` only takes token ids. The
positions they fill are recorded in ``Llama.input_ids`` as a negative marker id (one per image, derived from its
bytes), so ``history`` stays aligned with the cache and a later prompt that starts with the same ids, image included,
can reuse the cached prefix instead of recomputing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from glimpse.engine.errors import REDO_MODEL_GUI, ContextFullError, InferenceError, ModelFolderError
from glimpse.engine.models.gguf_header import GgufHeader, read_header, tensor_bytes
from glimpse.engine.runtime.canary import choose_kernels
from glimpse.engine.runtime.cpu_backends import load_cpu_backends
from glimpse.engine.runtime.gpu_backends import layers_that_fit, load_gpu_backend
from glimpse.engine.system import default_threads

if TYPE_CHECKING:
    import llama_cpp

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

F32Array = npt.NDArray[np.float32]


# -- llama.cpp logging ------------------------------------------------------------------------------------------------

# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the previous line). llama-cpp-python
# 0.3.36 maps these one level off (its WARN shows as ERROR), so warnings reach stderr even with verbose=False; route
# them to Python logging instead, where the app decides what to show.
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_log_state: dict[str, Any] = {"callback": None, "level": logging.DEBUG}
_native_log = logging.getLogger("engine.llama_cpp")
_native_log.addHandler(logging.NullHandler())


def route_llama_logs() -> None:
    """Send llama.cpp's log lines to the ``engine.llama_cpp`` logger (INFO chatter at DEBUG). Idempotent."""
    if _log_state["callback"] is not None:
        return
    # Start-up: llama_cpp takes about 0.5 s to import and gguf about 0.35 s; the window imports this module at start but
    # loads a model later, on its worker thread.
    import llama_cpp  # noqa: PLC0415

    def forward(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != 5:
            _log_state["level"] = _LEVELS.get(level, logging.DEBUG)
        if _native_log.isEnabledFor(_log_state["level"]):
            _native_log.log(_log_state["level"], "%s", text.decode("utf-8", errors="replace").rstrip("\n"))

    callback = llama_cpp.llama_log_callback(forward)
    _log_state["callback"] = callback  # the C side keeps only a pointer; this keeps the function alive
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


# -- GGUF header check ------------------------------------------------------------------------------------------------

def check_gguf(path: Path) -> GgufHeader:
    """Raise :class:`ModelFolderError` unless ``path`` is a complete GGUF file of the kind Glimpse writes (header
    bounded and consistent, tensor data inside the file); reads only the header. See ``engine.models.gguf_header``."""
    return read_header(path)


# ggml type ids (ggml.h) of the KV cache types offered
KV_TYPES = {"f16": 1, "q8_0": 8}


# -- model parameters llama_cpp.Llama does not expose ---------------------------------------------------------------

_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(*, extra_bufts: bool) -> Iterator[None]:
    """While a ``Llama`` is made inside this block (on this thread), its model parameters have ``use_extra_bufts``
    as given. ``Llama.__init__`` starts from ``llama_cpp.llama_cpp.llama_model_default_params()`` and has no argument
    for the field, so the function is wrapped for the duration; other threads making a ``Llama`` meanwhile get the
    library's defaults untouched. With ``extra_bufts`` False llama.cpp keeps every weight in plain CPU memory: no
    AMX tiles, no repacked (interleaved) layouts, only the variant's ordinary kernels."""
    if extra_bufts:
        yield
        return
    # Start-up: llama_cpp takes about 0.5 s to import; only a model load comes here.
    import llama_cpp.llama_cpp as raw  # noqa: PLC0415

    with _params_lock:
        original = raw.llama_model_default_params
        owner = threading.get_ident()

        def params() -> raw.llama_model_params:
            made: raw.llama_model_params = original()
            if threading.get_ident() == owner:
                made.use_extra_bufts = False
            return made

        raw.llama_model_default_params = params
        try:
            yield
        finally:
            raw.llama_model_default_params = original


# -- how much goes on the GPU ----------------------------------------------------------------------------------------

GPU_RESERVE_BYTES = 512 * 1024 * 1024  # the driver's own use and what else runs on the GPU (a desktop, a browser)


def block_count(header: GgufHeader) -> int:
    """The model's repeating layers (``<arch>.block_count``)."""
    arch = str(header.values.get("general.architecture", "qwen2"))
    return int(header.values.get(f"{arch}.block_count", 0))


def gpu_plan(header: GgufHeader, *, n_ctx: int, n_batch: int, kv_bytes_per_value: int, free_bytes: int) -> int:
    """``n_gpu_layers`` for a Qwen2 GGUF on a device with ``free_bytes`` free: each repeating layer's weights and
    its share of the KV cache (``n_ctx`` positions), then the output layer (its norm and the output matrix, which a
    tied model copies from the token embeddings); the token embeddings themselves stay on the CPU. Held back: a fixed
    reserve plus the compute buffer's largest piece, the logits of one batch."""
    arch = str(header.values.get("general.architecture", "qwen2"))
    n_layer = block_count(header)
    heads = int(header.values.get(f"{arch}.attention.head_count", 1))
    kv_heads = int(header.values.get(f"{arch}.attention.head_count_kv", heads))
    hidden = int(header.values.get(f"{arch}.embedding_length", 0))
    kv = 2 * n_ctx * kv_heads * (hidden // max(heads, 1)) * kv_bytes_per_value
    sizes = {t.name: tensor_bytes(t) for t in header.tensors}
    layers = [kv] * n_layer
    for name, size in sizes.items():
        block, _, rest = name.removeprefix("blk.").partition(".")
        if name.startswith("blk.") and rest and block.isdigit() and int(block) < n_layer:
            layers[int(block)] += size
    output = sizes.get("output.weight", sizes.get("token_embd.weight", 0)) + sizes.get("output_norm.weight", 0)
    vocab = next((t.dims[1] for t in header.tensors if t.name == "token_embd.weight" and len(t.dims) > 1), 0)
    reserve = GPU_RESERVE_BYTES + n_batch * vocab * 4
    return layers_that_fit(layers, output, free_bytes, reserve_bytes=reserve)


# -- the model --------------------------------------------------------------------------------------------------------

def image_marker(rows: F32Array) -> int:
    """The negative id that stands for ``rows`` in the token history: equal rows, equal marker."""
    digest = hashlib.blake2b(rows.tobytes(), digest_size=8).digest()
    return -1 - int.from_bytes(digest, "little") % (2**31 - 2)


class LanguageModel:
    """A Qwen2 GGUF loaded into llama.cpp with one sequence's KV cache.

    ``n_ctx`` is the context window in positions (tokens plus image rows), ``n_batch`` the most positions one
    ``llama_decode`` call takes (longer inputs are split), ``n_threads`` defaults to the physical core count.
    ``extra_bufts`` False keeps the weights out of llama.cpp's extra buffer types (AMX tiles, repacked layouts);
    ``cpu_variant`` names the CPU variant library a portable build loads (``engine.runtime.cpu_backends``; ignored by
    a native build). Left out (None), both are what ``engine.runtime.canary`` proved for this file's weight type on
    this CPU and build. ``gpu_layers``: how many layers llama.cpp puts on the GPU backend's device (0: none, and no
    operation is offloaded either; -1: all of them; None: as many as its free memory holds, :func:`gpu_plan`); any
    other value than 0 loads the GPU backend (``engine.runtime.gpu_backends``), raising its ``GpuUnavailable`` when
    there is none. Not thread-safe: one thread owns it.
    """

    def __init__(self, gguf_path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, flash_attn: bool = False, n_ubatch: int | None = None,
                 n_threads_batch: int | None = None, kv_type: str = "f16", extra_bufts: bool | None = None,
                 cpu_variant: str | None = None, gpu_layers: int | None = 0) -> None:
        if n_ctx < 16 or n_batch < 1 or (n_threads is not None and n_threads < 1) \
                or (n_ubatch is not None and n_ubatch < 1) or (n_threads_batch is not None and n_threads_batch < 1):
            raise ValueError(f"n_ctx {n_ctx}, n_batch {n_batch}, n_ubatch {n_ubatch}, n_threads {n_threads} and "
                             f"n_threads_batch {n_threads_batch} must be positive (n_ctx at least 16).")
        if kv_type not in KV_TYPES or (kv_type != "f16" and not flash_attn):
            raise ValueError(f"KV cache type {kv_type!r} is not one of {', '.join(KV_TYPES)}, or needs flash "
                             "attention (llama.cpp quantizes the V cache only with it).")
        self.path = Path(gguf_path)
        header = check_gguf(self.path)
        if extra_bufts is None:
            # Every llama.cpp context the engine makes (the model, the converter's gate, the tuning, the tools) runs
            # kernels the canary has seen compute correctly on this CPU, build and weight type: cached after once.
            choice = choose_kernels(self.path)
            extra_bufts, cpu_variant = choice.extra_bufts, cpu_variant or choice.variant
        import llama_cpp  # noqa: PLC0415

        route_llama_logs()
        load_cpu_backends(variant=cpu_variant)
        threads = n_threads or default_threads()
        n_batch = min(n_batch, n_ctx)
        kv = KV_TYPES[kv_type]
        self.gpu_device = ""
        if gpu_layers != 0:
            device = load_gpu_backend().devices[0]
            self.gpu_device = device.description
            if gpu_layers is None:
                gpu_layers = gpu_plan(header, n_ctx=n_ctx, n_batch=n_batch, kv_bytes_per_value=2 if kv == 1 else 1,
                                      free_bytes=device.memory_free)
        n_layer = block_count(header)
        self.gpu_layers = n_layer + 1 if gpu_layers is not None and gpu_layers < 0 else int(gpu_layers or 0)
        self.n_layers = n_layer + 1  # what gpu_layers counts: the repeating layers and the output layer
        try:
            with _model_params(extra_bufts=extra_bufts):
                self._llama: llama_cpp.Llama | None = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=n_ctx, n_batch=n_batch,
                    n_ubatch=min(n_ubatch or n_batch, n_batch), n_threads=threads,
                    n_threads_batch=n_threads_batch or threads, flash_attn=flash_attn, type_k=kv, type_v=kv,
                    n_gpu_layers=self.gpu_layers,
                    # With no layer on a GPU nothing goes there: llama.cpp would otherwise send large batches'
                    # matrix multiplies to a GPU backend that is registered (linked into a native build) but unused.
                    op_offload=self.gpu_layers > 0,
                    verbose=False)
        except (ValueError, RuntimeError) as e:
            raise ModelFolderError(f"llama.cpp could not load {self.path.name} ({e}).",
                                   "The file may be damaged or made for another model; convert it again.",
                                   gui_hint=f"The file may be damaged or made for another model. {REDO_MODEL_GUI}"
                                   ) from e
        llama = self._llama
        self.extra_bufts = bool(llama.model_params.use_extra_bufts)
        if self.extra_bufts != extra_bufts:  # a llama-cpp-python that no longer builds its parameters that way
            self.close()
            raise InferenceError("llama.cpp's extra buffer types could not be turned off in this llama-cpp-python.",
                                 "Install the llama-cpp-python version Glimpse names in its requirements.")
        # Llama sizes input_ids by the n_ctx asked for; llama.cpp may round its own window up.
        self._n_ctx = min(llama.n_ctx(), int(llama.input_ids.shape[0]))
        self._n_batch = n_batch
        self._n_vocab = llama.n_vocab()
        self._n_embd = int(llama_cpp.llama_model_n_embd_inp(llama.model))
        self._has_logits = False

    # -- lifetime --------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the context and the model. Safe to call twice."""
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def __enter__(self) -> LanguageModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _ll(self) -> llama_cpp.Llama:
        if self._llama is None:
            raise InferenceError("The language model has been closed.", "Load the model again.")
        return self._llama

    # -- facts -----------------------------------------------------------------------------------------------------

    @property
    def n_embd(self) -> int:
        """Width of the rows ``eval_embeddings`` takes (the model's hidden size)."""
        return self._n_embd

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def n_vocab(self) -> int:
        """Rows of the logits (the embedding matrix's rows, padding included)."""
        return self._n_vocab

    def set_threads(self, decode: int, batch: int) -> None:
        """Threads for generating one token at a time and for evaluating many positions at once."""
        import llama_cpp  # noqa: PLC0415

        if decode < 1 or batch < 1:
            raise ValueError(f"Thread counts must be positive, not {decode} and {batch}.")
        llama_cpp.llama_set_n_threads(self._ll.ctx, decode, batch)

    @property
    def n_past(self) -> int:
        """Positions in the KV cache."""
        return int(self._ll.n_tokens)

    @property
    def history(self) -> list[int]:
        """The id at each cached position: token ids, and negative image markers where rows were evaluated."""
        llama = self._ll
        return [int(i) for i in llama.input_ids[: llama.n_tokens]]

    # -- text ------------------------------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``, without BOS (Qwen2 uses none). ``special`` parses ``<|im_start|>`` and the like."""
        try:
            return list(self._ll.tokenize(text.encode("utf-8"), add_bos=False, special=special))
        except RuntimeError as e:
            raise InferenceError(f"llama.cpp could not tokenize the text ({e}).") from e

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of ``ids``; ``special`` renders control tokens. Bytes that do not form UTF-8 become U+FFFD."""
        ids = self._check_ids(ids)
        return self._ll.detokenize(ids, special=special).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token (may be part of a UTF-8 character; decode incrementally)."""
        return bytes(self._ll.detokenize(self._check_ids([token]), special=False))

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = [int(i) for i in ids]
        bad = [i for i in out if not 0 <= i < self._n_vocab]
        if bad:
            raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary (0..{self._n_vocab - 1}).")
        return out

    def _check_room(self, n: int, what: str) -> None:
        if self.n_past + n > self._n_ctx:
            raise ContextFullError(
                f"The {what} ({n} positions) does not fit: {self.n_past} of the {self._n_ctx} context positions "
                "are already used.", "Start a new conversation, or use a smaller image size.",
                gui_hint="Ask about a new picture to start a new conversation, or choose a smaller image size.")

    # -- evaluation ------------------------------------------------------------------------------------------------

    def eval_tokens(self, ids: Sequence[int]) -> None:
        """Append token ids to the cache (split by ``n_batch``); afterwards ``logits()`` is the last one's."""
        ids = self._check_ids(ids)
        if not ids:
            return
        self._check_room(len(ids), "text")
        self._has_logits = False
        try:
            self._ll.eval(ids)
        except RuntimeError as e:
            raise InferenceError(f"llama.cpp could not evaluate the text ({e}).") from e
        self._has_logits = True

    def eval_embeddings(self, rows: F32Array, *, marker: int | None = None) -> list[int]:
        """Append image rows (float32, C-contiguous, shape (k, n_embd), k > 0, finite) to the cache.

        Returns the ids recorded for these positions in ``history``: ``marker`` (negative), by default
        ``image_marker(rows)``, once per row. Afterwards ``logits()`` is the last row's.
        """
        if not isinstance(rows, np.ndarray):
            raise TypeError(f"Image rows must be a numpy array, not {type(rows).__name__}.")
        if rows.dtype != np.float32:
            raise TypeError(f"Image rows must be float32, not {rows.dtype}.")
        if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] != self._n_embd:
            raise ValueError(f"Image rows must have shape (k > 0, {self._n_embd}), not {rows.shape}.")
        if not rows.flags.c_contiguous:
            raise ValueError("Image rows must be C-contiguous (use np.ascontiguousarray).")
        if not np.isfinite(rows).all():
            raise ValueError("Image rows contain NaN or infinity.")
        if marker is None:
            marker = image_marker(rows)
        if marker >= 0:
            raise ValueError(f"An image marker must be negative so it can never equal a token id, not {marker}.")
        self._check_room(rows.shape[0], "image")
        self._decode_rows(rows, marker)
        return [marker] * rows.shape[0]

    def _decode_rows(self, rows: F32Array, marker: int) -> None:
        import llama_cpp  # noqa: PLC0415

        llama = self._ll
        start = int(llama.n_tokens)
        k, width = rows.shape
        memory = llama_cpp.llama_get_memory(llama.ctx)
        if memory is None:
            raise InferenceError("The llama.cpp context has no KV cache.")
        # Drop whatever the cache holds past n_past (as Llama.eval does), so positions continue where it ends.
        llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
        self._has_logits = False
        batch = llama_cpp.llama_batch_init(min(k, self._n_batch), width, 1)
        try:
            for r0 in range(0, k, self._n_batch):
                chunk = rows[r0:r0 + self._n_batch]
                m = chunk.shape[0]
                past = int(llama.n_tokens)
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
                for i in range(m):
                    batch.pos[i] = past + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 0
                batch.logits[m - 1] = 1 if r0 + m == k else 0
                batch.n_tokens = m
                rc = llama_cpp.llama_decode(llama.ctx, batch)
                if rc != 0:
                    llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
                    llama.n_tokens = start
                    raise InferenceError(f"llama.cpp could not evaluate the image rows (llama_decode returned {rc}).")
                llama.input_ids[past:past + m] = marker
                llama.n_tokens = past + m
        finally:
            llama_cpp.llama_batch_free(batch)
        # Llama.generate() may sample straight from a fully cached prompt only when this flag says the logits are live.
        llama._requires_eval = False
        self._has_logits = True

    def eval_tokens_with_logits(self, ids: Sequence[int]) -> F32Array:
        """Append token ids in one batch and return the logits after each of them, shape (len(ids), n_vocab).

        Scoring a known continuation this way (teacher forcing) costs one decode instead of one per token.
        At most ``n_batch`` ids; afterwards ``logits()`` is the last one's.
        """
        import llama_cpp  # noqa: PLC0415

        ids = self._check_ids(ids)
        if not ids:
            return np.zeros((0, self._n_vocab), dtype=np.float32)
        if len(ids) > self._n_batch:
            raise ValueError(f"At most {self._n_batch} ids can be scored at once, not {len(ids)}.")
        self._check_room(len(ids), "text")
        llama = self._ll
        start = int(llama.n_tokens)
        memory = llama_cpp.llama_get_memory(llama.ctx)
        if memory is None:
            raise InferenceError("The llama.cpp context has no KV cache.")
        llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
        self._has_logits = False
        batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
        try:
            for i, token in enumerate(ids):
                batch.token[i] = token
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = len(ids)
            rc = llama_cpp.llama_decode(llama.ctx, batch)
            if rc != 0:
                llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
                raise InferenceError(f"llama.cpp could not evaluate the text (llama_decode returned {rc}).")
            out = np.empty((len(ids), self._n_vocab), dtype=np.float32)
            for i in range(len(ids)):
                ptr = llama_cpp.llama_get_logits_ith(llama.ctx, i)
                if not ptr:
                    raise InferenceError(f"llama.cpp returned no logits for position {i}.")
                out[i] = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        finally:
            llama_cpp.llama_batch_free(batch)
        llama.input_ids[start:start + len(ids)] = ids
        llama.n_tokens = start + len(ids)
        llama._requires_eval = False
        self._has_logits = True
        return out

    def logits(self) -> F32Array:
        """A copy of the logits (float32, shape (n_vocab,)) after the last evaluated position."""
        import llama_cpp  # noqa: PLC0415

        if not self._has_logits:
            raise InferenceError("There are no logits yet: evaluate tokens or image rows first.")
        ptr = llama_cpp.llama_get_logits_ith(self._ll.ctx, -1)
        if not ptr:
            raise InferenceError("llama.cpp returned no logits for the last position.")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float32, copy=True)

    def rewind(self, n_keep: int) -> None:
        """Forget every position from ``n_keep`` on, keeping the first ``n_keep`` (0 clears the cache)."""
        import llama_cpp  # noqa: PLC0415

        llama = self._ll
        if not 0 <= n_keep <= llama.n_tokens:
            raise ValueError(f"Cannot keep {n_keep} positions: the cache holds {llama.n_tokens}.")
        if n_keep == llama.n_tokens:
            return
        if not llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(llama.ctx), 0, n_keep, -1):
            raise InferenceError(f"llama.cpp could not remove the cache from position {n_keep} on.")
        llama.n_tokens = n_keep
        llama._requires_eval = True
        self._has_logits = False
