"""Benchmark: vision encoder graphs against each other and against this CPU's float32 floor.

    python -m tools.bench_encoder glimpse=MODEL/vision.onnx plain=plain_1024.onnx [--size 1024] [--rounds 6]

1. The floor: the graph's multiply-adds are counted from one profiled run of the first graph (every Conv, MatMul
   and Gemm: kernel size times output size, 2 FLOP each); onnxruntime's own SGEMM (MLAS) is timed on one MatMul of
   the shape of a stage-3 ConvFFN layer (4096 x 1536 x 384) with the same threads. Floor = FLOP / that speed.
2. The graphs: one session each (Glimpse's session options: graph level ALL, no memory pattern, no spinning), all
   made and warmed up first, then ``--rounds`` rounds alternating which graph runs first, so drift of a shared
   machine falls on all of them. Medians, every run, and each median against the floor.

Prints a Markdown table. Only the ratios within one run of this command are comparable; note ``lscpu``'s flags.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from glimpse.engine.runtime.tuning import cpu_fingerprint
from glimpse.engine.runtime.vision import flush_denormals, session_options

GEMM = (4096, 1536, 384)


def _options(threads: int, profile_dir: str | None = None) -> ort.SessionOptions:
    """Glimpse's own session options (``engine.runtime.vision.session_options``), profiled when asked."""
    o = session_options(threads)
    if profile_dir is not None:
        o.enable_profiling = True
        o.profile_file_prefix = os.path.join(profile_dir, "encoder")
    return o


def sgemm_gflops(threads: int, runs: int = 20) -> float:
    """Median GFLOP/s of one float32 MatMul of shape ``GEMM`` in onnxruntime."""
    m, k, n = GEMM
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), _options(threads), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(times) / 1e9


def graph_gflop(path: Path, pixels: np.ndarray, threads: int) -> float:
    """Multiply-add FLOP of one run of ``path``, from an onnxruntime profile's kernel shapes."""
    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(str(path), _options(threads, tmp), providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: pixels})
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    flop = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e["args"]
        ins = [next(iter(x.values())) for x in args.get("input_type_shape", [])]
        outs = [next(iter(x.values())) for x in args.get("output_type_shape", [])]
        if args.get("op_name") == "Conv" and len(ins) > 1 and outs:
            w = ins[1]
            flop += 2 * math.prod(w[1:]) * math.prod(outs[0])
        elif args.get("op_name") in ("MatMul", "FusedMatMul", "Gemm") and ins and outs:
            flop += 2 * ins[0][-1] * math.prod(outs[0])
    return flop / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", help="LABEL=PATH of each vision graph (the first one is profiled)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    args = parser.parse_args(argv)
    flush_denormals()  # as the runner does, and as every baseline compared with does
    graphs: dict[str, Path] = {}
    for item in args.graphs:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{item!r} is not LABEL=PATH of an existing file")
        graphs[label] = Path(path)
    pixels = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    gflop = graph_gflop(next(iter(graphs.values())), pixels, args.threads)
    speed = sgemm_gflops(args.threads)
    floor_ms = gflop / speed * 1e3
    sessions: dict[str, Any] = {k: ort.InferenceSession(str(p), _options(args.threads),
                                                        providers=["CPUExecutionProvider"])
                                for k, p in graphs.items()}
    for s in sessions.values():
        s.run(None, {s.get_inputs()[0].name: pixels})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(args.rounds):
        for label in (list(sessions) if r % 2 == 0 else list(sessions)[::-1]):
            s = sessions[label]
            started = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: pixels})
            times[label].append(round((time.perf_counter() - started) * 1e3))
    fp = cpu_fingerprint()
    print(f"CPU: {fp['cpu']} ({fp['class']}), {args.threads} threads; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.size} px: {gflop:.1f} GFLOP per encode; MLAS SGEMM {speed:.1f} GFLOP/s; floor {floor_ms:.0f} ms")
    print("| graph | median ms | runs (ms) | against the floor |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        median = statistics.median(ts)
        print(f"| {label} | {median:.0f} | {', '.join(str(int(t)) for t in ts)} | {median / floor_ms:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
