"""Benchmark: convert a random checkpoint with the full FastVLM-0.5B geometry; report time and peak memory.

    python -m engine.bench_convert [--quant q8_0] [--runs 1] [--workdir DIR]

The checkpoint is written once (random weights, Apple's layout, full-size vision tower and Qwen2-0.5B shapes);
each run converts it in a fresh child process, so the peak resident memory measured is the converter's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.synthetic import CheckpointSpec, LlmSpec, VisionSpec, write_checkpoint

QWEN2_05B = LlmSpec(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab_rows=151936, tied=True)


def _child_peak_rss_mb() -> float:
    # ru_maxrss of RUSAGE_CHILDREN is the largest peak among waited-for children (KiB on Linux).
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--vision-weights", default="fp16")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="glimpse-bench-"))
    src = work / "fastvlm-0.5b-random"
    if not (src / "config.json").is_file():
        t = time.perf_counter()
        write_checkpoint(src, CheckpointSpec(vision=VisionSpec(), llm=QWEN2_05B, seed=0))
        print(f"wrote the random checkpoint in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in src.iterdir())
    times: list[float] = []
    for i in range(args.runs):
        out = work / f"out-{i}"
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine", "convert", str(src), str(out), "--quant", args.quant,
                        "--vision-weights", args.vision_weights, "--force", "-q"], check=True)
        times.append(time.perf_counter() - t)
    result = {
        "what": "convert full-size FastVLM-0.5B geometry (random weights)",
        "quant": args.quant,
        "vision_weights": args.vision_weights,
        "checkpoint_gb": round(size / 1e9, 3),
        "runs": args.runs,
        "median_s": round(statistics.median(times), 2),
        "peak_rss_mb": round(_child_peak_rss_mb()),
        "output_mb": round(sum(p.stat().st_size for p in (work / "out-0").iterdir()) / 1e6, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
