"""The public engine API: ``load_model`` -> ``Model`` -> ``ask`` / ``stream`` / ``conversation``.

A ``Model`` owns one vision encoder (onnxruntime) and one language model (llama.cpp) with a single KV cache.
Every question is a :class:`~engine.runtime.conversation.Conversation` about one image: the image is encoded once,
its rows go into llama.cpp as embeddings, and a follow-up only prefills its own new text. Not thread-safe: one thread
asks, any thread may call :meth:`Model.cancel`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.engine import durable
from glimpse.engine.errors import REDO_MODEL_GUI, Cancelled, InputError, ModelFolderError
from glimpse.engine.models.gguf_header import check_gguf_file
from glimpse.engine.models.model_folder import LLM_FILE, VISION_FILE, ModelManifest, verify
from glimpse.engine.models.onnx_external import check_onnx_file
from glimpse.engine.models.store import Store
from glimpse.engine.progress import check_cancel
from glimpse.engine.runtime.canary import GPU_RUNG, KernelChoice, apply_kernels, choose_kernels
from glimpse.engine.runtime.conversation import Conversation
from glimpse.engine.runtime.gpu_backends import DEVICES, GpuUnavailable
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.preprocess import ImageInput, check_size, load_image, preprocess, tile_views
from glimpse.engine.runtime.prompt import ENDOFTEXT, IM_END
from glimpse.engine.runtime.tuning import DEFAULTS, RuntimeSettings, StatusFn, tuning_enabled
from glimpse.engine.runtime.tuning_measure import settings_for
from glimpse.engine.runtime.types import Answer, F32Array, ImageRows, Timings
from glimpse.engine.runtime.vision import VisionEncoder
from glimpse.engine.runtime.vision_providers import CPU, VisionChoice, choose_vision
from glimpse.engine.system import default_threads

log = logging.getLogger("glimpse")

_VERIFIED_STAMP = ".glimpse-verified"


class Model:
    """A loaded FastVLM model folder. Use :func:`load_model` to make one; close it (or use ``with``) to free memory."""

    def __init__(self, folder: Path, manifest: ModelManifest, *, settings: RuntimeSettings, n_ctx: int,
                 kernels: KernelChoice | None = None, vision: VisionChoice = CPU) -> None:
        self.folder = folder
        self.kernels = kernels  # which configuration of llama.cpp's CPU kernels runs, and how it was proven
        self.vision_choice = vision  # where the vision encoder was to run (its check), and why not on a GPU
        self.manifest = manifest
        self.settings = settings = settings.resolved()
        self.tuning_report: dict[str, Any] | None = None  # what the measurement behind ``settings`` timed
        self.threads = settings.threads_batch
        self.vision = VisionEncoder(folder / VISION_FILE, threads=settings.vision_threads,
                                    level=settings.vision_level, provider=vision.provider,
                                    provider_options=dict(vision.options), label=vision.label)
        try:
            self.llm = LanguageModel(folder / LLM_FILE, n_ctx=n_ctx, n_threads=settings.threads,
                                     n_threads_batch=settings.threads_batch, n_batch=settings.n_batch,
                                     n_ubatch=settings.n_ubatch, flash_attn=settings.flash_attn,
                                     kv_type=settings.kv_type,
                                     extra_bufts=kernels.extra_bufts if kernels is not None else True,
                                     cpu_variant=kernels.variant if kernels is not None else None,
                                     # on a GPU, as many layers as its free memory holds; the rest on the CPU
                                     gpu_layers=None if kernels is not None and kernels.device == "gpu" else 0)
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
    def devices(self) -> str:
        """Which device runs each part, for a status line: "LLM: Vulkan (Intel UHD 770, 25/25 layers), vision:
        OpenVINO (Intel(R) UHD Graphics 770)", or "LLM: CPU, vision: CPU"."""
        llm = "CPU"
        if self.llm.gpu_layers > 0:
            on, of = min(self.llm.gpu_layers, self.llm.n_layers), self.llm.n_layers
            llm = f"Vulkan ({self.llm.gpu_device}, {on}/{of} layers)"
        return f"LLM: {llm}, vision: {self.vision_choice.describe() if self._vision_as_chosen else 'CPU'}"

    @property
    def _vision_as_chosen(self) -> bool:
        """Whether the encoder runs where its choice said (not on the CPU after its provider failed)."""
        return self.vision.provider == self.vision_choice.provider

    @property
    def vision_check(self) -> str:
        """How the vision encoder's GPU provider passed its check ("OpenVINO (...): mean KL 0.0000, ...; encode
        41 ms, the CPU's 95 ms"), "" on the CPU."""
        return self.vision_choice.check_summary() if self._vision_as_chosen else ""

    @property
    def gpu_driver(self) -> str:
        """The GPU's driver as Vulkan names it ("llvmpipe, Mesa 22.3.6 (LLVM 15.0.6)"), "" on the CPU."""
        return self.kernels.gpu_driver if self.kernels is not None and self.llm.gpu_layers > 0 else ""

    @property
    def gpu_not_used(self) -> str:
        """Why the GPU was tried and is not used: one sentence for the language model, one for the vision encoder,
        as they apply; "" when both are on a GPU or none was asked for."""
        if self.kernels is not None and self.kernels.device == "gpu" and self.llm.gpu_layers == 0:
            llm = (f"The GPU ({self.llm.gpu_device}) has too little free memory for any of the model's layers, so "
                   "the GPU is not used.")
        else:
            llm = self.kernels.gpu_not_used if self.kernels is not None else ""
        vision = self.vision.fallback or self.vision_choice.not_used
        return " ".join(s for s in (llm, vision) if s)

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

    def begin_generation(self) -> threading.Event:
        """Clear a cancel left from an earlier answer and return the event :meth:`cancel` sets; a
        :class:`Conversation` calls this when it starts an answer."""
        self._cancel.clear()
        return self._cancel


def _verify_once(folder: Path, cancel: threading.Event | None = None) -> ModelManifest:
    """Full sha256 verification the first time a folder is loaded (and whenever a file changed since); later loads
    check sizes only. The stamp records each file's size and modification time."""
    manifest = verify(folder, check_hashes=False)
    stamp = {n: [(folder / n).stat().st_size, (folder / n).stat().st_mtime_ns] for n in manifest.files}
    stamp_path = folder / _VERIFIED_STAMP
    try:
        # is_file: a FIFO or device named like the stamp would block the read or never end.
        if stamp_path.is_file() and stamp_path.stat().st_size < 1 << 16 \
                and json.loads(stamp_path.read_text(encoding="utf-8")) == stamp:
            return manifest
    except (OSError, ValueError, RecursionError):
        pass
    manifest = verify(folder, check_hashes=True, cancel=cancel)
    with contextlib.suppress(OSError):  # a read-only folder is verified on every load instead
        durable.write_text(stamp_path, json.dumps(stamp))  # replaces, never opens, whatever had the name
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
    return Store.default().path(text)


def load_model(path_or_name: str | Path, *, threads: int | None = None, n_ctx: int = 4096,
               n_batch: int | None = None, flash_attn: bool | None = None, tune: bool = True, retune: bool = False,
               status: StatusFn | None = None, cancel: threading.Event | None = None,
               kernels: KernelChoice | None = None, device: str = "cpu", vision: VisionChoice | None = None) -> Model:
    """Load a model folder (or an installed model by name, e.g. "fastvlm-0.5b").

    ``n_ctx`` is the context window in positions (a 1024 px image takes 256). The folder is checked first (sizes
    always, sha256 on first load), so a damaged file is reported as a sentence instead of crashing a runtime.
    ``cancel`` stops the sha256 check (raising Cancelled); the runtimes' own loading cannot be interrupted.

    The runtimes' CPU-dependent settings come from a short measurement made the first time this model runs on this
    CPU and cached (engine/runtime/tuning.py; ``status(text, done, total)`` hears about each step); ``retune``
    measures again, ``tune=False`` (or GLIMPSE_TUNE=0) uses the built-in defaults. ``threads``, ``n_batch`` and
    ``flash_attn``, when given, override what was measured.

    Before llama.cpp runs, its CPU kernels are proven for the model's weight type by a canary in a throwaway process
    (engine/runtime/canary.py; once per CPU and build, then cached; GLIMPSE_CANARY=0 skips it), and the model loads
    with the first configuration that computed correctly; ``kernels`` gives that choice instead (``Model.kernels``).

    ``device`` is where the language model runs: "cpu"; "gpu" (llama.cpp's Vulkan backend, raising
    ``GpuUnavailable`` with one sentence when there is no usable GPU); or "auto", the GPU where its canary passed on
    this device and driver and the model loads there, else the CPU (``Model.gpu_not_used`` says why). With "auto"
    or "gpu" the vision encoder runs on an onnxruntime GPU provider where one is installed and its check passed
    (engine/runtime/vision_providers.py; once per graph, onnxruntime and driver, then cached), else on the CPU with
    the sentence that says why; ``vision`` gives that choice instead. ``Model.devices`` names both devices.
    """
    if device not in DEVICES:
        raise InputError(f"device {device!r} is not one of {', '.join(DEVICES)}.", "Use auto, cpu or gpu.")
    if n_ctx < 512:
        raise InputError(f"n_ctx {n_ctx} is too small.", "Use at least 512 (4096 is the default).")
    if threads is not None and threads < 1:
        raise InputError(f"threads {threads} is not a thread count.", "Use 1 or more, or leave it out.")
    folder = resolve_model(path_or_name)
    manifest = _verify_once(folder, cancel)
    check_cancel(cancel, "Loading the model")
    # Both runtimes parse in native code: check what they will read first (headers, external-data paths).
    check_gguf_file(folder / LLM_FILE, manifest.raw.get("llm"))
    check_onnx_file(folder / VISION_FILE, manifest.files)
    kernels = (choose_kernels(folder / LLM_FILE, manifest.quant, threads=threads, status=status, device=device)
               if kernels is None else apply_kernels(kernels))
    if vision is None:
        vision = choose_vision(folder, device, threads=threads or default_threads(), status=status)
    try:
        return _load(folder, manifest, kernels, n_ctx=n_ctx, threads=threads, n_batch=n_batch, flash_attn=flash_attn,
                     tune=tune, retune=retune, status=status, vision=vision)
    except (GpuUnavailable, ModelFolderError) as e:
        if kernels.device != "gpu" or device != "auto":
            raise
        # The canary's small model ran on the GPU, this one did not load there (its memory, a driver that changed
        # since): with "auto" the CPU answers, and the sentence says why the GPU is not used.
        log.warning("The language model did not load on the GPU (%s); using the CPU.", e.message)
        why = e.message if isinstance(e, GpuUnavailable) else f"The model did not load on the GPU ({e.message})."
        cpu = choose_kernels(folder / LLM_FILE, manifest.quant, threads=threads, status=status, device="cpu")
        cpu = replace(cpu, failures=((GPU_RUNG.name, why), *cpu.failures))
        return _load(folder, manifest, cpu, n_ctx=n_ctx, threads=threads, n_batch=n_batch, flash_attn=flash_attn,
                     tune=tune, retune=retune, status=status, vision=vision)


def _load(folder: Path, manifest: ModelManifest, kernels: KernelChoice, *, n_ctx: int, threads: int | None,
          n_batch: int | None, flash_attn: bool | None, tune: bool, retune: bool, status: StatusFn | None,
          vision: VisionChoice = CPU) -> Model:
    """The model with ``kernels``: its measured (or default) settings, then the defaults if those do not load."""
    # On a GPU llama.cpp runs attention as the canary checked it: without flash attention, the KV cache in f16.
    on_gpu = {"flash_attn": False} if kernels.device == "gpu" else {}
    settings, report = DEFAULTS, None
    if retune or (tune and tuning_enabled()):
        tuned = settings_for(folder, manifest, retune=retune, status=status, extra_bufts=kernels.extra_bufts)
        settings, report = tuned.settings, tuned.report
    overrides: dict[str, Any] = {"threads": threads, "n_batch": n_batch, "flash_attn": flash_attn, **on_gpu}
    settings = settings.with_overrides(**overrides)
    fallback = DEFAULTS.with_overrides(**overrides)
    try:
        model = Model(folder, manifest, settings=settings, n_ctx=n_ctx, kernels=kernels, vision=vision)
    except ModelFolderError as e:
        if settings == fallback:
            raise
        # A cache entry edited by hand, or a runtime update that no longer takes a measured setting: the defaults
        # are always safe, and a damaged file fails again with them and is reported as such.
        log.warning("The measured settings did not load (%s); using the defaults.", e)
        model, report = Model(folder, manifest, settings=fallback, n_ctx=n_ctx, kernels=kernels, vision=vision), None
    model.tuning_report = report
    return model


__all__ = ["Answer", "ImageRows", "Model", "Timings", "load_model"]
