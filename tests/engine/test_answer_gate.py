"""The answer-level int8 gate and the precision the converter chooses: the figures against independent
computations, a good int8 graph passing, damaged ones (one scale off by 4x, one stage clipped) failing, mixed
precision, and the converter's and CLI's records. The tiny tower and a tiny language model keep it quick."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

import glimpse.engine.convert.answer_gate as ag
import glimpse.engine.convert.vision_int8 as vi
import glimpse.engine.convert.vision_precision as vp
from glimpse.engine import cli
from glimpse.engine.cli.selftest import SelfTestReport, run_engine_selftest
from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.synthetic import CheckpointSpec, VisionSpec, write_checkpoint
from glimpse.engine.errors import Cancelled, ConversionError
from glimpse.engine.models.model_folder import read_manifest, sha256_file, verify
from glimpse.engine.models.store import Store
from glimpse.engine.progress import Progress, Reporter
from glimpse.engine.runtime.llm import LanguageModel
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.vision import VisionEncoder

SIZE = 256


@pytest.fixture(autouse=True)
def _small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vi, "GATE_SIZES", (SIZE,))
    monkeypatch.setattr(vi, "CALIBRATION_SIZES", (SIZE,))


@pytest.fixture(scope="module")
def seeing_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose answers depend on the picture (the plain tiny tower's rows barely do, see
    ``VisionSpec.weight_gain``), converted in float32. Treat it as read-only."""
    spec = CheckpointSpec(vision=dataclasses.replace(VisionSpec.tiny(), weight_gain=1.35))
    ckpt = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "seeing", spec)
    return convert_checkpoint(ckpt, tmp_path_factory.mktemp("gate") / "seeing", quant="f16",
                              vision_precision="fp32")


@pytest.fixture(scope="module")
def float_graph(seeing_model: Path) -> Path:
    return seeing_model / "vision.onnx"


@pytest.fixture(scope="module")
def llm_path(seeing_model: Path) -> Path:
    return seeing_model / "llm.gguf"


@pytest.fixture(scope="module")
def ranges(float_graph: Path) -> vi.Ranges:
    return vi.calibrate(float_graph, vi._views(vi.calibration_images(), (SIZE,)))


@pytest.fixture(scope="module")
def good_int8(float_graph: Path, ranges: vi.Ranges) -> Path:
    out = float_graph.parent.parent / "good_int8.onnx"
    vi.write_int8(float_graph, out, ranges)
    return out


@pytest.fixture(scope="module")
def gate(float_graph: Path, llm_path: Path) -> Any:
    views = ag.gate_views(vi.heldout_images(), (SIZE,))
    with ag.AnswerGate(float_graph, llm_path, views) as g:
        yield g


# -- the figures, against independent computations ----------------------------------------------------------------

def test_kl_and_log_softmax_match_a_plain_python_reference() -> None:
    rng = np.random.default_rng(1)
    p_logits, q_logits = rng.standard_normal((3, 50)) * 4, rng.standard_normal((3, 50)) * 4
    p_log, q_log = ag.log_softmax(p_logits), ag.log_softmax(q_logits)
    for row in range(3):
        zp = sum(math.exp(v) for v in p_logits[row])
        zq = sum(math.exp(v) for v in q_logits[row])
        p = [math.exp(v) / zp for v in p_logits[row]]
        q = [math.exp(v) / zq for v in q_logits[row]]
        expected = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
        assert ag.kl_divergence(p_log, q_log)[row] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert np.exp(p_log[row]) == pytest.approx(p, rel=1e-9)
    assert np.allclose(ag.kl_divergence(p_log, p_log), 0.0, atol=1e-12)
    big = ag.log_softmax(np.array([[1e4, 0.0, -1e4]]))  # no overflow
    assert np.isfinite(big).all() and big[0, 0] == pytest.approx(0.0, abs=1e-12)


def test_centred_cosine_ignores_a_shared_bias_that_a_plain_cosine_does_not() -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((16, 8)).astype(np.float32)
    noisy = rows + 0.5 * rng.standard_normal((16, 8)).astype(np.float32)
    bias = np.full((1, 8), 50.0, dtype=np.float32)
    centred = ag.centred_cosine(rows + bias, noisy + bias)
    # Reference: numpy's correlation of the flattened deviations from the reference's column means.
    mean = (rows + bias).mean(axis=0)
    a, b = (rows + bias - mean).ravel(), (noisy + bias - mean).ravel()
    assert centred == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), rel=1e-6)
    plain = vi.cosines(rows + bias, noisy + bias)[0]
    assert plain > 0.999 and centred < 0.95  # the bias hides the noise from the plain cosine only
    assert ag.centred_cosine(rows, rows) == pytest.approx(1.0)
    assert ag.centred_cosine(rows, np.full_like(rows, np.nan)) == -1.0
    assert ag.centred_cosine(rows, rows[:4]) == -1.0


def test_views_are_only_taken_at_sizes_the_pictures_support(tmp_path: Path) -> None:

    small, big = tmp_path / "small.png", tmp_path / "screen_big.png"
    Image.new("RGB", (400, 300), "white").save(small)
    Image.new("RGB", (1280, 800), "white").save(big)
    views = ag.gate_views([small, big], (512, 1024))
    assert [v.key for v in views] == ["small.png@512", "screen_big.png@512", "screen_big.png@1024"]
    assert views[0].question == ag.PHOTO_QUESTION and views[1].question == ag.TEXT_QUESTION
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(ConversionError, match=r"broken\.png"):
        ag.gate_views([tmp_path / "broken.png"], (512,))


def test_shipped_heldout_views_include_native_1024_screens_and_documents() -> None:
    views = ag.gate_views(vi.heldout_images(), (512, 1024))
    at_1024 = [v for v in views if v.size == 1024]
    assert at_1024 and all(ag.native_side(v.image) >= 0.75 * 1024 for v in at_1024)
    assert len([v for v in views if v.size == 512]) == len(vi.heldout_images())


def test_batched_teacher_forcing_matches_token_by_token(llm_path: Path) -> None:

    with LanguageModel(llm_path, n_ctx=256, n_batch=64) as llm:
        prompt = llm.tokenize("<|im_start|>user\nWhat is this?<|im_end|>\n<|im_start|>assistant\n")
        answer = llm.tokenize("A small grey cat on a chair")
        llm.eval_tokens(prompt)
        sequential = []
        for token in answer:
            llm.eval_tokens([token])
            sequential.append(llm.logits())
        history = llm.history
        llm.rewind(len(prompt))
        batched = llm.eval_tokens_with_logits(answer)
        assert batched.shape == (len(answer), llm.n_vocab) and llm.history == history
        ref = np.stack(sequential)
        np.testing.assert_allclose(batched, ref, rtol=0, atol=1e-3 * float(np.abs(ref).max()))
        np.testing.assert_array_equal(llm.logits(), batched[-1])
        with pytest.raises(ValueError, match="At most 64"):
            llm.eval_tokens_with_logits([answer[0]] * 65)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            llm.eval_tokens_with_logits([llm.n_vocab])
        assert llm.eval_tokens_with_logits([]).shape == (0, llm.n_vocab)


# -- the gate on the tiny model -------------------------------------------------------------------------------------

def _copy_with_initializer(src: Path, dst: Path, consumer: onnx.NodeProto | None, old: str,
                           value: np.ndarray[Any, Any], consumers: list[onnx.NodeProto] | None = None) -> Path:
    model = onnx.load(str(src))
    new = f"{old}_damaged"
    model.graph.initializer.append(numpy_helper.from_array(value, new))
    targets = consumers if consumers is not None else [consumer]
    names = {n.name for n in targets if n is not None}
    for node in model.graph.node:
        if node.name in names:
            for i, x in enumerate(node.input):
                if x == old:
                    node.input[i] = new
    onnx.save(model, str(dst))
    return dst


def scale_off(int8: Path, dst: Path, factor: float = 4.0) -> Path:
    """One weight's per-channel dequantization scale multiplied by ``factor``: the middle quantized weight."""
    model = onnx.load(str(int8))
    init = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and init.get(n.input[0]) is not None and init[n.input[0]].data_type == onnx.TensorProto.INT8]
    node = weight_dq[len(weight_dq) // 2]
    scale = numpy_helper.to_array(init[node.input[1]]) * np.float32(factor)
    return _copy_with_initializer(int8, dst, node, node.input[1], scale)


def clip_stage(int8: Path, dst: Path, factor: float = 4.0) -> Path:
    """One activation's quantization range shrunk ``factor`` times (its QuantizeLinear and DequantizeLinear share
    the new scale), so values beyond it are clipped: the input of the middle stage's first quantized node."""
    model = onnx.load(str(int8))
    init = {t.name: t for t in model.graph.initializer}
    quants = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init]
    node = quants[len(quants) // 2]
    pair = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]]
    scale = numpy_helper.to_array(init[node.input[1]]) / np.float32(factor)
    return _copy_with_initializer(int8, dst, None, node.input[1], scale, consumers=[node, *pair])


def test_the_test_models_answers_depend_on_the_picture(gate: Any, good_int8: Path) -> None:
    refs = gate.references
    keys = list(refs)
    assert len(keys) >= 4
    # Another picture's rows in place of each picture's: the answers' distributions move several times more than
    # int8 moves them, and the gate fails.
    shifted = {k: refs[keys[(i + 1) % len(keys)]].rows for i, k in enumerate(keys)}
    wrong = ag.compare(gate.llm, refs, shifted, gate.views, gate.thresholds)
    good = gate.judge(good_int8)
    assert not wrong.passed and wrong.mean_kl > 3 * good.mean_kl and wrong.worst_kl > 3 * good.worst_kl
    assert wrong.centred_cosine < 0.95
    same = ag.compare(gate.llm, refs, {k: r.rows for k, r in refs.items()}, gate.views, gate.thresholds)
    assert same.passed and same.mean_kl < 1e-6 and same.top1 == 1.0
    assert same.centred_cosine == pytest.approx(1.0)


def test_good_int8_passes_the_gate(gate: Any, good_int8: Path) -> None:
    figures = gate.judge(good_int8)
    assert figures.passed, figures.failed
    assert figures.views == len(gate.views) and figures.positions >= figures.views
    assert 0 <= figures.mean_kl <= figures.worst_kl and figures.top1 >= gate.thresholds.min_top1
    record = json.loads(json.dumps(figures.to_json()))
    assert record["passed"] is True and set(record["per_view"]) == {v.key for v in gate.views}


@pytest.mark.parametrize("damage", [scale_off, clip_stage], ids=["one scale off by 4x", "one stage clipped"])
def test_damaged_int8_fails_the_gate(gate: Any, good_int8: Path, tmp_path: Path, damage: Any) -> None:
    damaged = damage(good_int8, tmp_path / "damaged.onnx")
    assert sha256_file(damaged) != sha256_file(good_int8)
    figures = gate.judge(damaged)
    assert not figures.passed and any("centred cosine" in f for f in figures.failed)
    good = gate.judge(good_int8)
    assert good.passed
    assert figures.mean_kl > 2 * good.mean_kl and figures.worst_kl > good.worst_kl
    assert figures.centred_cosine < gate.thresholds.min_centred_cosine - 0.05


@pytest.mark.parametrize("damage", [scale_off, clip_stage], ids=["one scale off by 4x", "one stage clipped"])
def test_rows_first_stops_a_damaged_graph_before_asking_the_language_model(
        float_graph: Path, llm_path: Path, good_int8: Path, tmp_path: Path, damage: Any) -> None:
    damaged = damage(good_int8, tmp_path / "damaged.onnx")
    views = ag.gate_views(vi.heldout_images(), (SIZE,))
    with ag.AnswerGate(float_graph, llm_path, views) as fresh:
        figures = fresh.judge(damaged, rows_first=True)
        assert not figures.passed and not figures.answers_compared
        assert not fresh.has_answers  # the language model was never loaded
        assert figures.views == 1 and figures.failed[0].startswith("centred cosine")
        record = json.loads(json.dumps(figures.to_json(), allow_nan=False))  # strict JSON: no NaN
        assert record["mean_kl"] is None and record["answers_compared"] is False
        assert "answers not compared" in figures.summary()
        # The same graph judged in full fails too, and a good graph passes with rows first.
        assert not fresh.judge(damaged).passed and fresh.has_answers
        good = fresh.judge(good_int8, rows_first=True)
        assert good.passed and good.answers_compared and good.views == len(views)


# -- per-node sensitivity ---------------------------------------------------------------------------------------

def test_fake_quantization_matches_onnxruntime() -> None:
    """The sensitivity estimate quantizes activations as onnxruntime's QuantizeLinear / DequantizeLinear do."""
    x = np.random.default_rng(3).uniform(-3, 5, (64, 16)).astype(np.float32)
    lo, hi = -2.5, 4.0
    scale = np.float32((hi - lo) / 255.0)
    zero = np.uint8(round(-lo / float(scale)))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 16])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 16])],
        [numpy_helper.from_array(np.array(scale), "s"), numpy_helper.from_array(np.array(zero), "z")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(vp._fake_quant_activation(x, lo, hi), expected, rtol=0, atol=1e-6)
    w = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    wq = vp._fake_quant_weight(w)
    assert (np.abs(wq - w).max(axis=0) <= np.abs(w).max(axis=0) / 63 / 2 + 1e-7).all()


def test_sensitivity_ranks_a_node_with_a_bad_range_first(float_graph: Path, ranges: vi.Ranges) -> None:
    views = vi._views(vi.calibration_images()[:1], (SIZE,))
    errors = vp.node_sensitivity(float_graph, ranges, views)
    assert set(errors) == set(ranges.selected) and all(e > 0 for e in errors.values())
    # Widen one node's input range 50x, as a calibration outlier would: its error must become the largest.
    victim = min(errors, key=errors.__getitem__)
    node = next(n for n in onnx.load(str(float_graph)).graph.node if n.name == victim)
    i = ranges.targets.index(node.input[0])
    wide = vi.Ranges(ranges.selected, ranges.targets, ranges.lows.copy(), ranges.highs.copy())
    wide.lows[i] *= 50
    wide.highs[i] *= 50
    worse = vp.node_sensitivity(float_graph, wide, views)
    assert vp.most_sensitive(worse, 0.01) == [victim]
    assert len(vp.most_sensitive(worse, 0.5)) == round(0.5 * len(worse))


# -- the converter's choice -------------------------------------------------------------------------------------

def _copy(float_graph: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(float_graph, tmp_path / "vision.onnx"))


NOTHING_PASSES = ag.GateThresholds(max_mean_kl=-1.0)


def test_auto_writes_int8_when_the_gate_passes(float_graph: Path, llm_path: Path, tmp_path: Path) -> None:
    path = _copy(float_graph, tmp_path)
    seen: list[Progress] = []
    info = vp.choose_vision_precision(path, llm_path, "auto", report=Reporter(seen.append))
    assert info["precision"] == "int8" and info["precision_requested"] == "auto"
    assert info["precision_reason"].startswith("int8: the answer gate passed: mean KL")
    tries = info["int8_gate"]["tries"]
    assert len(tries) == 1 and tries[0]["passed"] and tries[0]["float_nodes"] == 0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx"]
    stages = {p.stage for p in seen}
    assert {f"{vp.STAGE}: calibrating", f"{vp.STAGE}: float32 rows", f"{vp.STAGE}: float32 answers",
            f"{vp.STAGE}: int8 gate"} <= stages
    for stage in stages:
        steps = [p.done for p in seen if p.stage == stage]
        assert steps == sorted(steps) and steps[-1] == next(p.total for p in seen if p.stage == stage)


def test_auto_keeps_float_when_nothing_passes(float_graph: Path, llm_path: Path, tmp_path: Path) -> None:
    path = _copy(float_graph, tmp_path)
    before = sha256_file(path)
    info = vp.choose_vision_precision(path, llm_path, "auto", thresholds=NOTHING_PASSES)
    assert info["precision"] == "fp32" and sha256_file(path) == before
    assert info["precision_reason"].startswith("fp32: int8 failed the answer gate (mean KL")
    tries = info["int8_gate"]["tries"]
    assert [t["float_nodes"] > 0 for t in tries] == [False] + [True] * len(vp.MIXED_FRACTIONS)
    assert not any(t["passed"] for t in tries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx"]
    # With no time for mixed precision, only the whole graph is tried.
    info = vp.choose_vision_precision(path, llm_path, "auto", thresholds=NOTHING_PASSES, budget_s=-1)
    assert len(info["int8_gate"]["tries"]) == 1 and info["precision"] == "fp32"
    assert "no time was left for a mixed-precision try within -1 s" in info["precision_reason"]


def test_auto_never_loads_the_language_model_when_the_rows_fail(float_graph: Path, llm_path: Path,
                                                                tmp_path: Path) -> None:
    path = _copy(float_graph, tmp_path)
    seen: list[Progress] = []
    impossible = ag.GateThresholds(min_centred_cosine=1.01)
    info = vp.choose_vision_precision(path, llm_path, "auto", thresholds=impossible, report=Reporter(seen.append))
    assert info["precision"] == "fp32" and "answers not compared" not in info["precision_reason"]
    tries = info["int8_gate"]["tries"]
    assert len(tries) == 1 + len(vp.MIXED_FRACTIONS)
    assert all(not t["answers_compared"] and t["views"] == 1 and t["mean_kl"] is None for t in tries)
    assert f"{vp.STAGE}: float32 answers" not in {p.stage for p in seen}
    assert "float32 answers" not in info["int8_gate"]["seconds"]
    # ``int8`` writes the graph whatever the gate says, so it measures every figure.
    (tmp_path / "x").mkdir()
    info = vp.choose_vision_precision(_copy(float_graph, tmp_path / "x"), llm_path, "int8", thresholds=impossible)
    (whole,) = info["int8_gate"]["tries"]
    assert whole["answers_compared"] and whole["mean_kl"] is not None and not whole["passed"]


def test_auto_writes_mixed_precision_when_only_that_passes(float_graph: Path, llm_path: Path, tmp_path: Path,
                                                           ranges: vi.Ranges, gate: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Measure whole int8 and the first mixed try, then ask for a centred cosine between the two.
    monkeypatch.setattr(vp, "MIXED_FRACTIONS", (0.3,))
    errors = vp.node_sensitivity(float_graph, ranges, vi._views(vi.calibration_images()[:2], (SIZE,)))
    exclude = vp.most_sensitive(errors, 0.3)
    whole, mixed = tmp_path / "whole.onnx", tmp_path / "mixed.onnx"
    vi.write_int8(float_graph, whole, ranges)
    vi.write_int8(float_graph, mixed, ranges, exclude)
    a, b = gate.judge(whole), gate.judge(mixed)
    assert b.centred_cosine > a.centred_cosine  # keeping the most sensitive nodes in float helps
    between = ag.GateThresholds(min_centred_cosine=(a.centred_cosine + b.centred_cosine) / 2, max_mean_kl=1.0,
                                max_worst_kl=10.0, min_top1=0.0)
    (tmp_path / "x").mkdir()
    path = _copy(float_graph, tmp_path / "x")
    info = vp.choose_vision_precision(path, llm_path, "auto", thresholds=between)
    assert info["precision"] == "mixed" and info["float_nodes"] == exclude
    assert info["precision_reason"].startswith("mixed int8: whole-graph int8 failed the answer gate (centred")
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    chosen = {n.name: n for n in model.graph.node if n.name in set(ranges.selected)}
    assert all(chosen[name].input[1] in weights for name in exclude)  # kept float
    assert all(n.input[1] in dequantized for name, n in chosen.items() if name not in exclude)  # int8


def test_int8_is_written_when_asked_even_if_the_gate_fails(float_graph: Path, llm_path: Path,
                                                            tmp_path: Path) -> None:
    path = _copy(float_graph, tmp_path)
    info = vp.choose_vision_precision(path, llm_path, "int8", thresholds=NOTHING_PASSES)
    assert info["precision"] == "int8" and "FAILED" in info["precision_reason"]
    assert len(info["int8_gate"]["tries"]) == 1
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_fp32_and_failures_keep_float(float_graph: Path, llm_path: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _copy(float_graph, tmp_path)
    before = sha256_file(path)
    info = vp.choose_vision_precision(path, llm_path, "fp32")
    assert info["precision"] == "fp32" and info["int8_gate"] is None and "requested" in info["precision_reason"]
    with pytest.raises(ConversionError, match="Unknown vision precision 'int4'"):
        vp.choose_vision_precision(path, llm_path, "int4")
    monkeypatch.setattr(vi, "calibration_images", list)
    info = vp.choose_vision_precision(path, llm_path, "auto")
    assert info["precision"] == "fp32" and "0 calibration" in info["precision_reason"]
    assert sha256_file(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx"]


def test_cancel_during_the_gate(float_graph: Path, llm_path: Path, tmp_path: Path) -> None:
    path = _copy(float_graph, tmp_path)
    cancel = threading.Event()

    def on_progress(p: Progress) -> None:
        if p.stage.endswith("int8 gate") and p.done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        vp.choose_vision_precision(path, llm_path, "auto", report=Reporter(on_progress, cancel))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vision.onnx"]


# -- converter, CLI, model manager ------------------------------------------------------------------------------

def test_default_conversion_says_what_it_wrote_and_why(tiny_checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "tiny"
    assert cli.main(["convert", str(tiny_checkpoint), str(out), "--quant", "f16", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    vision = read_manifest(out).raw["vision"]
    assert vision["precision_requested"] == "auto" and vision["precision"] == "int8"
    assert lines[0] == f"Vision encoder: {vision['precision_reason']}" and "answer gate passed" in lines[0]
    gate = vision["int8_gate"]
    assert gate["tries"][0]["passed"] and gate["views"] and gate["tries"][0]["thresholds"] == (
        ag.GateThresholds().to_json())
    verify(out)
    with VisionEncoder(out / "vision.onnx") as enc:
        rows = enc.encode(preprocess(vi.heldout_images()[0], 512))
    assert rows.shape == (64, read_manifest(out).llm_hidden) and np.isfinite(rows).all()
    (model,) = Store(tmp_path).installed()
    assert model.vision == "int8" and model.vision_reason == vision["precision_reason"]


def test_cli_offers_auto_int8_fp32(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    assert "--vision-precision {auto,int8,fp32}" in capsys.readouterr().out


def test_models_import_says_what_it_wrote(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models", "import", str(tiny_checkpoint), "--name", "mine", "--quant", "f16", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    (model,) = Store.default().installed()
    assert model.vision in ("int8", "mixed", "fp32") and model.vision_reason
    assert lines[0] == f"Vision encoder: {model.vision_reason}"


def test_selftest_fails_when_the_gate_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setattr(vi, "heldout_images", list)  # an install that lost its package data
    report = SelfTestReport()
    run_engine_selftest(report, tmp_path)
    assert report.failure is not None and report.failure.startswith("int8 gate on the shipped pictures")
    assert "0 held-out" in report.failure
