"""VisionEncoder: the one owner of the onnxruntime session that runs ``vision.onnx`` (FastViTHD + projector).

Session options were picked by measurement on the 2-core development machine (docs/benchmarks.md):

- graph optimization level ALL by default: the blocked NCHWc layout for float convolutions and the int8 QDQ fusions
  need it (EXTENDED or BASIC were 25-75% slower on an AVX-512 CPU, EXTENDED 23-39% on an AVX2 one); ``level``
  takes the choice measured on the running CPU (engine/runtime/tuning.py);
- one intra-op thread per physical core, sequential execution;
- no spinning: idle onnxruntime workers otherwise keep spinning after ``run`` returns and slow the llama.cpp
  prefill that follows (0.1-0.2 s at 1024 px), which costs more than the few ms spinning saves the encoder;
- no memory pattern: 150 MB less peak memory at 1024 px for the int8 graph, no measurable time.

Start-up: when ``vision.onnx`` is a float graph (fp16-stored weights that onnxruntime folds to float32 and re-lays
out at every start), the optimized graph is cached in the user cache folder, keyed by the sha256 that model.json
records, the onnxruntime version and the CPU. Later loads take 0.7 s instead of 1.4 s and half the peak memory. An
int8 graph starts in 0.4 s and the cache would save only 0.1 s for a second 130 MB copy, so it is not cached by
default. The model folder is never written to; any cache problem falls back silently to the original file.

On a GPU: ``provider`` names an onnxruntime execution provider (engine/runtime/vision_providers.py proves one
before a model uses it). Nodes it does not take run on the CPU; the optimized-graph cache is not used (its layout
choices are the CPU's). A provider that does not start leaves the encoder on the CPU (``provider`` then says
"CPUExecutionProvider"), and one that fails while encoding hands that picture and every later one to the CPU
(``fallback`` says why, in one sentence): a driver's error costs the GPU, not the answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from glimpse.engine import durable
from glimpse.engine.errors import REDO_MODEL, REDO_MODEL_GUI, InputError, ModelFolderError
from glimpse.engine.folders import graph_cache
from glimpse.engine.models.model_folder import recorded_file
from glimpse.engine.models.vision_cache import cached_graph_name
from glimpse.engine.runtime.preprocess import PATCH_SIZE
from glimpse.engine.system import default_threads

CPU_PROVIDER = "CPUExecutionProvider"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeddings"
# "all" adds the blocked NCHWc layout and int8 QDQ fusions on x86; which is faster depends on the CPU
# (engine/runtime/tuning.py)
LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}

log = logging.getLogger("glimpse")


def session_options(threads: int, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    ) -> ort.SessionOptions:
    """How Glimpse runs a vision graph: ``threads`` intra-op threads, one inter-op, no memory pattern (150 MB less at
    1024 px, same speed), no spinning (idle onnxruntime threads would slow llama.cpp's prefill that follows), and
    denormal numbers flushed to zero in Glimpse's own processes (:func:`flush_denormals`)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = level
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.set_denormal_as_zero", "1" if _flush_denormals else "0")
    opts.log_severity_level = 3
    return opts


_flush_denormals = False


def flush_denormals(on: bool = True) -> None:
    """Make the vision sessions created from now on in this process flush denormal numbers to zero: Intel CPUs
    compute them about 10x slower, and random or badly scaled weights drive activations there. onnxruntime then
    sets FTZ/DAZ on its own threads and on the thread that creates the session, which changes that thread's
    floating-point arithmetic for everything it does afterwards (numpy included). So only processes that are
    Glimpse's own call this (the model's runner, the benchmarks); in a library user's process the caller's
    floating-point state is left alone."""
    global _flush_denormals  # noqa: PLW0603 (one process-wide choice, made once at start)
    _flush_denormals = on


def cache_dir() -> Path:
    """Where optimized graphs are cached: $GLIMPSE_HOME/cache/onnx, else the per-user cache folder."""
    return graph_cache()


def _cpu_tag() -> str:
    """A short fingerprint of what the optimized graph depends on: the CPU's features and onnxruntime's version.

    An ALL-level graph holds layout choices (NCHWc block width) made for the CPU that optimized it.
    """
    parts = [ort.__version__, platform.system(), platform.machine(), os.environ.get("PROCESSOR_IDENTIFIER", "")]
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("flags", "Features", "model name")):
                parts.append(line.strip())
            if not line.strip():  # the first processor's block is enough
                break
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class VisionEncoder:
    """Runs the image encoder. ``encode`` takes float32 [1, 3, S, S] and returns float32 [tokens, hidden].

    ``cache``: None (default) uses the optimized-graph cache for float graphs in a model folder whose model.json
    records the file's sha256; True for any graph in such a folder; False never. ``cached`` says whether this
    session came from the cache.

    ``provider`` and ``provider_options``: the onnxruntime execution provider to run on (the CPU by default), and
    ``label`` its name for sentences; ``provider`` afterwards names the one the session has, and ``fallback`` says
    in one sentence why that is the CPU when another was asked for.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, cache: bool | None = None,
                 level: str = "all", provider: str = CPU_PROVIDER,
                 provider_options: Mapping[str, str] | None = None, label: str | None = None) -> None:
        self.path = Path(path)
        self.provider = provider
        self.provider_options = dict(provider_options or {})
        self.label = label or provider.removesuffix("ExecutionProvider")  # for sentences: "CUDA", "OpenVINO"
        self.fallback = ""  # why an asked-for provider is not the one running: one sentence
        self._cache = cache
        if level not in LEVELS:
            raise ValueError(f"Unknown graph optimization level {level!r}; choose one of {', '.join(LEVELS)}.")
        self.level = level
        if not self.path.is_file():
            raise ModelFolderError(f"{self.path} is missing.", REDO_MODEL, gui_hint=REDO_MODEL_GUI)
        self.threads = threads or default_threads()
        self.cached = False
        try:
            self._session: ort.InferenceSession | None = self._start(cache)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise ModelFolderError(f"{self.path} cannot be loaded by onnxruntime: {e}".rstrip(".") + ".",
                                   "The file is damaged; convert or download the model again.",
                                   gui_hint=f"The file is damaged. {REDO_MODEL_GUI}") from e
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise ModelFolderError(f"{self.path} is not a Glimpse vision encoder (inputs {sorted(inputs)}, "
                                   f"outputs {sorted(outputs)}).", "Convert the model again.",
                                   gui_hint=REDO_MODEL_GUI)
        width = outputs[OUTPUT_NAME].shape[-1]
        self.hidden: int | None = width if isinstance(width, int) else None
        if self._session.get_providers()[0] != self.provider:
            # onnxruntime creates the session on the CPU alone when a provider does not start (no driver, no device)
            self._fall_back(f"onnxruntime could not start {self.label}, so the vision encoder runs on the CPU.")

    # -- session ---------------------------------------------------------------------------------------------------

    def _options(self, level: ort.GraphOptimizationLevel) -> ort.SessionOptions:
        return session_options(self.threads, level)

    def _create(self, model: Path, opts: ort.SessionOptions) -> ort.InferenceSession:
        providers: list[Any] = [CPU_PROVIDER]
        if self.provider != CPU_PROVIDER:
            providers.insert(0, (self.provider, self.provider_options))
        return ort.InferenceSession(str(model), sess_options=opts, providers=providers)

    def _start(self, use_cache: bool | None) -> ort.InferenceSession:
        """The first session: on the provider (without the CPU's optimized-graph cache), else on the CPU."""
        if self.provider != CPU_PROVIDER:
            try:
                return self._open(False)
            except Exception as e:  # a provider that raises rather than leaving the graph to the CPU
                self._fall_back(f"{self.label} did not start ({_first_line(e)}), so the vision encoder runs on the "
                                "CPU.")
        return self._open(use_cache)

    def _open(self, use_cache: bool | None) -> ort.InferenceSession:
        level = LEVELS[self.level]
        sha, precision = recorded_file(self.path) if use_cache is not False else (None, "")
        if use_cache is None and precision == "int8":
            sha = None
        if sha is None:
            return self._create(self.path, self._options(level))
        cached = self._cache_file(sha)
        if cached is not None and cached.is_file():
            try:
                # Already optimized at this level: running the optimizers again would only cost time.
                session = self._create(cached, self._options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL))
                self.cached = True
                return session
            except Exception as e:  # a damaged cache entry: drop it and optimize the original again
                log.debug("Vision graph cache %s is unusable (%s); rebuilding it.", cached, e)
                with contextlib.suppress(OSError):
                    cached.unlink()
        if cached is None:
            return self._create(self.path, self._options(level))
        return self._create_and_cache(cached, level)

    def _cache_file(self, sha: str) -> Path | None:
        folder = cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return folder / cached_graph_name(sha, _cpu_tag(), self.level)

    def _create_and_cache(self, target: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
        """Create the session from the original file and let onnxruntime write the optimized graph to ``target``."""
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        opts = self._options(level)
        opts.optimized_model_filepath = str(partial)
        try:
            session = self._create(self.path, opts)
        except Exception as e:  # e.g. the cache folder is not writable: run without the cache
            log.debug("Could not cache the optimized vision graph in %s (%s).", target, e)
            with contextlib.suppress(OSError):
                partial.unlink()
            return self._create(self.path, self._options(level))
        try:
            if partial.is_file() and partial.stat().st_size > 0:
                durable.publish(partial, target)
        except OSError as e:
            log.debug("Could not cache the optimized vision graph in %s (%s).", target, e)
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        return session

    # -- running ---------------------------------------------------------------------------------------------------

    def encode(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._session is None:
            raise InputError("The vision encoder is closed.", "Load the model again.")
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32 or pixels.ndim != 4 \
                or pixels.shape[:2] != (1, 3) or pixels.shape[2] != pixels.shape[3] or pixels.shape[2] % PATCH_SIZE:
            shape = list(getattr(pixels, "shape", []))
            raise InputError(f"Pixels must be float32 [1, 3, S, S] with S a multiple of {PATCH_SIZE}; got "
                             f"{getattr(pixels, 'dtype', type(pixels).__name__)} {shape}.",
                             "Use Model.preprocess to prepare the image.")
        feed = {INPUT_NAME: np.ascontiguousarray(pixels)}
        try:
            (out,) = self._session.run([OUTPUT_NAME], feed)
        except Exception as e:  # onnxruntime's own error types; the CPU's errors are the model's and stay errors
            if self.provider == CPU_PROVIDER:
                raise
            self._fall_back(f"{self.label} failed while encoding ({_first_line(e)}), so the vision encoder runs on "
                            "the CPU.")
            self._session = None
            self._session = session = self._open(self._cache)
            (out,) = session.run([OUTPUT_NAME], feed)
        rows: npt.NDArray[np.float32] = np.ascontiguousarray(out[0], dtype=np.float32)
        return rows

    def _fall_back(self, why: str) -> None:
        log.warning("%s", why)
        self.fallback = why
        self.provider = CPU_PROVIDER

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> VisionEncoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
