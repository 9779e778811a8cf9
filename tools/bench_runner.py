"""Benchmark: what running the model in its own process costs, and how fast it recovers from a crash.

    python -m tools.bench_runner MODEL [--sizes 512,1024] [--runs 5] [--threads N]

1. TTFT of a first question about a new picture, in this process (engine.runtime.model) and through the runner
   (engine.runner), the two loaded side by side and run alternately (which goes first alternates too), so drift of a
   shared machine falls on both. Medians per size and their ratio.
2. Moving pictures and rows over the pipe: the time to send a picture of each size and get its rows back, less the
   encoder's own time as the runner reports it (what shared memory could save at most).
3. Recovery: the runner killed by SIGSEGV as a question arrives (the injected fault ``segv@prefill#1``): from the
   question to the sentence, and to the retried answer's first token, against a cold load of the same model plus
   a normal first token.
4. Memory: this process's RSS with the runner model loaded (what the window pays) and the runner's peak RSS.

Prints one JSON object. Only ratios within one run of this command are comparable; note ``lscpu``'s flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import psutil

from glimpse.engine.runner import RunnerModel, faults
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.tuning import cpu_fingerprint
from glimpse.engine.runtime.tuning_measure import sample_image
from glimpse.engine.runtime.types import Answer, Restart
from glimpse.engine.runtime.vision import flush_denormals

QUESTION = "Describe the image in detail."


def _ttft(model: Any, size: int, seed: int) -> float:
    """Wall time from handing over the picture and the question to the first piece of the answer, as the caller sees
    it (for the runner: the pipe both ways and the client's work included)."""
    started = time.perf_counter()
    first = 0.0
    for item in model.conversation(sample_image(seed), size=size).stream(QUESTION, max_tokens=2):
        if not first:
            first = time.perf_counter()
        if isinstance(item, Answer):
            break
    return (first - started) * 1e3


def _recovery(folder: str, threads: int | None) -> dict[str, float]:
    """The first runner dies by SIGSEGV as the question arrives (before its prefill): from the question to the
    sentence, and to the retried answer's first token (one token asked for), against a cold load and a normal
    first token of the same picture."""
    os.environ[faults.ENV] = "segv@prefill#1"
    try:
        t0 = time.perf_counter()
        model = RunnerModel(folder, threads=threads)
        cold_ms = (time.perf_counter() - t0) * 1e3
        with model:
            notice = done = 0.0
            asked = time.perf_counter()
            for item in model.conversation(sample_image(9), size=512).stream(QUESTION, max_tokens=1):
                if isinstance(item, Restart):
                    notice = time.perf_counter()
                elif isinstance(item, Answer):
                    done = time.perf_counter()
            normal = _ttft(model, 512, 9)
    finally:
        os.environ.pop(faults.ENV, None)
    return {"cold_load_ms": round(cold_ms, 1), "question_to_sentence_ms": round((notice - asked) * 1e3, 1),
            "question_to_retried_first_token_ms": round((done - asked) * 1e3, 1),
            "normal_ttft_ms": round(normal, 1),
            "overhead_beyond_cold_load_and_ttft_ms": round((done - asked) * 1e3 - cold_ms - normal, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    flush_denormals()  # as the runner does, and as every baseline compared with does
    sizes = [int(s) for s in args.sizes.split(",")]

    report: dict[str, Any] = {"cpu": cpu_fingerprint(), "model": args.model, "runs": args.runs}
    rss_before = psutil.Process().memory_info().rss
    with RunnerModel(args.model, threads=args.threads) as remote:
        report["window_side_rss_mb"] = round(psutil.Process().memory_info().rss / 1e6)
        report["window_side_rss_added_mb"] = round((psutil.Process().memory_info().rss - rss_before) / 1e6)
        with load_model(args.model, threads=args.threads) as local:
            for size in sizes:  # warm-up: allocators, llama.cpp's compute buffers for this size
                _ttft(local, size, 1)
                _ttft(remote, size, 1)
            rows = []
            for size in sizes:
                times: dict[str, list[float]] = {"in_process": [], "runner": []}
                for run in range(args.runs):
                    order = [("in_process", local), ("runner", remote)]
                    for name, model in order if run % 2 == 0 else order[::-1]:
                        times[name].append(_ttft(model, size, 100 * size + run))
                pipe: list[float] = []
                for run in range(args.runs):
                    picture = (np.random.default_rng(run).random((size, size, 3)) * 255).astype(np.uint8)
                    t0 = time.perf_counter()
                    encoded = remote.encode_image(picture, size=size)
                    pipe.append((time.perf_counter() - t0) * 1e3 - encoded.encode_ms - encoded.preprocess_ms)
                medians = {k: statistics.median(v) for k, v in times.items()}
                rows.append({"size": size, "ttft_ms": {k: round(v, 1) for k, v in medians.items()},
                             "runner_over_in_process": round(medians["runner"] / medians["in_process"], 3),
                             "all_ms": {k: [round(x, 1) for x in v] for k, v in times.items()},
                             "picture_and_rows_over_the_pipe_ms": round(statistics.median(pipe), 1)})
            report["sizes"] = rows
        report["runner_peak_rss_mb"] = round(remote.runner_peak_rss_bytes() / 1e6)
    report["recovery"] = _recovery(args.model, args.threads)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
