"""Benchmark: convert a random checkpoint with the full FastVLM-0.5B geometry; report time and peak memory.

    python -m tools.bench_convert [--quant q8_0] [--vision-precision auto] [--runs 1] [--workdir DIR]

The checkpoint is written once (random weights, Apple's layout, full-size vision tower and Qwen2-0.5B shapes);
each run converts it in a fresh child process, so the peak resident memory measured is the converter's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from glimpse.engine.convert.synthetic import CheckpointSpec, LlmSpec, VisionSpec, write_checkpoint

QWEN2_05B = LlmSpec(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab_rows=151936, tied=True)


def _run_measured(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, its peak RSS in MB) from wait4's rusage of that one child.

    Linux keeps ru_maxrss across exec, so the parent must stay small: a fork of a large parent would report the
    parent's memory as the child's peak. That is why the checkpoint is written by a separate process too.
    """
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[3]} failed with exit code {proc.returncode}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--vision-weights", default="fp16")
    parser.add_argument("--vision-precision", default="auto")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--write-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_checkpoint:
        write_checkpoint(args.write_checkpoint, CheckpointSpec(vision=VisionSpec(), llm=QWEN2_05B, seed=0))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="glimpse-bench-"))
    src = work / "fastvlm-0.5b-random"
    if not (src / "config.json").is_file():
        seconds, _ = _run_measured([sys.executable, "-m", "tools.bench_convert", "--write-checkpoint", str(src)])
        print(f"wrote the random checkpoint in {seconds:.1f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in src.iterdir())
    times: list[float] = []
    peaks: list[float] = []
    steps: list[dict[str, object]] = []
    for i in range(args.runs):
        out = work / f"out-{i}"
        seconds, peak = _run_measured([sys.executable, "-m", "glimpse.engine", "convert", str(src), str(out), "--quant",
                                       args.quant, "--vision-weights", args.vision_weights, "--vision-precision",
                                       args.vision_precision, "--force", "-q"])
        times.append(seconds)
        peaks.append(peak)
        vision = json.loads((out / "model.json").read_text(encoding="utf-8"))["vision"]
        gate = vision.get("int8_gate") or {}
        steps.append({"total_s": round(seconds, 1), "precision": vision.get("precision"),
                      "precision_s": vision.get("precision_seconds"), "precision_steps_s": gate.get("seconds"),
                      "reason": vision.get("precision_reason")})
    result = {
        "what": "convert full-size FastVLM-0.5B geometry (random weights)",
        "quant": args.quant,
        "vision_weights": args.vision_weights,
        "vision_precision": args.vision_precision,
        "checkpoint_gb": round(size / 1e9, 3),
        "runs": args.runs,
        "median_s": round(statistics.median(times), 2),
        "peak_rss_mb": round(statistics.median(peaks)),
        "output_mb": round(sum(p.stat().st_size for p in (work / "out-0").iterdir()) / 1e6, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "runs_detail": steps,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
