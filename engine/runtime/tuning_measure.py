"""The short measurement behind ``engine.runtime.tuning``: each CPU-dependent choice timed on the model itself.

Bounds: a fixed number of runs, nothing repeated until it settles. On FastVLM-0.5B that is 6 encodes at 512 px
and at most 17 prefills of 256 rows, 40-60 s on a quiet 2-core AVX2 machine (docs/benchmarks.md; a version with
10 prefills timed one after the other took 643 s while other work held the load average at 15-20). Order:

1. encoder: onnxruntime's graph levels (and thread counts where the CPU has hyper-threads) on one picture at
   ``PROBE_SIZE`` px;
2. language model: the image rows of that picture, repeated to ``PROBE_ROWS`` (the rows of a 1024 px image), plus
   a short prompt, prefilled with flash attention off/on, then the n_ubatch candidates, then a q8_0 KV cache;
3. decode threads: tokens generated one at a time with each thread count in the winning context.

Each candidate races the current choice: both are loaded and warmed up, then run alternately (A B, B A), and each
gets the best of its ``RUNS`` times, so load from other work that comes and goes falls on both.

A candidate replaces the current choice only when it is ``MARGIN`` faster (noise on a shared machine must not flip
a choice) and only when it computes the same thing: image rows within cosine ``ROWS_COSINE`` of the default graph's,
and final logits within cosine ``LOGITS_COSINE`` of the default context's with the same top token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from glimpse.engine.errors import ModelFolderError
from glimpse.engine.models.model_folder import LLM_FILE, VISION_FILE, ModelManifest
from glimpse.engine.runtime import tuning
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.tuning import DEFAULTS, VISION_LEVELS, RuntimeSettings, StatusFn, load_average
from glimpse.engine.runtime.vision import VisionEncoder
from glimpse.engine.system import default_threads

PROBE_SIZE = 512
PROBE_ROWS = 256
RUNS = 2
DECODE_TOKENS = 6
MARGIN = 0.03
# Float graphs differ between layouts only in summation order (cosine 1 - 1e-7); an int8 graph's quantize/dequantize
# pairs fuse into other int8 kernels per layout, moving a rounding step here and there (cosine 0.99997 measured on
# the test model), 100x inside the 0.995 the int8 graph itself is allowed against float32 (convert/vision_int8.py).
ROWS_COSINE = 0.9999
LOGITS_COSINE = 0.9999
UBATCH_CANDIDATES = (256, 128)
PROMPT = "<|im_start|>user\nDescribe the image in detail.<|im_end|>\n<|im_start|>assistant\n"

F32Array = npt.NDArray[np.float32]


def cosine(a: F32Array, b: F32Array) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64 / denom) if denom > 0 else (1.0 if not a64.any() and not b64.any() else 0.0)


def same_logits(reference: F32Array, candidate: F32Array) -> tuple[bool, float]:
    """(whether ``candidate`` keeps the answer: same top token and cosine at least LOGITS_COSINE, the cosine)."""
    cos = cosine(reference, candidate)
    return bool(cos >= LOGITS_COSINE and int(np.argmax(reference)) == int(np.argmax(candidate))), round(cos, 7)


def faster(candidate_ms: float, best_ms: float) -> bool:
    return candidate_ms <= best_ms * (1.0 - MARGIN)


def _best_of(fn: Callable[[], object], runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(min(times), 1)


def race(current: Callable[[], object], candidate: Callable[[], object], runs: int = RUNS) -> tuple[float, float]:
    """Best-of times of the current choice and a candidate, run alternately (A B, then B A): load from other work
    that comes and goes during the measurement falls on both, not on whichever ran in a busy second."""
    times: tuple[list[float], list[float]] = ([], [])
    for r in range(runs):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (current, candidate)[i]()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return round(min(times[0]), 1), round(min(times[1]), 1)


def _thread_candidates(physical: int, logical: int) -> list[int]:
    return [physical] + ([logical] if logical > physical else [])


class _Steps:
    def __init__(self, status: StatusFn | None, total: int) -> None:
        self.status, self.done, self.total = status, 0, total

    def __call__(self, text: str) -> None:
        if self.status is not None:
            self.status(text, self.done, self.total)
        self.done += 1


def _probe_pixels(manifest: ModelManifest) -> F32Array:

    return preprocess(sample_image(7), min(PROBE_SIZE, manifest.image_size))


def measure_vision(path: Path, pixels: F32Array, threads: list[int], step: _Steps) -> tuple[dict[str, Any], F32Array]:

    report: dict[str, Any] = {"size": int(pixels.shape[-1]), "candidates": []}
    candidates = [(level, n) for level in VISION_LEVELS for n in threads]
    step(f"Measuring the image encoder ({candidates[0][0]}, {candidates[0][1]} threads)")
    best = VisionEncoder(path, threads=candidates[0][1], cache=False, level=candidates[0][0])
    try:
        reference = best.encode(pixels)  # also the warm-up: first-run allocations and kernel selection
        best_key, best_ms = candidates[0], _best_of(partial(best.encode, pixels)) if len(candidates) == 1 else 0.0
        first = {"level": best_key[0], "threads": best_key[1], "ms": best_ms, "cosine": 1.0, "kept_rows": True}
        report["candidates"].append(first)
        for level, n in candidates[1:]:
            step(f"Measuring the image encoder ({level}, {n} threads)")
            enc = VisionEncoder(path, threads=n, cache=False, level=level)
            rows = enc.encode(pixels)
            current_ms, ms = race(partial(best.encode, pixels), partial(enc.encode, pixels))
            first["ms"] = first["ms"] or current_ms
            cos = round(cosine(reference, rows), 7)
            ok = cos >= ROWS_COSINE
            report["candidates"].append({"level": level, "threads": n, "ms": ms, "cosine": cos, "kept_rows": ok,
                                         "current_ms": current_ms})
            if ok and faster(ms, current_ms):
                best.close()
                best, best_key, best_ms = enc, (level, n), ms
            else:
                enc.close()
                best_ms = current_ms
    finally:
        best.close()
    report["chosen"] = {"level": best_key[0], "threads": best_key[1], "ms": best_ms}
    return report, reference


class _Context:
    """A llama.cpp context for one candidate and its prefill of the probe."""

    def __init__(self, path: Path, s: RuntimeSettings, rows: F32Array, extra_bufts: bool = True) -> None:

        self.lm = LanguageModel(path, n_ctx=rows.shape[0] + 256, n_threads=s.threads,
                                n_threads_batch=s.threads_batch, n_batch=s.n_batch, n_ubatch=s.n_ubatch,
                                flash_attn=s.flash_attn, kv_type=s.kv_type, extra_bufts=extra_bufts)
        try:
            self.rows = rows
            self.prompt = self.lm.tokenize(PROMPT, special=True)
            self.lm.eval_embeddings(rows[:1], marker=-1)  # llama.cpp sizes its buffers on the first decode
            self.lm.rewind(0)
        except BaseException:
            self.lm.close()
            raise

    def prefill(self) -> None:
        self.lm.rewind(0)
        self.lm.eval_embeddings(self.rows, marker=-1)
        self.lm.eval_tokens(self.prompt)

    def logits(self) -> F32Array:
        return self.lm.logits()

    def close(self) -> None:
        self.lm.close()


def _decode_ms(lm: Any, threads: int, batch: int, token: int) -> float:
    lm.set_threads(threads, batch)
    base = lm.n_past
    times = []
    for _ in range(DECODE_TOKENS):
        t0 = time.perf_counter()
        lm.eval_tokens([token])
        times.append((time.perf_counter() - t0) * 1e3)
        token = int(np.argmax(lm.logits()))
    lm.rewind(base)
    return round(float(np.median(times)), 2)


def measure_llm(path: Path, rows: F32Array, cores: int, step: _Steps, extra_bufts: bool = True
                ) -> tuple[dict[str, Any], RuntimeSettings]:
    report: dict[str, Any] = {"rows": int(rows.shape[0]), "candidates": []}
    best = replace(DEFAULTS, threads=cores, threads_batch=cores)
    step("Measuring the language model (defaults)")
    current = _Context(path, best, rows, extra_bufts)
    first: dict[str, Any] = {**_llm_fields(best), "ms": 0.0, "cosine": 1.0, "same_answer": True}
    report["candidates"].append(first)
    best_ms = 0.0

    def consider(candidate: RuntimeSettings, label: str) -> None:
        nonlocal best, best_ms, current
        step(f"Measuring the language model ({label})")
        try:
            ctx = _Context(path, candidate, rows, extra_bufts)
        except ModelFolderError as e:  # e.g. a q8_0 KV cache needs a head width divisible by 32
            report["candidates"].append({**_llm_fields(candidate), "unavailable": e.message})
            return
        current_ms, ms = race(current.prefill, ctx.prefill)
        first["ms"] = first["ms"] or current_ms
        keeps, cos = same_logits(reference, ctx.logits())
        report["candidates"].append({**_llm_fields(candidate), "ms": ms, "cosine": cos, "same_answer": keeps,
                                     "current_ms": current_ms})
        if keeps and faster(ms, current_ms):
            current.close()
            best, best_ms, current = candidate, ms, ctx
        else:
            ctx.close()
            best_ms = current_ms

    try:
        current.prefill()  # the warm-up, and the logits every candidate must keep
        reference = current.logits()
        consider(replace(best, flash_attn=True), "flash attention")
        for ub in UBATCH_CANDIDATES:
            consider(replace(best, n_ubatch=ub), f"n_ubatch {ub}")
        if best.flash_attn:
            consider(replace(best, kv_type="q8_0"), "q8_0 KV cache")
        report["chosen"] = {**_llm_fields(best), "ms": best_ms}
        decode: dict[int, float] = {}
        token = int(np.argmax(current.logits()))
        for n in sorted({cores, max(1, cores - 1)}, reverse=True):
            step(f"Measuring generation with {n} threads")
            decode[n] = _decode_ms(current.lm, n, best.threads_batch, token)
        chosen = cores
        for n, ms in decode.items():
            if faster(ms, decode[chosen]):
                chosen = n
        report["decode_ms_per_token"] = {str(n): ms for n, ms in decode.items()}
        best = replace(best, threads=chosen)
    finally:
        current.close()
    return report, best


def _llm_fields(s: RuntimeSettings) -> dict[str, Any]:
    return {"n_ubatch": s.n_ubatch, "flash_attn": s.flash_attn, "kv_type": s.kv_type}


def measure(folder: Path, manifest: ModelManifest, *, status: StatusFn | None = None, extra_bufts: bool = True
            ) -> tuple[RuntimeSettings, dict[str, Any]]:
    """Measure every choice for the model in ``folder``; returns the settings and a report of what was timed."""


    started = time.perf_counter()
    load_before = load_average()
    cores = default_threads()
    threads = _thread_candidates(cores, psutil.cpu_count(logical=True) or cores)
    steps = _Steps(status, len(VISION_LEVELS) * len(threads) + 2 + len(UBATCH_CANDIDATES) + 1 + 2)
    vision, rows = measure_vision(folder / VISION_FILE, _probe_pixels(manifest), threads, steps)
    repeat = -(-PROBE_ROWS // rows.shape[0])
    llm, settings = measure_llm(folder / LLM_FILE, np.ascontiguousarray(np.tile(rows, (repeat, 1))[:PROBE_ROWS]),
                                cores, steps, extra_bufts)
    settings = replace(settings, vision_level=vision["chosen"]["level"], vision_threads=vision["chosen"]["threads"])
    if status is not None:
        status("Measured", steps.total, steps.total)
    return settings, {"vision": vision, "llm": llm, "seconds": round(time.perf_counter() - started, 1),
                      "load_average": [load_before, load_average()], "logical_cpus": psutil.cpu_count() or 1}


def sample_image(seed: int, width: int = 1280, height: int = 960) -> npt.NDArray[np.uint8]:
    """A deterministic image with smooth gradients, blobs and edges (closer to a photo than noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(0.002, 0.02, 2).tolist()
        phase = rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(fx * x + phase) * np.cos(fy * y)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 200)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[mask] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def settings_for(folder: Path, manifest: ModelManifest, *, retune: bool = False,
                 status: tuning.StatusFn | None = None, extra_bufts: bool = True) -> tuning.Tuned:
    """The settings for this model on this CPU: cached if measured before (and ``retune`` is off), else measured now
    and cached. ``status(text, done, total)`` is told about each measuring step; ``extra_bufts`` is the kernel
    canary's choice (engine/runtime/canary.py), so the measurement runs the kernels the model will."""
    fingerprint = tuning.cpu_fingerprint()
    key = tuning.model_key(manifest)
    if not retune:
        cached = tuning.read_cached(key, fingerprint)
        # Choices measured on a busy CPU are kept until a start finds it quiet, which measures them again.
        quiet = tuning.load_average() <= (os.cpu_count() or 1)
        if cached is not None and not (tuning.measured_while_busy(cached.report) and quiet):
            return cached
    settings, report = measure(folder, manifest, status=status, extra_bufts=extra_bufts)
    tuned = tuning.Tuned(settings, report, fingerprint, measured_now=True)
    tuning.write_cached(key, tuned)
    return tuned
