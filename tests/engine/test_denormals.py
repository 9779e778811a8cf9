"""Denormal numbers are flushed to zero in Glimpse's encoder session and in every baseline it is compared with.

Intel CPUs compute denormals about 10x slower (transformers FastVLM-0.5B at 512 px on a Xeon: 10.5 s, 1.1 s with
``torch.set_flush_denormal(True)``), and seeded random weights drive activations there, so an unflushed side of a
comparison would be an artefact.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnxruntime as ort

from glimpse.engine.runner import RunnerModel
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.vision import flush_denormals, session_options

ROOT = Path(__file__).resolve().parents[2]


def test_the_vision_session_flushes_denormals_in_glimpses_own_processes() -> None:
    try:
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
            flush_denormals(False)  # the default; a tool's main() run earlier in this process may have turned it on
            assert session_options(2, level).get_session_config_entry("session.set_denormal_as_zero") == "0"
            flush_denormals()
            assert session_options(2, level).get_session_config_entry("session.set_denormal_as_zero") == "1"
            flush_denormals(False)
    finally:
        flush_denormals(False)


def test_the_runner_flushes_denormals_and_a_library_caller_keeps_its_own(tiny_model_dir: Path) -> None:
    """Subnormal arithmetic works in this process after loading a model here; the runner process flushes."""
    tiny = np.float32(1e-40)  # a float32 subnormal
    with load_model(tiny_model_dir, n_ctx=512, threads=1) as model:
        model.encode(model.preprocess(np.zeros((64, 64, 3), np.uint8), 256))
    assert tiny * np.float32(1) != 0  # FTZ/DAZ would make it 0
    with RunnerModel(tiny_model_dir, n_ctx=512, threads=1) as remote:
        assert remote.runner_stats()["denormals_flushed"] is True


def _calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.func.attr for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]


def test_every_torch_baseline_flushes_denormals() -> None:
    # Every script that sets torch's threads runs a timed baseline; each must flush denormals as well.
    scripts = [ROOT / "tests" / "oracle" / "bench_baselines.py", *sorted((ROOT / "tools").glob("*.py"))]
    checked = 0
    for path in scripts:
        calls = _calls(path)
        assert calls.count("set_flush_denormal") >= calls.count("set_num_threads"), path
        checked += calls.count("set_num_threads")
    assert checked >= 2  # the scan found bench_baselines' torch workers


def test_every_baseline_onnxruntime_session_flushes_denormals() -> None:
    text = (ROOT / "tests" / "oracle" / "bench_baselines.py").read_text(encoding="utf-8")
    assert text.count("ort.SessionOptions()") == text.count("session.set_denormal_as_zero")
