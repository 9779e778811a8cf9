"""The benchmark commands in tools/ run end to end on the tiny model, and their fidelity figures are right where
the answer is known (no timing is asserted: speed is measured by running them, see docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glimpse.engine.convert import convert_checkpoint
from tools import bench_encoder, bench_prefill


@pytest.fixture(scope="module")
def tiny_q8(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("q8") / "tiny-q8", quant="q8_0",
                              vision_precision="fp32")


def test_bench_prefill_figures(tiny_model_dir: Path, tiny_q8: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "prefill.json"
    assert bench_prefill.main([str(tiny_model_dir), str(tiny_model_dir), str(tiny_q8), "--sizes", "256",
                               "--runs", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    reference, same, q8 = report["results"]
    assert "fidelity" not in reference and reference["sizes"]["256"]["prefill_ms"] > 0
    # The reference against itself: the harness is deterministic, so nothing moves.
    assert same["fidelity"]["mean_kl"] == 0 and same["fidelity"]["top1"] == 1.0
    assert same["fidelity"]["logits_cosine"] == pytest.approx(1.0, abs=1e-6)
    # q8_0 against f16: the answers move, a little.
    assert 0 < q8["fidelity"]["mean_kl"] <= q8["fidelity"]["worst_kl"]
    assert 0.9 < q8["fidelity"]["logits_cosine"] < 1.0
    table = capsys.readouterr().out
    assert "| tiny-q8 | 256 |" in table and "(reference)" in table


def test_bench_encoder_counts_the_graph_and_compares(tiny_model_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    graph = tiny_model_dir / "vision.onnx"
    assert bench_encoder.main([f"a={graph}", f"b={graph}", "--size", "256", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP per encode" in out and "| a |" in out and "| b |" in out
    assert bench_encoder.graph_gflop(graph, bench_encoder.np.zeros((1, 3, 256, 256), "float32"), 1) > 0
    with pytest.raises(SystemExit):
        bench_encoder.main(["no-label-here"])
