"""``glimpse _vision_canary``: the throwaway process that proves an onnxruntime execution provider for a model's
vision encoder (engine/runtime/vision_providers.py starts it, one per provider).

It encodes up to ``MAX_VIEWS`` held-out pictures at the model's input size with the model's own ``vision.onnx``,
once on the CPU and once on the provider, then runs the answer-level gate (engine/convert/answer_gate.py) with the
CPU's rows as the reference: the model's language half answers each picture from the CPU's rows, and the provider's
rows must give the same next-token distributions (mean and worst KL, top-1 agreement) and the same rows (centred
cosine), with the thresholds an int8 encoder meets at conversion. Rows that already miss the cosine skip the
language model. It prints one JSON line; exit status 0 when the provider passed, 1 when not; a crash ends it by
its signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.engine.convert.answer_gate import (
    GateThresholds,
    GateView,
    centred_cosine,
    compare,
    gate_views,
    reference_answers,
)
from glimpse.engine.convert.vision_int8 import heldout_images
from glimpse.engine.models.model_folder import LLM_FILE, VISION_FILE, read_manifest
from glimpse.engine.runtime.canary import FAULT_MODES, choose_kernels
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.types import F32Array
from glimpse.engine.runtime.vision import VisionEncoder, flush_denormals
from glimpse.engine.runtime.vision_providers import MAX_VIEWS, device_name, spec_for
from glimpse.engine.system import die_with_parent


def pick_views(size: int) -> list[GateView]:
    """Up to ``MAX_VIEWS`` held-out pictures large enough for ``size``: a screenshot or document first (text is
    where small row errors change answers), then photographs."""
    views = gate_views(heldout_images(), [size])
    text = [v for v in views if v.image.name.split("_")[0] in ("screen", "doc")]
    rest = [v for v in views if v not in text]
    return (text[:1] + rest + text[1:])[:MAX_VIEWS]


def _encode(encoder: VisionEncoder, pixels: dict[str, F32Array]) -> tuple[dict[str, F32Array], float]:
    rows, times = {}, []
    for key, px in pixels.items():
        t = time.perf_counter()
        rows[key] = encoder.encode(px)
        times.append((time.perf_counter() - t) * 1e3)
    return rows, statistics.median(times)


def run_check(folder: Path, provider: str, options: dict[str, str], *, threads: int,
              fault: str | None = None) -> dict[str, Any]:
    """Prove ``provider`` for the model in ``folder``: the report (``ok`` True when it passed)."""
    spec = spec_for(provider)
    manifest = read_manifest(folder)
    views = pick_views(manifest.image_size)
    if not views:
        return {"ok": False, "reason": f"no held-out picture is large enough for {manifest.image_size} px"}
    pixels = {v.key: preprocess(v.image, v.size) for v in views}
    t0 = time.perf_counter()
    cpu = VisionEncoder(folder / VISION_FILE, threads=threads)
    on = VisionEncoder(folder / VISION_FILE, threads=threads, provider=provider, provider_options=options,
                       label=spec.label)
    t1 = time.perf_counter()
    report: dict[str, Any] = {"provider": provider, "options": options, "views": [v.key for v in views],
                              "session_s": round(t1 - t0, 3)}
    if on.provider != provider:
        return {**report, "ok": False, "reason": on.fallback.split(", so the vision encoder")[0]}
    report["device"] = device_name(provider, options)
    gpu_rows, report["provider_ms"] = _encode(on, pixels)
    if fault in ("crash", "illegal"):
        os.kill(os.getpid(), signal.SIGSEGV if fault == "crash" else signal.SIGILL)
    if fault == "hang":
        while True:
            time.sleep(60)
    if on.provider != provider:  # it failed while encoding and handed over to the CPU
        return {**report, "ok": False, "reason": on.fallback.split(", so the vision encoder")[0]}
    cpu_rows, report["cpu_ms"] = _encode(cpu, pixels)
    if fault == "wrong":  # rows off by half their own spread: what a miscompiled kernel looks like
        rng = np.random.default_rng(0)
        gpu_rows = {k: (r + 0.5 * r.std() * rng.standard_normal(r.shape)).astype(np.float32)
                    for k, r in gpu_rows.items()}
    thresholds = GateThresholds()
    cosines = {k: centred_cosine(cpu_rows[k], gpu_rows[k]) for k in cpu_rows}
    worst = min(cosines, key=lambda k: cosines[k])
    report["centred_cosine"] = round(cosines[worst], 6)
    if not cosines[worst] >= thresholds.min_centred_cosine:
        return {**report, "ok": False,
                "reason": f"its image rows differ from the CPU's: centred cosine {cosines[worst]:.4f} < "
                          f"{thresholds.min_centred_cosine} ({worst})"}
    llm_path = folder / LLM_FILE
    kernels = choose_kernels(llm_path, manifest.quant, threads=threads)
    longest = max(r.shape[0] for r in cpu_rows.values())
    with LanguageModel(llm_path, n_ctx=longest + 256, n_threads=threads, n_threads_batch=threads,
                       extra_bufts=kernels.extra_bufts, cpu_variant=kernels.variant) as llm:
        references = reference_answers(llm, cpu_rows, views)
        figures = compare(llm, references, gpu_rows, views, thresholds)
    report["gate"] = figures.to_json()
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if not figures.passed:
        return {**report, "ok": False, "reason": f"its answers differ from the CPU's: {'; '.join(figures.failed)}"}
    return {**report, "ok": True, "summary": figures.summary()}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="glimpse _vision_canary", description="vision provider check (internal)")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fault", choices=FAULT_MODES, default=None)
    args = parser.parse_args(list(argv))
    die_with_parent()  # a hung kernel or driver ends with whatever started the check
    print(f"glimpse _vision_canary: checking {args.provider} for {args.model}", file=sys.stderr, flush=True)
    flush_denormals()  # as in the model's runner, whose arithmetic this check stands for
    try:
        options = json.loads(args.options)
        if not isinstance(options, dict):
            raise ValueError("provider options must be a JSON object")
        report = run_check(args.model, args.provider, {str(k): str(v) for k, v in options.items()},
                           threads=max(1, args.threads), fault=args.fault)
    except Exception as e:  # reported to the parent as the reason this provider failed
        report = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1
