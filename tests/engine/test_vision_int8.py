"""int8 vision encoder: calibration assets, quantization of the tiny tower, the quality gate, the converter and CLI
switches, and the optimized-graph cache of VisionEncoder. No torch; the tiny tower keeps every test quick."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

import glimpse.engine.convert.vision_int8 as vi
from glimpse.engine import cli
from glimpse.engine.convert import convert_checkpoint, estimate_output_bytes
from glimpse.engine.convert.checkpoint import Checkpoint, LlmGeometry
from glimpse.engine.convert.vision_graph import INPUT_NAME, OUTPUT_NAME, build_vision_onnx
from glimpse.engine.errors import ConversionError
from glimpse.engine.folders import assets_root
from glimpse.engine.models.model_folder import sha256_file
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.vision import VisionEncoder, cache_dir

SIZE = 256  # the smallest supported side keeps calibration and the gate fast on the tiny tower


@pytest.fixture(autouse=True)
def _small_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vi, "GATE_SIZES", (SIZE,))
    monkeypatch.setattr(vi, "CALIBRATION_SIZES", (SIZE,))


@pytest.fixture(scope="module")
def float_graph(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tower's fp16-stored float graph, as the converter writes it. Treat it as read-only."""
    out = tmp_path_factory.mktemp("int8") / "vision.onnx"
    with Checkpoint(tiny_checkpoint) as ckpt:
        build_vision_onnx(ckpt, out, weight_dtype="fp16")
    return out


@pytest.fixture(scope="module")
def quantized(float_graph: Path) -> tuple[Path, vi.GateResult]:
    out = float_graph.with_name("vision_int8.onnx")
    result = vi.quantize_vision(float_graph, out, sizes=(SIZE,), calibration_sizes=(SIZE,))
    return out, result


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(path: Path, pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(_session(path).run([OUTPUT_NAME], {INPUT_NAME: pixels})[0])


def _io(path: Path) -> list[tuple[str, int, list[Any]]]:
    model = onnx.load(str(path), load_external_data=False)
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*model.graph.input, *model.graph.output)]


# -- assets -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["calibration", "heldout"])
def test_assets_load_and_are_licensed(folder: str) -> None:
    images = vi.list_images(assets_root() / folder)
    assert len(images) >= (8 if folder == "calibration" else 4)
    licenses = (assets_root() / folder / "LICENSES.md").read_text(encoding="utf-8")
    for path in images:
        assert f"`{path.name}`" in licenses, f"{path.name} is not listed in {folder}/LICENSES.md"
        pixels = preprocess(path, SIZE)
        assert pixels.shape == (1, 3, SIZE, SIZE) and pixels.dtype == np.float32
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0 and pixels.std() > 0.01
    kinds = {p.name.split("_")[0] for p in images}
    assert {"screen", "doc"} & kinds, "screenshots or documents are missing"
    assert kinds - {"screen", "doc"}, "photographs are missing"


def test_calibration_and_heldout_are_different_images() -> None:
    def digest(p: Path) -> str:
        return hashlib.sha256(np.asarray(preprocess(p, SIZE)).tobytes()).hexdigest()

    cal, held = vi.calibration_images(), vi.heldout_images()
    assert not {p.name for p in cal} & {p.name for p in held}
    assert not {digest(p) for p in cal} & {digest(p) for p in held}
    total = sum(f.stat().st_size for f in assets_root().joinpath("calibration").iterdir()) + sum(
        f.stat().st_size for f in assets_root().joinpath("heldout").iterdir())
    assert total < 2_000_000


# -- graph preparation and quantization ---------------------------------------------------------------------------

def test_float_model_folds_fp16_storage_exactly(float_graph: Path, tmp_path: Path) -> None:
    model = vi.float_model(float_graph)
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert "Cast" not in {n.op_type for n in model.graph.node}
    folded = tmp_path / "float.onnx"
    onnx.save(model, str(folded))
    x = preprocess(vi.heldout_images()[0], SIZE)
    a, b = _run(float_graph, x), _run(folded, x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_quantized_graph_is_valid_with_the_same_interface(float_graph: Path,
                                                          quantized: tuple[Path, vi.GateResult]) -> None:
    path, _ = quantized
    onnx.checker.check_model(onnx.load(str(path)))
    assert _io(path) == _io(float_graph)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10
    assert path.stat().st_size < float_graph.stat().st_size
    # Every size still runs (the side stays symbolic), with the float graph's output shape.
    for size in (256, 512):
        x = np.random.default_rng(size).random((1, 3, size, size), dtype=np.float32)
        out = _run(path, x)
        assert out.shape == _run(float_graph, x).shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_same_graph_as_quantize_static(float_graph: Path, quantized: tuple[Path, vi.GateResult],
                                       tmp_path: Path) -> None:
    """Our calibration pass + QDQQuantizer is onnxruntime's quantize_static with the same settings, only faster."""
    model = vi.float_model(float_graph)
    selected = vi.nodes_to_quantize(model)
    onnx.save(model, str(tmp_path / "float.onnx"))
    views = iter([{INPUT_NAME: preprocess(p, SIZE)} for p in vi.calibration_images()])

    class Reader:
        def get_next(self) -> dict[str, Any] | None:
            return next(views, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "ref.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul"],
                    nodes_to_quantize=selected, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})
    ours, ref = onnx.load(str(quantized[0])), onnx.load(str(tmp_path / "ref.onnx"))
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in ref.graph.node]
    a = {t.name: onnx.numpy_helper.to_array(t) for t in ours.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in ref.graph.initializer}
    assert a.keys() == b.keys()
    for name, x in a.items():
        y = b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype == np.int32:  # biases: the activation scales differ in float rounding only
            assert np.abs(x.astype(np.int64) - y).max() <= 1, name
        elif x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_instrumented_graph_reduces_right_after_each_producer(float_graph: Path) -> None:
    model = onnx.load(str(float_graph))
    targets = vi.calibration_targets(model, vi.nodes_to_quantize(model))[:5]
    vi.instrument(model, targets)
    outputs = [o.name for o in model.graph.output]
    assert outputs[0] == OUTPUT_NAME and len(outputs) == 1 + 2 * len(targets)
    order = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    for i, tensor in enumerate(targets):
        assert order[f"glimpse_calib_{i}_ReduceMin"] == order[tensor] + 1
        assert order[f"glimpse_calib_{i}_ReduceMax"] == order[tensor] + 2


def test_only_dense_pointwise_convs_and_weight_matmuls_are_quantized(float_graph: Path) -> None:
    model = vi.float_model(float_graph)
    selected = set(vi.nodes_to_quantize(model))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for node in convs:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        pointwise = group == 1 and shapes[node.input[1]][2:] == (1, 1)
        assert (node.name in selected) == pointwise, node.name
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert {n.name for n in matmuls if n.input[1] in shapes} <= selected
    assert not {n.name for n in matmuls if n.input[1] not in shapes} & selected  # q @ k and p @ v stay float


def test_gate_figures(quantized: tuple[Path, vi.GateResult]) -> None:
    _, result = quantized
    assert result.calibration_images == len(vi.calibration_images())
    assert result.heldout_images == len(vi.heldout_images())
    assert set(result.per_image) == {f"{p.name}@{SIZE}" for p in vi.heldout_images()}
    assert result.min_cosine == min(result.per_image.values())
    assert -1.0 <= result.min_token_cosine <= result.min_cosine + 1e-9 <= 1.0 + 1e-9
    assert result.passed == (result.min_cosine >= vi.GATE_COSINE)
    assert json.loads(json.dumps(result.to_json()))["min_cosine"] == round(result.min_cosine, 6)


def test_cosines() -> None:
    a = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    assert vi.cosines(a, a) == pytest.approx((1.0, 1.0))
    b = a.copy()
    b[2] = -b[2]
    flat, token = vi.cosines(a, b)
    assert token == pytest.approx(-1.0) and flat < 1.0
    assert vi.cosines(a, np.full_like(a, np.nan)) == (-1.0, -1.0)


def test_overlapping_or_missing_images_are_refused(float_graph: Path, tmp_path: Path) -> None:
    image = vi.heldout_images()[0]
    with pytest.raises(ConversionError, match="both calibration and held-out"):
        vi.quantize_vision(float_graph, tmp_path / "q.onnx", calibration=[image], heldout=[image])
    with pytest.raises(ConversionError, match="0 calibration"):
        vi.quantize_vision(float_graph, tmp_path / "q.onnx", calibration=[], heldout=[image])


# -- converter and CLI (the precision the converter chooses: tests/engine/test_answer_gate.py) ---------------

def test_space_check_counts_the_int8_working_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The int8 step writes a float copy of the graph (the calibration probe) and the int8 graph beside the float
    one: the space check must leave room for both."""
    float_graph = convert_checkpoint(tiny_checkpoint, tmp_path / "f", quant="f16", vision_precision="fp32")
    graph_bytes = (float_graph / "vision.onnx").stat().st_size
    with Checkpoint(tiny_checkpoint) as ckpt:
        geo = LlmGeometry.from_checkpoint(ckpt)
        plain = estimate_output_bytes(ckpt, geo, "f16", "fp16", "fp32")
        int8 = estimate_output_bytes(ckpt, geo, "f16", "fp16", "int8")
    assert plain >= sum(p.stat().st_size for p in float_graph.iterdir()) * 0.9
    assert int8 - plain >= graph_bytes  # at least the probe copy of the float graph (and room for the int8 one)


def test_cli_vision_precision_fp32_keeps_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert cli.main(["convert", str(tiny_checkpoint), str(out), "--quant", "f16", "--vision-precision", "fp32",
                     "-q"]) == 0
    vision = json.loads((out / "model.json").read_text())["vision"]
    assert vision["precision"] == vision["precision_requested"] == "fp32" and vision["int8_gate"] is None
    ops = {n.op_type for n in onnx.load(str(out / "vision.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and "Cast" in ops  # the fp16-stored float graph, untouched


def test_cli_and_converter_refuse_unknown_precision(tiny_checkpoint: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", str(tiny_checkpoint), str(tmp_path / "m"), "--vision-precision", "fp16"])
    assert e.value.code == 2 and "--vision-precision" in capsys.readouterr().err
    with pytest.raises(ConversionError, match="Unknown vision precision"):
        convert_checkpoint(tiny_checkpoint, tmp_path / "m", vision_precision="bf16")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    assert re.search(r"--vision-precision \{auto,int8,fp32\}", capsys.readouterr().out)


# -- VisionEncoder's optimized-graph cache ------------------------------------------------------------------------

def _model_folder(graph: Path, folder: Path, precision: str = "fp32") -> Path:
    folder.mkdir()
    shutil.copy(graph, folder / "vision.onnx")
    entry = {"size": (folder / "vision.onnx").stat().st_size, "sha256": sha256_file(folder / "vision.onnx")}
    (folder / "model.json").write_text(json.dumps({"files": {"vision.onnx": entry},
                                                   "vision": {"precision": precision}}))
    return folder


def test_optimized_graph_is_cached_outside_the_model_folder(float_graph: Path, tmp_path: Path) -> None:
    folder = _model_folder(float_graph, tmp_path / "model")
    x = preprocess(vi.heldout_images()[0], SIZE)
    for f in (folder, *folder.iterdir()):
        f.chmod(f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with VisionEncoder(folder / "vision.onnx") as first:
            assert not first.cached
            a = first.encode(x)
        assert sorted(p.name for p in folder.iterdir()) == ["model.json", "vision.onnx"]
        entries = list(cache_dir().glob("vision-*.onnx"))
        assert len(entries) == 1 and not [p for p in cache_dir().iterdir() if p.name.startswith(".")]
        with VisionEncoder(folder / "vision.onnx") as second:
            assert second.cached
            np.testing.assert_array_equal(second.encode(x), a)
        with VisionEncoder(folder / "vision.onnx", cache=False) as plain:
            assert not plain.cached
            np.testing.assert_allclose(plain.encode(x), a, rtol=0, atol=1e-5 * float(np.abs(a).max()))
    finally:
        for f in (folder, *folder.iterdir()):
            f.chmod(f.stat().st_mode | stat.S_IWUSR)


def test_int8_graphs_are_cached_only_on_request(quantized: tuple[Path, vi.GateResult], tmp_path: Path) -> None:
    folder = _model_folder(quantized[0], tmp_path / "model", precision="int8")
    x = preprocess(vi.heldout_images()[0], SIZE)
    with VisionEncoder(folder / "vision.onnx") as enc:
        assert not enc.cached
        a = enc.encode(x)
    assert not cache_dir().exists() or not list(cache_dir().iterdir())
    VisionEncoder(folder / "vision.onnx", cache=True).close()
    with VisionEncoder(folder / "vision.onnx", cache=True) as enc:
        assert enc.cached
        np.testing.assert_array_equal(enc.encode(x), a)


def test_damaged_or_unwritable_cache_falls_back(float_graph: Path, tmp_path: Path) -> None:
    folder = _model_folder(float_graph, tmp_path / "model")
    x = preprocess(vi.heldout_images()[0], SIZE)
    with VisionEncoder(folder / "vision.onnx", cache=False) as enc:
        expected = enc.encode(x)
    with VisionEncoder(folder / "vision.onnx") as enc:  # writes the entry
        assert not enc.cached
    (entry,) = cache_dir().glob("vision-*.onnx")
    entry.write_bytes(b"not an onnx file")
    with VisionEncoder(folder / "vision.onnx") as enc:  # drops and rewrites the damaged entry
        assert not enc.cached
        np.testing.assert_allclose(enc.encode(x), expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
    assert entry.stat().st_size > 1000
    shutil.rmtree(cache_dir())
    cache_dir().parent.mkdir(parents=True, exist_ok=True)
    cache_dir().write_text("a file where the cache folder should be")
    with VisionEncoder(folder / "vision.onnx") as enc:
        assert not enc.cached
        np.testing.assert_allclose(enc.encode(x), expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_no_cache_outside_a_model_folder(float_graph: Path) -> None:
    with VisionEncoder(float_graph) as enc:
        assert not enc.cached
    assert not cache_dir().exists() or not list(cache_dir().iterdir())


def test_cache_folder_follows_glimpse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / "cache" / "onnx"
    monkeypatch.delenv("GLIMPSE_HOME")
    assert cache_dir().name == "onnx" and "glimpse" in str(cache_dir()).lower()
