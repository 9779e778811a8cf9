"""Which precision the vision encoder is written in: ``auto`` (the default), ``int8`` or ``fp32``.

``auto`` writes int8 only where the answer-level gate (``answer_gate.py``) shows the language model's answers stay
those of float32, on the weights being converted:

1. calibrate activation ranges once (``vision_int8.calibrate``), compute the float32 rows and answers once;
2. quantize the whole graph (the dense 1x1 convolutions and weight MatMuls) and judge it: its rows first, largest
   views first, and the language model's answers only if every view's rows pass (the answers are computed once,
   on first need);
3. if it fails, rank the quantized nodes by sensitivity (each node's own quantization error, measured on a
   calibration picture: ``node_sensitivity``), keep the worst ``MIXED_FRACTIONS`` of them in float32 and judge
   again, while the whole step stays within ``PRECISION_BUDGET_S``;
4. if nothing passed, keep float32.

``int8`` writes whole-graph int8 whatever the gate says (the figures are still measured and recorded); ``fp32``
never quantizes. ``choose_vision_precision`` returns what model.json records under "vision", including a one-line
``precision_reason`` the CLI prints and the model manager shows.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, numpy_helper

from glimpse.engine.convert import answer_gate as ag
from glimpse.engine.convert import vision_int8 as vi
from glimpse.engine.errors import Cancelled, ConversionError
from glimpse.engine.folders import assets_root
from glimpse.engine.progress import Reporter

log = logging.getLogger("glimpse")

PRECISIONS = ("auto", "int8", "fp32")
# Shares of the quantized nodes kept in float32 on each mixed-precision try, most sensitive first.
MIXED_FRACTIONS = (0.1, 0.3)
# Seconds the whole precision step may take when whole-graph int8 failed: each mixed try starts only if the time
# spent so far plus what the previous try cost stays within it (the node-sensitivity probe only if it and a try fit,
# counting the probe as ``SENSITIVITY_COST`` tries). 95 s keeps the default conversion of the full 0.5B geometry
# within its 120 s target on a 2-core AVX2 machine (the float graph and the GGUF take about 14-18 s there); see
# docs/benchmarks.md.
PRECISION_BUDGET_S = 95.0
SENSITIVITY_COST = 1.5
SENSITIVITY_ROWS = 4096  # activation rows sampled per node: the error estimate, not the arithmetic, needs them
STAGE = "vision precision"

F32 = npt.NDArray[np.float32]


# -- per-node sensitivity ---------------------------------------------------------------------------------------

def _fake_quant_activation(x: F32, lo: float, hi: float) -> F32:
    """uint8 asymmetric quantization over [min(lo, 0), max(hi, 0)], as onnxruntime's MinMax ranges give."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = round(-lo / scale)
    q = np.clip(np.rint(x / scale) + zero, 0, 255)
    return np.asarray((q - zero) * scale, dtype=np.float32)


def _fake_quant_weight(w: F32) -> F32:
    """Signed, symmetric, per output column, 7-bit range (``reduce_range``), as the quantizer writes weights."""
    peak = np.abs(w).max(axis=0, keepdims=True)
    scale = np.where(peak > 0, peak / 63.0, 1.0)
    return np.asarray(np.clip(np.rint(w / scale), -64, 63) * scale, dtype=np.float32)


def _as_matmul(node: onnx.NodeProto, x: F32, w: F32) -> tuple[F32, F32]:
    """(rows of the input, weight as a (k, n) matrix) for a 1x1 Conv or a weight MatMul."""
    if node.op_type == "Conv":
        cin = w.shape[1]
        return x.reshape(cin, -1).T, w.reshape(w.shape[0], cin).T
    return x.reshape(-1, w.shape[0]), w


def node_sensitivity(src: Path, ranges: vi.Ranges, views: Sequence[tuple[str, Path, int]], *,
                     threads: int | None = None, tick: Callable[[], None] | None = None) -> dict[str, float]:
    """Each quantized node's own error: its output with its input, weight and output quantized (onnxruntime's
    formulas) against its float32 output, as a norm ratio to the output's spread. Summed over ``views``.

    Only the node itself is quantized, so the figure is how much error it adds, not what it inherits.
    """
    model = vi.float_model(src)
    weights = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node if n.name in set(ranges.selected)}
    inputs = sorted({n.input[0] for n in nodes.values()})
    graph = model.graph
    for tensor in inputs:
        if tensor not in {o.name for o in graph.output}:
            graph.output.append(onnx.helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    probe = src.with_name(f".{src.name}.sensitivity")
    try:
        onnx.save(model, str(probe))
        del model, graph
        session = vi._session(probe, threads)
    finally:
        probe.unlink(missing_ok=True)
    rng = np.random.default_rng(0)
    errors = dict.fromkeys(nodes, 0.0)
    for _key, image, size in views:
        if tick is not None:
            tick()
        values = dict(zip(inputs, session.run(inputs, {vi.INPUT_NAME: vi._pixels(image, size)}), strict=True))
        for name, node in nodes.items():
            w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
            x, wm = _as_matmul(node, np.asarray(values[node.input[0]], dtype=np.float32), w)
            if x.shape[0] > SENSITIVITY_ROWS:
                x = x[rng.choice(x.shape[0], SENSITIVITY_ROWS, replace=False)]
            exact = x @ wm
            approx = _fake_quant_activation(x, *ranges.of(node.input[0])) @ _fake_quant_weight(wm)
            approx = _fake_quant_activation(approx, *ranges.of(node.output[0]))
            # Relative to the spread between rows, as the centred cosine sees it; a node with a handful of rows (the
            # squeeze-excite MatMuls read one pooled row) has no spread to speak of, so its plain size is used.
            centred = exact - exact.mean(axis=0, keepdims=True) if exact.shape[0] >= 16 else exact
            errors[name] += float(np.linalg.norm(approx - exact)) / max(float(np.linalg.norm(centred)), 1e-12)
        del values
    del session
    vi._release_memory()
    return errors


def most_sensitive(errors: dict[str, float], fraction: float) -> list[str]:
    """The ``fraction`` of nodes with the largest errors (at least one), worst first."""
    ranked = sorted(errors, key=lambda n: (-errors[n], n))
    return ranked[:max(1, round(fraction * len(ranked)))]


# -- the converter's entry point ----------------------------------------------------------------------------------

class _Ticker:
    """Progress within one named step: ``tick()`` reports the step done so far, then counts one more. ``finish``
    records the step's seconds in ``timings`` (what model.json keeps to say where the time went)."""

    def __init__(self, report: Reporter | None, stage: str, total: int, timings: dict[str, float]) -> None:
        self.report, self.stage, self.total, self.done = report, stage, total, 0
        self.timings = timings
        self.started = time.perf_counter()

    def __call__(self) -> None:
        if self.report is not None:
            self.report(self.stage, self.done, self.total)
        self.done += 1

    def finish(self) -> None:
        name = self.stage.removeprefix(f"{STAGE}: ")
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - self.started, 2)
        if self.report is not None:
            self.report(self.stage, self.total, self.total)


def _fp32(info: dict[str, Any], reason: str) -> dict[str, Any]:
    info.update(precision="fp32", precision_reason=reason)
    return info


def choose_vision_precision(path: str | Path, llm_path: str | Path, precision: str, *,
                            report: Reporter | None = None, thresholds: ag.GateThresholds | None = None,
                            budget_s: float | None = None, calibration: Sequence[Path] | None = None,
                            heldout: Sequence[Path] | None = None, sizes: Sequence[int] | None = None,
                            calibration_sizes: Sequence[int] | None = None,
                            threads: int | None = None) -> dict[str, Any]:
    """Make ``path`` (the float vision graph of a model folder being written) use ``precision``; ``llm_path`` is the
    converted language model the gate asks.

    Returns the entries model.json records under "vision": "precision" ("int8", "mixed" or "fp32"),
    "precision_requested", "precision_reason" (one sentence), "int8_gate" (every try's figures, or None),
    "float_nodes" (nodes kept in float32 in a mixed graph) and "precision_seconds". Raises ConversionError for an
    unknown precision, Cancelled, and OSError for a full disk; any other quantization failure keeps float32.
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"Unknown vision precision '{precision}'.", f"Choose one of: {', '.join(PRECISIONS)}.")
    path, llm_path = Path(path), Path(llm_path)
    info: dict[str, Any] = {"precision": "fp32", "precision_requested": precision, "precision_reason": "",
                            "int8_gate": None, "float_nodes": [], "precision_seconds": 0.0}
    if precision == "fp32":
        return _fp32(info, "fp32 as requested (--vision-precision fp32).")
    started = time.perf_counter()
    candidate = path.with_name(f".{path.stem}.int8{path.suffix}")
    try:
        _choose(path, llm_path, precision, candidate, info, report=report, thresholds=thresholds,
                budget_s=PRECISION_BUDGET_S if budget_s is None else budget_s, started=started,
                calibration=calibration, heldout=heldout, sizes=sizes, calibration_sizes=calibration_sizes,
                threads=threads)
    except Cancelled:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        _fp32(info, f"fp32: int8 quantization failed ({e}).")
        log.warning("Vision precision: %s", info["precision_reason"])
    except ConversionError as e:
        _fp32(info, f"fp32: int8 could not be checked ({e.message}).")
        log.warning("Vision precision: %s", info["precision_reason"])
    except Exception as e:  # onnxruntime / onnx raise their own types; fall back, never fail the conversion
        _fp32(info, f"fp32: int8 quantization failed ({type(e).__name__}: {e}).")
        log.warning("Vision precision: %s", info["precision_reason"])
    finally:
        with contextlib.suppress(OSError):
            candidate.unlink(missing_ok=True)
    info["precision_seconds"] = round(time.perf_counter() - started, 1)
    return info


def _choose(path: Path, llm_path: Path, precision: str, candidate: Path, info: dict[str, Any], *,
            report: Reporter | None, thresholds: ag.GateThresholds | None, budget_s: float,
            calibration: Sequence[Path] | None, heldout: Sequence[Path] | None, sizes: Sequence[int] | None,
            calibration_sizes: Sequence[int] | None, threads: int | None, started: float) -> None:
    calibration = list(vi.calibration_images() if calibration is None else calibration)
    heldout = list(vi.heldout_images() if heldout is None else heldout)
    if not calibration or not heldout:
        raise ConversionError(f"found {len(calibration)} calibration and {len(heldout)} held-out images in "
                              f"{assets_root()}; reinstall Glimpse")
    if {p.resolve() for p in calibration} & {p.resolve() for p in heldout}:
        raise ConversionError("some images are both calibration and held-out images")
    calib = vi._views(calibration, tuple(vi.CALIBRATION_SIZES if calibration_sizes is None else calibration_sizes))
    views = ag.gate_views(heldout, tuple(vi.GATE_SIZES if sizes is None else sizes))

    timings: dict[str, float] = {}
    step = _Ticker(report, f"{STAGE}: calibrating", len(calib), timings)
    ranges = vi.calibrate(path, calib, threads=threads, tick=step)
    step.finish()
    step = _Ticker(report, f"{STAGE}: float32 rows", len(views), timings)
    tries: list[dict[str, Any]] = []
    info["int8_gate"] = {"views": [v.key for v in views], "tries": tries, "seconds": timings}
    # ``auto`` judges each graph's rows first (largest views first) and asks the language model only when they
    # pass; ``int8`` records every figure, since it writes the graph whatever they say.
    rows_first = precision == "auto"
    with ag.AnswerGate(path, llm_path, views, thresholds, threads=threads, tick=step) as gate:
        step.finish()

        def attempt(exclude: Sequence[str], label: str) -> ag.GateFigures:
            step = _Ticker(report, f"{STAGE}: {label}", 1 + 2 * len(views), timings)
            step()
            vi.write_int8(path, candidate, ranges, exclude)
            timings["quantizer"] = round(timings.get("quantizer", 0.0) + time.perf_counter() - step.started, 2)
            rows = gate.rows(candidate, tick=step, rows_first=rows_first)
            if isinstance(rows, ag.GateFigures):
                figures = rows
            else:
                if not gate.has_answers:
                    answers = _Ticker(report, f"{STAGE}: float32 answers", len(views), timings)
                    gate.answers(tick=answers)
                    answers.finish()
                figures = gate.compare(rows, tick=step)
            step.finish()
            tries.append({"float_nodes": len(exclude), **figures.to_json()})
            return figures

        def affordable(last_s: float) -> bool:
            return time.perf_counter() - started + last_s <= budget_s

        tried = time.perf_counter()
        whole = attempt([], "int8 gate")
        if whole.passed or precision == "int8":
            candidate.replace(path)
            info.update(precision="int8", weights="int8")
            verdict = "passed" if whole.passed else f"FAILED ({'; '.join(whole.failed)}), written as requested"
            info["precision_reason"] = f"int8: the answer gate {verdict}: {whole.summary()}."
            return
        last = time.perf_counter() - tried
        reason = f"int8 failed the answer gate ({'; '.join(whole.failed)})"
        # The sensitivity probe costs a little more than a try (19.6 s against 17.4 s on the full tower here), and it
        # is only worth its time if a try fits after it.
        if not affordable(SENSITIVITY_COST * last + last):
            _fp32(info, f"fp32: {reason} and no time was left for a mixed-precision try within {budget_s:.0f} s.")
            log.warning("Vision precision: %s", info["precision_reason"])
            return
        step = _Ticker(report, f"{STAGE}: node sensitivity", len(calib[:2]), timings)
        errors = node_sensitivity(path, ranges, calib[:2], threads=threads, tick=step)
        step.finish()
        tried_mixed = 0
        for fraction in MIXED_FRACTIONS:
            if not affordable(last):
                break
            exclude = most_sensitive(errors, fraction)
            tried = time.perf_counter()
            figures = attempt(exclude, f"mixed ({len(exclude)} nodes float)")
            last = time.perf_counter() - tried
            tried_mixed += 1
            if figures.passed:
                candidate.replace(path)
                info.update(precision="mixed", weights="int8", float_nodes=exclude)
                info["precision_reason"] = (
                    f"mixed int8: whole-graph int8 failed the answer gate ({'; '.join(whole.failed)}); with the "
                    f"{len(exclude)} most sensitive of {len(errors)} quantized nodes in float32 it passed: "
                    f"{figures.summary()}.")
                return
        tail = "no mixed-precision graph passed" if tried_mixed else "no time was left for a mixed-precision try"
        _fp32(info, f"fp32: {reason} and {tail} within {budget_s:.0f} s.")
        log.warning("Vision precision: %s", info["precision_reason"])
