"""Every library internal Glimpse relies on, in one list, with the versions it was tested against.

These are names a library does not promise to keep: private attributes, private modules, the raw ctypes bindings,
and a workaround for a library bug. pyproject.toml pins each library below the next untested release (``TESTED``
holds the same bounds), and ``tests/engine/test_internals.py`` fails with a sentence naming the internal when an upgrade
removes or changes one, so an upgrade is a deliberate step: raise the bound, run the tests, fix what they name.

This module only describes; it imports none of the libraries (the engine never imports Qt, and the CLI's start-up
stays light).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


@dataclass(frozen=True)
class Internal:
    """One internal: ``name`` is importable as ``module:attribute.path``; ``kind`` says how the test can reach it
    ("module" attributes resolve by import, "instance" attributes exist only on a live object, "symbol" names a C
    function of the ggml core library that llama-cpp-python ships, ``libggml:function``)."""

    distribution: str
    name: str
    kind: Literal["module", "instance", "behaviour", "symbol"]
    used_in: str
    why: str


# Lower bound: the oldest release with the API we use; upper bound (exclusive): the first release not yet tested.
# Lower bounds: llama-cpp-python 0.3.27 is the first with the GGUF loader fixes named in pyproject.toml.
TESTED: Final[dict[str, tuple[str, str]]] = {
    "llama-cpp-python": ("0.3.27", "0.3.37"),
    "huggingface_hub": ("2", "2.5"),
    "onnxruntime": ("1.20", "1.33"),
    "pyside6": ("6.6", "6.13"),
}

INTERNALS: Final[tuple[Internal, ...]] = (
    Internal("llama-cpp-python", "llama_cpp:Llama.input_ids", "instance", "engine/runtime/llm.py",
             "the ids of the cached positions; image rows are recorded there as negative markers so that "
             "Llama.generate's prefix match and LanguageModel.history see them"),
    Internal("llama-cpp-python", "llama_cpp:Llama.n_tokens", "instance", "engine/runtime/llm.py",
             "how many positions the cache holds; set after evaluating image rows and after a rewind"),
    Internal("llama-cpp-python", "llama_cpp:Llama._requires_eval", "instance", "engine/runtime/llm.py",
             "cleared after image rows are evaluated outside Llama.eval, set after a rewind"),
    Internal("llama-cpp-python", "llama_cpp:llama_batch_init", "module", "engine/runtime/llm.py",
             "the raw batch API: Llama.eval takes token ids only, image rows are embeddings"),
    Internal("llama-cpp-python", "llama_cpp:llama_decode", "module", "engine/runtime/llm.py", "as above"),
    Internal("llama-cpp-python", "llama_cpp:llama_batch_free", "module", "engine/runtime/llm.py", "as above"),
    Internal("llama-cpp-python", "llama_cpp:llama_get_memory", "module", "engine/runtime/llm.py",
             "rewinding the KV cache to a common prefix"),
    Internal("llama-cpp-python", "llama_cpp:llama_memory_seq_rm", "module", "engine/runtime/llm.py", "as above"),
    Internal("llama-cpp-python", "llama_cpp:llama_get_logits_ith", "module", "engine/runtime/llm.py",
             "the last position's logits after a decode Llama did not run"),
    Internal("llama-cpp-python", "llama_cpp:llama_model_n_embd_inp", "module", "engine/runtime/llm.py",
             "the width image rows must have"),
    Internal("llama-cpp-python", "llama_cpp:llama_log_set", "module", "engine/runtime/llm.py",
             "routing llama.cpp's log lines to Python logging"),
    Internal("llama-cpp-python", "llama_cpp:llama_log_callback", "module", "engine/runtime/llm.py", "as above"),
    Internal("llama-cpp-python", "llama_cpp.llama_cpp:llama_model_default_params", "module", "engine/runtime/llm.py",
             "Llama.__init__ builds its model parameters by calling this module attribute and has no argument for "
             "use_extra_bufts; LanguageModel(extra_bufts=False) wraps it while its Llama is made (the kernel canary's "
             "rung without AMX and repacked weights)"),
    Internal("llama-cpp-python", "llama_cpp.llama_cpp:llama_model_params.use_extra_bufts", "module",
             "engine/runtime/llm.py", "the field that keeps weights out of llama.cpp's AMX and repack buffers"),
    Internal("llama-cpp-python", "llama_cpp:Llama.model_params", "instance", "engine/runtime/llm.py",
             "read back after loading: the proof that use_extra_bufts reached llama.cpp"),
    Internal("llama-cpp-python", "llama_cpp:Llama.__init__.op_offload", "behaviour", "engine/runtime/llm.py",
             "a keyword argument of Llama(): off when no layer is on a GPU, so a registered GPU backend gets no "
             "operations of a model that runs on the CPU"),
    # llama-cpp-python has no call that loads a dynamically loaded ggml backend or lists its devices: the engine calls
    # ggml's own C functions in the core library that libllama links (engine/runtime/cpu_backends.py:core_library).
    Internal("llama-cpp-python", "libggml:ggml_backend_load", "symbol", "engine/runtime/cpu_backends.py, "
             "engine/runtime/gpu_backends.py",
             "loads one CPU variant library, or the Vulkan backend, into the ggml that libllama uses"),
    Internal("llama-cpp-python", "libggml:ggml_backend_reg_by_name", "symbol", "engine/runtime/cpu_backends.py, "
             "engine/runtime/gpu_backends.py", "whether a backend (CPU, Vulkan) is registered already"),
    Internal("llama-cpp-python", "libggml:ggml_backend_reg_dev_count", "symbol", "engine/runtime/gpu_backends.py",
             "the devices a GPU backend registered"),
    Internal("llama-cpp-python", "libggml:ggml_backend_reg_dev_get", "symbol", "engine/runtime/gpu_backends.py",
             "as above"),
    Internal("llama-cpp-python", "libggml:ggml_backend_dev_get_props", "symbol", "engine/runtime/gpu_backends.py",
             "a device's name, description, free and total memory and type: struct ggml_backend_dev_props, whose "
             "layout gpu_backends._DevProps mirrors (the test reads the CPU device through it)"),
    Internal("huggingface_hub", "huggingface_hub.utils._headers:build_hf_headers", "module",
             "engine/models/download.py",
             "the user agent and token handling hf_hub_download sends, for Glimpse's own resumable byte loop"),
    Internal("onnxruntime", "onnxruntime.quantization.qdq_quantizer:QDQQuantizer", "module",
             "engine/convert/vision_int8.py",
             "quantize_static without its own slow calibration: Glimpse passes the ranges it measured"),
    Internal("onnxruntime", "onnxruntime.quantization.calibrate:TensorsData", "module",
             "engine/convert/vision_int8.py", "the measured activation ranges handed to QDQQuantizer"),
    Internal("onnxruntime", "onnxruntime.quantization.calibrate:TensorData", "module",
             "engine/convert/vision_int8.py", "as above"),
    Internal("pyside6", "PySide6.QtCore:SignalInstance.emit", "behaviour", "app/qtcompat.py",
             "PySide6 6.12's emit returns True without a reference to it; on Python < 3.12 a few thousand emits "
             "free True and the interpreter aborts, so every emit goes through app.qtcompat.emit"),
)

# The PySide6 releases whose emit drops a reference to its result [first, end): measured on 6.12.0 (the test in
# tests/app/test_qtcompat.py shows it on the installed release); releases before 6.12 were not measured. Upstream
# project and tracker: https://code.qt.io/cgit/pyside/pyside-setup.git, https://bugreports.qt.io/projects/PYSIDE
EMIT_REFCOUNT_BUG: Final = ("6.12", "6.13")
