"""``glimpse _canary``: the kernel canary's throwaway process (engine/runtime/canary.py starts it, one per rung).

It builds a tiny Qwen2 GGUF of the asked weight type once (the project's own converter, from a seeded random
checkpoint; cached in ``<cache>/kernels/``), loads it with the asked kernel configuration, evaluates a 48-token prompt
in one batch and then one more token, compares every position's logits with the float64 numpy reference, and prints
one JSON line. Exit status 0 when the numbers agree, 1 when they do not; a crash ends it by its signal.

The geometry reaches the kernels a real model uses: every matrix dimension a multiple of 256 (k-quants' blocks) and
of 32 rows (AMX's tiles), 48 rows per multiply in the prompt (AMX / repacked GEMM) and 1 in the decode (the
vector-dot path).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.llm_gguf import QUANTS, write_llm_gguf
from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, VisionSpec, write_checkpoint
from glimpse.engine.runtime.canary import FAULT_MODES, cache_folder, logit_error, reference_logits, tolerance
from glimpse.engine.runtime.cpu_backends import load_cpu_backends
from glimpse.engine.runtime.gpu_backends import GpuUnavailable, load_gpu_backend, vulkan_drivers
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.system import die_with_parent

MODEL_VERSION = 1  # bump when the spec below changes: cached canary models are named by it
SPEC = CheckpointSpec(vision=VisionSpec.tiny(), seed=20261206,
                      llm=LlmSpec(hidden=256, layers=2, heads=4, kv_heads=2, ffn=512, tied=True, merges=300))
PROMPT_TOKENS = 48


def canary_model(weight_type: str, folder: Path | None = None) -> Path:
    """The canary's GGUF for ``weight_type``, written once (atomically: canaries may run side by side)."""
    if weight_type not in QUANTS:
        raise ValueError(f"unknown weight type {weight_type!r}: one of {', '.join(QUANTS)}")
    folder = folder or cache_folder() / "models"
    path = folder / f"canary-v{MODEL_VERSION}-{weight_type}.gguf"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="glimpse-canary-", dir=folder) as tmp:
        ckpt = Checkpoint(write_checkpoint(Path(tmp) / "checkpoint", SPEC))
        partial = Path(tmp) / path.name
        write_llm_gguf(ckpt, LlmGeometry.from_checkpoint(ckpt), partial, quant=weight_type, name="Glimpse canary")
        os.replace(partial, path)
    return path


def prompt_ids(n_vocab: int, n: int = PROMPT_TOKENS) -> list[int]:
    """A fixed pseudo-random prompt over the ordinary tokens (the three special ones at the end stay out)."""
    return [int(i) for i in np.random.default_rng(7).integers(0, n_vocab - 64, n)]


def run_canary(weight_type: str, *, extra_bufts: bool, variant: str | None, threads: int,
               fault: str | None = None, model_folder: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the canary model and compare with the reference; the JSON report (``ok``, ``error``, ...).

    ``device`` "gpu": llama.cpp's Vulkan backend with every layer on its first device. A GPU that is not there (no
    backend, no loader, no device) is a report with ``unavailable`` and the sentence that says why."""
    t0 = time.perf_counter()
    path = canary_model(weight_type, model_folder)
    t1 = time.perf_counter()
    backends = load_cpu_backends(variant=variant)
    gpu: dict[str, Any] = {}
    if device == "gpu":
        try:
            backend = load_gpu_backend()
        except GpuUnavailable as e:
            return {"ok": False, "unavailable": True, "reason": e.message, "hint": e.hint, "weight_type": weight_type}
        first = backend.devices[0]
        gpu = {"gpu": first.description, "gpu_device": first.name, "gpu_kind": first.kind,
               "driver": vulkan_drivers().get(first.description, ""), "gpu_memory_total": first.memory_total}
    with LanguageModel(path, n_ctx=128, n_batch=64, n_threads=threads, extra_bufts=extra_bufts,
                       cpu_variant=variant, gpu_layers=-1 if device == "gpu" else 0) as lm:
        ids = prompt_ids(lm.n_vocab)
        if fault in ("crash", "illegal"):
            os.kill(os.getpid(), signal.SIGSEGV if fault == "crash" else signal.SIGILL)
        if fault == "hang":
            while True:
                time.sleep(3600)
        t2 = time.perf_counter()
        prompt = lm.eval_tokens_with_logits(ids)  # one batch of 48 rows: AMX tiles / repacked GEMM
        t3 = time.perf_counter()
        last = lm.eval_tokens_with_logits([ids[0]])  # one row: the vector-dot path
        t4 = time.perf_counter()
        lm_layers = lm.gpu_layers
    got = np.concatenate([prompt, last]).astype(np.float64)
    if fault == "wrong":
        got += np.random.default_rng(0).standard_normal(got.shape) * got.std()
    ref = reference_logits(path, [*ids, ids[0]])
    error = logit_error(got, ref)
    limit = tolerance(weight_type)
    ok = error <= limit
    report: dict[str, Any] = {
        "ok": ok, "error": round(error, 6), "tolerance": limit, "weight_type": weight_type,
        "extra_bufts": extra_bufts, "variant": backends.loaded if backends is not None else None, **gpu,
        "gpu_layers": lm_layers,
        "prompt_tokens": len(ids), "build_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3),
        "prefill_ms": round((t3 - t2) * 1e3, 1), "decode_ms": round((t4 - t3) * 1e3, 1),
        "seconds": round(time.perf_counter() - t0, 3)}
    if not ok:
        report["reason"] = (f"wrong numbers: logits differ from the reference by {error:.3g} (relative), more than "
                            f"the {limit} allowed")
    return report


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="glimpse _canary", description="llama.cpp kernel canary (internal)")
    parser.add_argument("--weight-type", required=True, choices=QUANTS)
    parser.add_argument("--extra-bufts", choices=("0", "1"), default="1")
    parser.add_argument("--variant", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fault", choices=FAULT_MODES, default=None)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(list(argv))
    die_with_parent()  # a hung kernel or driver ends with whatever started the check
    try:
        report = run_canary(args.weight_type, extra_bufts=args.extra_bufts == "1", variant=args.variant,
                            threads=max(1, args.threads), fault=args.fault, device=args.device)
    except Exception as e:  # reported to the parent as the reason this rung failed
        report = {"ok": False, "reason": f"{type(e).__name__}: {e}"}
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1
