"""Time llama.cpp alone (prefill of image rows, then decode) with whichever llama-cpp-python this Python has.

    python -m tools.bench_llama MODEL/llm.gguf --rows 256 --decode 64 --runs 5

Run it once from a venv with the native build and once from one with the portable build
(packaging/build-llama-wheel.sh), alternating, to see what runtime CPU dispatch costs. Prints one JSON line:
medians over the runs after the first (a warm-up), the spread, and which CPU kernels were loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from glimpse.engine.cli.selftest import cpu_kernels
from glimpse.engine.runtime.llm import LanguageModel


def one_run(lm: LanguageModel, rows: np.ndarray, decode: int) -> tuple[float, float]:
    """(prefill ms for the rows, decode tokens per second) for one fresh conversation, greedy."""
    lm.rewind(0)
    started = time.perf_counter()
    lm.eval_embeddings(rows)
    prefill_ms = (time.perf_counter() - started) * 1e3
    token = int(np.argmax(lm.logits()))
    started = time.perf_counter()
    for _ in range(decode):
        lm.eval_tokens([token])
        token = int(np.argmax(lm.logits()))
    return prefill_ms, decode / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--rows", type=int, default=256, help="image rows to prefill (256 = a 1024 px image)")
    parser.add_argument("--decode", type=int, default=64, help="tokens to decode after the prefill")
    parser.add_argument("--runs", type=int, default=5, help="runs, the first of which is a warm-up")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    with LanguageModel(args.gguf, n_ctx=args.rows + args.decode + 16, n_threads=args.threads) as lm:
        rows = (np.random.default_rng(0).standard_normal((args.rows, lm.n_embd)) * 0.02).astype(np.float32)
        results = [one_run(lm, rows, args.decode) for _ in range(args.runs)][1:]
    prefill = [r[0] for r in results]
    decode = [r[1] for r in results]
    print(json.dumps({
        "label": args.label, "kernels": cpu_kernels(), "model": args.gguf.parent.name, "rows": args.rows,
        "prefill_ms": round(statistics.median(prefill), 1), "prefill_ms_range": [round(min(prefill), 1),
                                                                                 round(max(prefill), 1)],
        "decode_tok_s": round(statistics.median(decode), 1), "decode_range": [round(min(decode), 1),
                                                                              round(max(decode), 1)],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
