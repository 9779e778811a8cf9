"""Static int8 quantization of ``vision.onnx``, behind a quality gate.

The float graph (fp16- or fp32-stored weights, float32 compute) becomes an onnxruntime QDQ graph:

1. calibrate activation ranges (MinMax) on the real photographs and screenshots in ``assets/calibration/``,
   preprocessed exactly as at run time (``engine.runtime.preprocess``) at ``CALIBRATION_SIZES``. The float graph
   runs with a ReduceMin / ReduceMax output for every activation the quantizer needs, at full onnxruntime speed (its own
   calibrator disables graph optimizations: 2-3x slower here, and several GB more at 1024 px);
2. fold the fp16 weights and their ``Cast`` / ``Mul`` folds into float32 initializers (what onnxruntime does when
   it creates a session), so the quantizer sees plain Conv / MatMul weights;
3. quantize with onnxruntime's ``QDQQuantizer`` and those ranges, which is what ``quantize_static`` does after its
   calibration (the tests check the two give the same graph): unsigned 8-bit activations, signed 8-bit weights per
   output channel with the 7-bit range onnxruntime recommends for AVX2 CPUs without VNNI (no saturation in their
   u8 x s8 kernels). Only the dense 1x1 convolutions (the ConvFFN and patch-embedding projections: most of the
   arithmetic) and the MatMuls with a weight (attention projections, the projector) are quantized. Depthwise and
   grouped convolutions, the attention products, GELU, LayerNorm and the residual additions stay float32:
   onnxruntime's int8 depthwise kernels were 4x slower than its float32 ones here, and an int8 attention softmax
   costs time and accuracy;
4. ``quantize_vision`` also compares int8 with float32 embeddings on the held-out images in ``assets/heldout/``
   by a flat cosine. That figure is too weak to decide anything (the projector's bias dominates it): the
   converter decides with the answer-level gate instead (``answer_gate.py``, driven by ``vision_precision.py``),
   using ``calibrate``, ``embed`` and ``write_int8`` from here.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import QuantType

from glimpse.engine.errors import ConversionError
from glimpse.engine.folders import assets_root
from glimpse.engine.progress import Reporter
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.vision import session_options
from glimpse.engine.system import default_threads

log = logging.getLogger("glimpse")

GATE_COSINE = 0.995  # keep float32 when any held-out image's embeddings fall below this cosine
# Input sides the gate checks: the default 1024 and the fast 512 of live captions.
GATE_SIZES = (512, 1024)
# Sides the activation ranges are measured at. 512 alone: ranges from 512 and 1024 gave the same gate figure on
# random weights, and calibrating at 1024 too costs 40 s more; the gate at 1024 checks the choice on every model.
CALIBRATION_SIZES = (512,)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
STAGE = "vision int8"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "image_embeddings"

F32 = npt.NDArray[np.float32]


def list_images(folder: Path) -> list[Path]:
    """The image files in ``folder`` (sorted by name); an empty list when the folder is missing."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_images() -> list[Path]:
    return list_images(assets_root() / "calibration")


def heldout_images() -> list[Path]:
    return list_images(assets_root() / "heldout")


@dataclass(frozen=True)
class GateResult:
    """How the int8 graph compares with float32 on the held-out images."""

    passed: bool
    threshold: float
    min_cosine: float  # lowest per-image cosine, all tokens of one image flattened into one vector (the gate)
    min_token_cosine: float  # lowest cosine of any single token row (reported, not gated)
    sizes: tuple[int, ...]
    calibration_images: int
    heldout_images: int
    per_image: dict[str, float] = field(default_factory=dict)  # "name@size" -> cosine
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "threshold": self.threshold,
            "min_cosine": round(self.min_cosine, 6),
            "min_token_cosine": round(self.min_token_cosine, 6),
            "sizes": list(self.sizes),
            "calibration_images": self.calibration_images,
            "heldout_images": self.heldout_images,
            "per_image": {k: round(v, 6) for k, v in self.per_image.items()},
            "seconds": round(self.seconds, 1),
        }


def cosines(reference: F32, actual: F32) -> tuple[float, float]:
    """(cosine of the flattened embeddings, lowest cosine of a single token row), computed in float64."""
    a = np.asarray(reference, dtype=np.float64).reshape(reference.shape[0], -1)
    b = np.asarray(actual, dtype=np.float64).reshape(actual.shape[0], -1)
    if a.shape != b.shape:
        raise ConversionError(f"The int8 graph returns {list(b.shape)} where float32 returns {list(a.shape)}.",
                              "This is a bug in Glimpse; please report it.")
    tiny = np.finfo(np.float64).tiny

    def cos(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], axis: int | None) -> npt.NDArray[np.float64]:
        num = (x * y).sum(axis=axis)
        den = np.sqrt((x * x).sum(axis=axis) * (y * y).sum(axis=axis))
        return np.asarray(num / np.maximum(den, tiny), dtype=np.float64)

    flat = float(cos(a.ravel(), b.ravel(), None))
    tokens = float(cos(a, b, 1).min())
    if not (math.isfinite(flat) and math.isfinite(tokens)):
        return -1.0, -1.0
    return flat, tokens


# -- graph preparation ------------------------------------------------------------------------------------------

def _foldable(model: onnx.ModelProto) -> set[int]:
    """Indices of the nodes that compute constants: Cast to float32 and Mul, fed only by weights or such nodes."""
    constant = {t.name for t in model.graph.initializer}
    fold: set[int] = set()
    for i, node in enumerate(model.graph.node):
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (node.op_type == "Mul" or (node.op_type == "Cast" and to == TensorProto.FLOAT)) \
                and all(x in constant for x in node.input):
            fold.add(i)
            constant.update(node.output)
    return fold


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate, in place, every constant ``Cast`` / ``Mul`` (the fp16 weight storage and its folds) in float32.

    The result holds plain float32 weight initializers, as the fp32-stored graph does (onnxruntime does the same
    when it creates a session). Each weight is converted as soon as it is final, so memory stays near one float32
    copy of the weights.
    """
    graph = model.graph
    fold = _foldable(model)
    folding = [n for i, n in enumerate(graph.node) if i in fold]
    kept = [n for i, n in enumerate(graph.node) if i not in fold]
    needed_by_kept = {x for n in kept for x in n.input} | {o.name for o in graph.output}
    pending = Counter(x for n in folding for x in n.input)  # uses still to come by folding nodes
    protos = {t.name: t for t in graph.initializer}
    arrays: dict[str, npt.NDArray[Any]] = {}
    made: list[onnx.TensorProto] = []
    for node in folding:
        args = [arrays[x] if x in arrays else numpy_helper.to_array(protos[x]) for x in node.input]
        result = args[0].astype(np.float32) if node.op_type == "Cast" else np.multiply(args[0], args[1])
        out = node.output[0]
        for x in node.input:
            pending[x] -= 1
            if pending[x] == 0:
                arrays.pop(x, None)
                if x in protos and x not in needed_by_kept:
                    protos[x].ClearField("raw_data")  # the float16 bytes are no longer needed
        if out in needed_by_kept:
            made.append(numpy_helper.from_array(np.ascontiguousarray(result, dtype=np.float32), out))
        if pending[out]:
            arrays[out] = result
    initializers = [t for t in graph.initializer if t.name in needed_by_kept] + made
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return model


def float_model(src: Path) -> onnx.ModelProto:
    """``src`` loaded with its constant ``Cast`` / ``Mul`` nodes folded into float32 weights."""
    return fold_constants(onnx.load(str(src)))


def nodes_to_quantize(model: onnx.ModelProto) -> list[str]:
    """Names of the dense 1x1 Convs and the MatMuls whose second input is a weight (stored or fp16-cast)."""
    fold = _foldable(model)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        if i in fold:
            shapes[node.output[0]] = shapes[node.input[0]]
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes:
            kernel = shapes[node.input[1]][2:]
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group == 1 and all(k == 1 for k in kernel):
                names.append(node.name)
        elif node.op_type == "MatMul" and node.input[1] in shapes:
            names.append(node.name)
    if any(not n for n in names):
        raise ConversionError("The vision graph has unnamed nodes, which the int8 quantizer cannot select.",
                              "Convert the model again with this version of Glimpse.")
    return names


# -- calibration ------------------------------------------------------------------------------------------------

def calibration_targets(model: onnx.ModelProto, selected: Sequence[str]) -> list[str]:
    """The activations the quantizer needs ranges for: input and output of every node it quantizes."""
    chosen = set(selected)
    names: list[str] = []
    for node in model.graph.node:
        if node.name in chosen:
            for tensor in (node.input[0], node.output[0]):
                if tensor not in names:
                    names.append(tensor)
    return names


def instrument(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """Add, in place, each of ``tensors``' minimum and maximum as extra (scalar) graph outputs, after the model's own.

    Unlike onnxruntime's own calibrator, nothing here disables the graph optimizations, so calibration runs at the
    encoder's normal speed.
    """
    graph = model.graph
    index = {name: i for i, name in enumerate(tensors)}
    reductions: dict[str, list[onnx.NodeProto]] = {}
    for tensor, i in index.items():
        for op in ("ReduceMin", "ReduceMax"):
            out = f"glimpse_calib_{i}_{op}"
            reductions.setdefault(tensor, []).append(onnx.helper.make_node(op, [tensor], [out], name=out, keepdims=0))
            graph.output.append(onnx.helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
    # Each reduction goes right after the node that produces its tensor (and the session uses the priority-based
    # order), so no activation is kept alive only to be measured later.
    nodes = [n for i in graph.input for n in reductions.pop(i.name, [])]
    for node in graph.node:
        nodes.append(node)
        for out in node.output:
            nodes.extend(reductions.pop(out, []))
    if reductions:
        raise ConversionError(f"The vision graph has no tensor named {sorted(reductions)[0]!r}.",
                              "This is a bug in Glimpse; please report it.")
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def with_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add inferred types and shapes of every intermediate tensor (the quantizer looks types up there).

    Shape inference runs on a copy whose weights are declared inputs instead of data, so the weights are never
    copied; the model is then marked as inferred so the quantizer does not reload it to infer again.
    """
    graph = model.graph
    declared = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in graph.initializer]
    light = onnx.helper.make_model(
        onnx.helper.make_graph(list(graph.node), graph.name, [*graph.input, *declared], list(graph.output)),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    inferred = onnx.shape_inference.infer_shapes(light)
    known = {v.name for v in (*graph.input, *graph.output)}
    del graph.value_info[:]
    graph.value_info.extend(v for v in inferred.graph.value_info if v.name not in known)
    props = {p.key: p.value for p in model.metadata_props}
    props["onnx.infer"] = "onnxruntime.quant"
    onnx.helper.set_model_props(model, props)
    return model


# -- running ----------------------------------------------------------------------------------------------------

def _release_memory() -> None:
    """Hand freed memory back to the system between phases, so the converter's peak is one phase, not their sum."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _session(model: Path, threads: int | None, *, priority_order: bool = False) -> Any:

    opts = session_options(threads or default_threads())
    if priority_order:  # runs the calibration reductions as early as possible
        opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def _views(images: Sequence[Path], sizes: Sequence[int]) -> list[tuple[str, Path, int]]:
    return [(f"{p.name}@{s}", p, s) for s in sizes for p in images]


def _pixels(image: Path, size: int) -> F32:
    return preprocess(image, size)


@dataclass
class Ranges:
    """What calibration measured: the nodes to quantize and the range of every activation they read or write."""

    selected: list[str]
    targets: list[str]
    lows: F32
    highs: F32

    def of(self, tensor: str) -> tuple[float, float]:
        i = self.targets.index(tensor)
        return float(self.lows[i]), float(self.highs[i])


def calibrate(src: Path, views: Sequence[tuple[str, Path, int]], *, threads: int | None = None,
              tick: Callable[[], None] | None = None) -> Ranges:
    """Activation ranges of the float graph ``src`` on ``views`` (MinMax), one run each.

    Reductions scheduled late would keep activations alive: at 1024 px the instrumented graph needs 3x the memory
    of the plain one, so it is only used here, never for reference embeddings.
    """
    model = onnx.load(str(src))
    selected = nodes_to_quantize(model)
    targets = calibration_targets(model, selected)
    probe = src.with_name(f".{src.name}.probe")
    try:
        onnx.save(instrument(model, targets), str(probe))
        del model
        _release_memory()
        session = _session(probe, threads, priority_order=True)
    finally:
        probe.unlink(missing_ok=True)
    outputs = [o.name for o in session.get_outputs()]
    lows = np.full(len(targets), np.inf, dtype=np.float32)
    highs = np.full(len(targets), -np.inf, dtype=np.float32)
    for _key, image, size in views:
        if tick is not None:
            tick()
        values = session.run(outputs[1:], {INPUT_NAME: _pixels(image, size)})
        lows = np.minimum(lows, np.asarray(values[0::2], dtype=np.float32))
        highs = np.maximum(highs, np.asarray(values[1::2], dtype=np.float32))
    del session
    _release_memory()
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise ConversionError("The float32 graph produced non-finite activations on the calibration images.",
                              "The checkpoint's vision weights look damaged.")
    return Ranges(selected, targets, lows, highs)


def embed(path: Path, views: Sequence[tuple[str, Path, int]], *, threads: int | None = None,
          tick: Callable[[], None] | None = None,
          until: Callable[[str, F32], bool] | None = None) -> dict[str, F32]:
    """The image rows ``path`` gives for each view, keyed by the view's name, in the views' order; stops after the
    first view for which ``until(key, rows)`` is true."""
    out: dict[str, F32] = {}
    session = _session(path, threads)
    try:
        for key, image, size in views:
            if tick is not None:
                tick()
            out[key] = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: _pixels(image, size)})[0][0],
                                  dtype=np.float32)
            if until is not None and until(key, out[key]):
                break
    finally:
        del session
        _release_memory()
    return out


def write_int8(src: Path, dst: Path, ranges: Ranges, exclude: Sequence[str] = ()) -> None:
    """Quantize the float graph ``src`` into ``dst`` with onnxruntime's QDQ quantizer and the measured ``ranges``,
    leaving the nodes named in ``exclude`` in float32."""
    # Module paths rather than the package's re-exports, which older onnxruntime releases lack for some of these.

    skip = set(exclude)
    selected = [n for n in ranges.selected if n not in skip]
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, lo, hi in zip(ranges.targets, ranges.lows, ranges.highs, strict=True)})
    quantizer = QDQQuantizer(
        with_value_info(float_model(src)),
        per_channel=True,
        reduce_range=True,
        weight_qType=QuantType.QInt8,
        activation_qType=QuantType.QUInt8,
        tensors_range=tensors,
        nodes_to_quantize=selected,
        nodes_to_exclude=sorted(skip),
        op_types_to_quantize=["Conv", "MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    quantizer.quantize_model()
    quantizer.model.save_model_to_file(str(dst), False)
    del quantizer
    _release_memory()


def quantize_vision(src: str | Path, dst: str | Path, *, calibration: Sequence[Path] | None = None,
                    heldout: Sequence[Path] | None = None, sizes: Sequence[int] | None = None,
                    calibration_sizes: Sequence[int] | None = None, threshold: float | None = None,
                    threads: int | None = None, report: Reporter | None = None) -> GateResult:
    """Write the int8 version of the float graph ``src`` to ``dst`` and measure it against ``src``.

    ``calibration`` and ``heldout`` default to the images in assets/ (they must not overlap), ``sizes`` (the input
    sides the gate checks) to ``GATE_SIZES``, ``calibration_sizes`` to ``CALIBRATION_SIZES`` and ``threshold`` to
    ``GATE_COSINE``, each read when called. Returns the gate's figures (``passed`` says whether ``dst`` is good
    enough to replace ``src``); ``dst`` is written either way. Raises ConversionError when there are no images,
    Cancelled when ``report``'s cancel event is set.
    """
    # Module paths rather than the package's re-exports, which older onnxruntime releases lack for some of these.
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    sizes = tuple(GATE_SIZES if sizes is None else sizes)
    calibration_sizes = tuple(CALIBRATION_SIZES if calibration_sizes is None else calibration_sizes)
    threshold = GATE_COSINE if threshold is None else threshold
    calibration = list(calibration_images() if calibration is None else calibration)
    heldout = list(heldout_images() if heldout is None else heldout)
    if not calibration or not heldout:
        raise ConversionError(f"The int8 quantizer found {len(calibration)} calibration and {len(heldout)} held-out "
                              f"images (in {assets_root()}).", "Reinstall Glimpse, or use --vision-precision fp32.",
                              gui_hint="Reinstall Glimpse: its calibration images are missing.")
    overlap = {p.resolve() for p in calibration} & {p.resolve() for p in heldout}
    if overlap:
        raise ConversionError(f"{sorted(p.name for p in overlap)} are both calibration and held-out images.",
                              "The gate must be measured on images the calibration has not seen.")
    evals = _views(heldout, sizes)
    calib = _views(calibration, calibration_sizes)
    total = len(calib) + 2 * len(evals) + 1
    done = 0

    def tick() -> None:
        nonlocal done
        if report is not None:
            report(STAGE, done, total)
        done += 1

    # 1. Activation ranges on the calibration images.
    ranges = calibrate(src, calib, threads=threads, tick=tick)

    # 2. float32 reference embeddings of the held-out images.
    reference = embed(src, evals, threads=threads, tick=tick)

    # 3. Quantize with onnxruntime's QDQ quantizer (what quantize_static runs after its own, slower calibration).
    tick()
    write_int8(src, dst, ranges)

    # 4. The gate: every held-out view, every size.
    per_image: dict[str, float] = {}
    token_min = 1.0
    session = _session(dst, threads)
    for key, image, size in evals:
        tick()
        actual = np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: _pixels(image, size)})[0][0], dtype=np.float32)
        flat, token = cosines(reference[key], actual)
        per_image[key] = flat
        token_min = min(token_min, token)
    del session
    if report is not None:
        report(STAGE, total, total)
    lowest = min(per_image.values())
    return GateResult(passed=lowest >= threshold, threshold=threshold, min_cosine=lowest, min_token_cosine=token_min,
                      sizes=sizes, calibration_images=len(calibration), heldout_images=len(heldout),
                      per_image=per_image, seconds=time.perf_counter() - started)

