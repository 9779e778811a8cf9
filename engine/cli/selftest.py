"""``glimpse self-test``, engine half: prove the converter and both runtimes work on this machine.

It writes a tiny random FastVLM checkpoint, converts it with the real converter, encodes a generated image with
onnxruntime, answers with llama.cpp (first turn and a cached follow-up), and reports versions and timings. The
packaged app runs the same code, so a frozen build that lost a native library fails here with a sentence.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path

import numpy as np

from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.synthetic import CheckpointSpec, write_checkpoint
from glimpse.engine.models.model_folder import read_manifest
from glimpse.engine.runner import RunnerModel, faults
from glimpse.engine.runtime.canary import ENABLE_ENV
from glimpse.engine.runtime.cpu_backends import load_cpu_backends
from glimpse.engine.runtime.model import Answer, load_model
from glimpse.engine.version import __version__


@dataclass
class SelfTestReport:
    """What ran, how long each step took, and the first failure (if any)."""

    versions: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def step(self, name: str, fn: Callable[[], object]) -> object:
        if self.failure is not None:
            return None
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # every failure is reported as a line, then the exit code says it failed
            self.failure = f"{name}: {type(e).__name__}: {e}"
            return None
        self.steps.append((name, (time.perf_counter() - t) * 1e3))
        return result

    def lines(self) -> list[str]:
        out = [f"{k}: {v}" for k, v in self.versions.items()]
        out += [f"ok   {name} ({ms:.0f} ms)" for name, ms in self.steps]
        out.append(f"FAIL {self.failure}" if self.failure else "self-test passed")
        return out


def versions() -> dict[str, str]:
    found = {"glimpse": __version__, "python": sys.version.split()[0],
             "platform": f"{platform.system()} {platform.machine()}", "frozen": str(getattr(sys, "frozen", False))}
    for module, dist in (("numpy", "numpy"), ("PIL", "pillow"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                         ("llama_cpp", "llama-cpp-python"), ("gguf", "gguf")):
        try:
            version = getattr(import_module(module), "__version__", None)
        except Exception as e:  # a missing native library is exactly what the self-test is for
            found[module] = f"missing ({type(e).__name__}: {e})"
            continue
        if version is None:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = "unknown"
        found[module] = str(version)
    return found


def cpu_kernels() -> str:
    """Which of llama.cpp's CPU variants this processor got (portable build), or that they are built in."""

    backends = load_cpu_backends()
    if backends is None:
        return "built in (a build for one CPU kind)"
    chosen = backends.loaded or "chosen at run time"
    return f"{chosen} (of {len(backends.variants)} variants)"


def run_engine_selftest(report: SelfTestReport, workdir: Path | None = None) -> Path | None:
    """Run the engine steps into ``report``; returns the converted model folder (inside ``workdir``).

    The kernel canary always runs here, GLIMPSE_CANARY=0 or not: proving llama.cpp's kernels on this CPU is what a
    self-test is for (a q8_0 model on an AMX CPU with a GCC 12 build would otherwise end it by SIGILL)."""
    previous = os.environ.get(ENABLE_ENV)
    os.environ[ENABLE_ENV] = "1"
    try:
        return _engine_steps(report, workdir)
    finally:
        if previous is None:
            os.environ.pop(ENABLE_ENV, None)
        else:
            os.environ[ENABLE_ENV] = previous


def _engine_steps(report: SelfTestReport, workdir: Path | None) -> Path | None:
    report.versions.update(versions())
    work = workdir or Path(tempfile.mkdtemp(prefix="glimpse-selftest-"))
    ckpt = report.step("write a tiny random checkpoint", lambda: write_checkpoint(work / "checkpoint",
                                                                                  CheckpointSpec(seed=1)))
    folder = report.step("convert it (ONNX + GGUF)",
                         lambda: convert_checkpoint(work / "checkpoint", work / "model", quant="q8_0"))
    if ckpt is None or folder is None:
        return None

    def gate_ran() -> None:
        # Without its pictures (a wheel or bundle missing its package data) the converter silently writes fp32.

        vision = read_manifest(work / "model").raw.get("vision", {})
        if not (vision.get("int8_gate") or {}).get("tries"):
            raise RuntimeError(f"the int8 gate did not run: {vision.get('precision_reason')}")

    report.step("int8 gate on the shipped pictures", gate_ran)
    image = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)

    def ask() -> None:
        # "auto", as the window and the command line load: the GPU where its canary passed, else the CPU and why.
        with load_model(work / "model", n_ctx=1024, device="auto") as model:
            # Which configuration the canary proved (or that it was skipped), shown even if answering fails below.
            report.versions["llama.cpp kernels"] = (model.kernels.describe() if model.kernels is not None
                                                    else "as built, not proven")
            report.versions["devices"] = model.devices + (f". {model.gpu_not_used}" if model.gpu_not_used else "")
            rows = model.encode(model.preprocess(image, 256))
            if rows.shape != (16, model.llm.n_embd) or not np.isfinite(rows).all():
                raise RuntimeError(f"the encoder returned {rows.shape} rows")
            conv = model.conversation(image, size=256)
            first = conv.ask("What is in this image?", max_tokens=8)
            follow = conv.ask("And what else?", max_tokens=4)
            if not isinstance(first, Answer) or len(first.token_ids) == 0:
                raise RuntimeError("no answer was generated")
            if follow.timings.encode_ms != 0.0:
                raise RuntimeError("the follow-up re-encoded the image instead of using the cache")
            report.versions["answer"] = (f"{len(first.token_ids)} tokens, time to first token "
                                         f"{first.timings.ttft_ms:.0f} ms, follow-up {follow.timings.ttft_ms:.0f} ms")
        report.versions["llama.cpp CPU kernels"] = cpu_kernels()

    report.step("encode with onnxruntime and answer with llama.cpp", ask)
    report.step("answer in the runner process through an injected crash", lambda: runner_survives_a_crash(
        work / "model", image, report))
    return work / "model"


def runner_survives_a_crash(folder: Path, image: np.ndarray, report: SelfTestReport) -> None:
    """The model in its runner process (started from this very executable, frozen or not), whose first start is made
    to crash with SIGSEGV mid-answer: the answer must come from the restarted runner, after one sentence."""
    notices: list[str] = []
    saved = os.environ.get(faults.ENV)
    os.environ[faults.ENV] = "segv@answer#1"
    try:
        with RunnerModel(folder, n_ctx=1024, on_notice=notices.append) as model:
            answer = model.conversation(image, size=256).ask("What is in this image?", max_tokens=6)
            if not answer.token_ids or model.starts != 2 or len(notices) != 1 or "SIGSEGV" not in notices[0]:
                raise RuntimeError(f"the runner did not recover as it should: {model.starts} starts, notices "
                                   f"{notices}, {len(answer.token_ids)} tokens")
    finally:
        if saved is None:
            os.environ.pop(faults.ENV, None)
        else:
            os.environ[faults.ENV] = saved
    report.versions["runner"] = f"answered after an injected SIGSEGV ({len(answer.token_ids)} tokens)"


def main() -> int:
    report = SelfTestReport()
    with tempfile.TemporaryDirectory(prefix="glimpse-selftest-") as tmp:
        run_engine_selftest(report, Path(tmp))
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
