"""Kernels proven before they are trusted: llama.cpp's CPU kernels run a canary in a throwaway process first.

Native code Glimpse has never seen run (a new CPU generation, a new llama.cpp, a compiler that miscompiles a kernel:
GCC 12 drops the AMX tile configuration, so q8_0 prefill dies by SIGSEGV or SIGILL on Sapphire Rapids) must not take
the window or the CLI down, nor answer with wrong numbers. So before a model's language half loads, a child process
(``glimpse _canary``, engine/cli/canary.py) evaluates a tiny Qwen2 of the same weight type, a 48-token prompt in one
batch (matrix multiplies with many rows: AMX tiles, repacked GEMM) and one single-token decode, and compares the
logits with :func:`reference_logits`, a float64 numpy forward pass that does not use llama.cpp at all.

A rung that crashes (any signal, or a nonzero exit), hangs (killed at the timeout) or answers wrong steps down the
chain :func:`rungs` builds: the GPU (llama.cpp's Vulkan backend, every layer on the device; only when the device
choice is "auto" or "gpu"); as built; without extra buffer types (AMX and repacked weights off); a lower CPU variant
(portable builds); the generic variant (portable builds). The first rung that passes is cached per CPU fingerprint,
llama.cpp build, weight type and device choice, and for a GPU choice the installed Vulkan drivers
(``engine.runtime.gpu_backends.driver_identity``), in ``<cache>/kernels/`` beside the tuning cache, so later loads
cost no process. A GPU that is missing (no Vulkan loader, no driver, a build without Vulkan) fails its rung with the
sentence that says so; with "auto" the CPU rungs follow, with "gpu" that sentence is the error.

Switches: ``GLIMPSE_CANARY=0`` skips the canary (the as-built rung, unproven); ``GLIMPSE_FAULT_CANARY=<mode>[:<rung
name>]`` makes one rung's canary fail on purpose, ``mode`` one of crash (SIGSEGV), illegal (SIGILL), wrong (perturbed
logits) or hang; without a rung name it hits the first rung.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from glimpse.engine import durable
from glimpse.engine.errors import GlimpseError
from glimpse.engine.models.gguf_header import read_header
from glimpse.engine.runtime.cpu_backends import (
    best_variant,
    generic_variant,
    llama_lib_dir,
    load_cpu_backends,
    variant_files,
    variant_scores,
)
from glimpse.engine.runtime.gpu_backends import (
    DEVICES,
    NO_VULKAN_BACKEND,
    NO_VULKAN_HINT,
    GpuUnavailable,
    driver_identity,
    vulkan_library,
)
from glimpse.engine.runtime.tuning import StatusFn, cpu_fingerprint, tuning_dir
from glimpse.engine.system import self_command

log = logging.getLogger("glimpse")

FORMAT = 2  # 2: rungs name their device
SUBDIR = "kernels"
ENTRY = "_canary"
TIMEOUT_S = 60.0  # a canary takes 1-3 s (building its model the first time, a few more); a hang is anything longer
# The GPU rung's process also builds the Vulkan backend's compute pipelines on first use (the driver compiles every
# shader; 8-13 s on lavapipe on 2 cores), and a slow GPU driver with a cold shader cache takes longer: a verdict of
# "hung" there would keep the GPU off until its driver changes, so it gets more time.
GPU_TIMEOUT_S = 180.0
MAX_FILE_BYTES = 64 * 1024
FAULT_ENV = "GLIMPSE_FAULT_CANARY"
FAULT_MODES = ("crash", "illegal", "wrong", "hang")
ENABLE_ENV = "GLIMPSE_CANARY"

# Relative logit error the canary accepts: per position, the RMS of the centred (llama.cpp - reference) over the RMS
# of the reference's centred logits, the largest over all 49 positions. Measured on the canary model (hidden 256,
# 2 layers) on an AMX Xeon (Emerald Rapids class, native build, extra buffer types off): f16 0.0009; q8_0 0.020,
# q4_0 0.019, q4_k_m 0.031 (llama.cpp rounds activations to 8-bit blocks for quantized weights, about 0.5 % per
# multiply, and the error is the same at position 0 as at 48: it is rounding, not attention). Wrong numbers (logits
# perturbed by their own spread, reversed, scaled by 1.2) give 0.2 to 1.4. So 0.01 for f16 (10x the measured error)
# and 0.1 for the quantized types (3x q4_k_m's, 5x q8_0's), both well below garbage.
TOLERANCE = 0.1
F16_TOLERANCE = 0.01


def tolerance(weight_type: str) -> float:
    """The largest :func:`logit_error` a correct kernel gives for ``weight_type``, with margin."""
    return F16_TOLERANCE if weight_type == "f16" else TOLERANCE

F64Array = npt.NDArray[np.float64]


class KernelCanaryError(GlimpseError):
    """No configuration of llama.cpp's CPU kernels computed correctly on this processor."""


# -- the chain --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rung:
    """One configuration of llama.cpp's CPU kernels: extra buffer types on or off, and the CPU variant library a
    portable build loads (None: ggml's own pick, or a native build). ``description`` is one line for status lines.
    ``device`` "gpu" puts every layer on the GPU backend's first device (the CPU still runs what it does not)."""

    name: str
    extra_bufts: bool
    variant: str | None
    description: str
    device: str = "cpu"


def _cpu_has_amx() -> bool:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("flags"):
                return "amx_int8" in line.split()
    return False


def _extras(extra_bufts: bool) -> str:
    if _cpu_has_amx():
        return "AMX on" if extra_bufts else "AMX and repacked weights off"
    return "repacked weights on" if extra_bufts else "repacked weights off"


GPU_RUNG = Rung("the GPU", True, None, "the GPU (llama.cpp's Vulkan backend)", device="gpu")


def rungs(lib_dir: Path | None = None, device: str = "cpu") -> tuple[Rung, ...]:
    """The fallback chain for this installation, safest last. A native build has two CPU rungs, a portable one up
    to four (a lower variant only where one runs here and it is not the generic one); ``device`` "auto" or "gpu" puts
    the GPU rung first."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    gpu = (GPU_RUNG,) if device != "cpu" else ()
    folder = lib_dir if lib_dir is not None else llama_lib_dir()
    variants = variant_files(folder)
    if not variants:
        return (*gpu, Rung("as built", True, None, f"as built (native build, {_extras(True)})"),
                Rung("no extra buffer types", False, None, f"no extra buffer types (native build, {_extras(False)})"))
    scores = variant_scores(folder)
    best = best_variant(scores)
    shown = best or "ggml's pick"
    chain = [Rung("as built", True, None, f"as built ({shown}, {_extras(True)})"),
             Rung("no extra buffer types", False, None, f"no extra buffer types ({shown}, {_extras(False)})")]
    generic = generic_variant(variants)
    lower = best_variant(scores, below=best) if best else None
    if lower is not None and lower != generic:
        chain.append(Rung("a lower CPU variant", False, lower, f"a lower CPU variant ({lower}, {_extras(False)})"))
    if generic is not None and generic != best:
        chain.append(Rung("the generic variant", False, generic, f"the generic variant ({generic})"))
    return (*gpu, *chain)


@dataclass(frozen=True)
class KernelChoice:
    """The rung a model loads with, and how it was chosen. ``failures``: (rung name, how it failed) for each rung
    that failed before it; ``proven`` False when the canary was skipped (GLIMPSE_CANARY=0)."""

    rung: Rung
    weight_type: str
    failures: tuple[tuple[str, str], ...] = ()
    proven: bool = True
    from_cache: bool = False
    seconds: float = 0.0  # what the canary processes took now (0 for a cache hit)
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # the passing canary's report
    why: str = ""  # how it was chosen, when not by the canary (a runner that stopped with the proven one)

    @property
    def extra_bufts(self) -> bool:
        return self.rung.extra_bufts

    @property
    def variant(self) -> str | None:
        return self.rung.variant

    @property
    def device(self) -> str:
        """Where the language model runs: "gpu" or "cpu"."""
        return self.rung.device

    @property
    def gpu_name(self) -> str:
        """The GPU the canary ran on ("llvmpipe (LLVM 15.0.6, 256 bits)"), "" for a CPU rung."""
        return str(self.details.get("gpu", "")) if self.device == "gpu" else ""

    @property
    def gpu_driver(self) -> str:
        """The GPU's driver as Vulkan names it ("llvmpipe, Mesa 22.3.6 (LLVM 15.0.6)"), "" when unknown."""
        return str(self.details.get("driver", "")) if self.device == "gpu" else ""

    @property
    def gpu_not_used(self) -> str:
        """Why the GPU rung failed before this CPU rung was chosen ("" when it was not tried or is in use)."""
        return next((why for name, why in self.failures if name == GPU_RUNG.name), "") if self.device == "cpu" else ""

    def describe(self) -> str:
        """One line, e.g. "as built (libggml-cpu-sapphirerapids.so, AMX on), proven by the canary"."""
        how = self.why or ("proven by the canary" if self.proven else f"not proven ({ENABLE_ENV}=0)")
        failed = "; ".join(f"{name}: {why}" for name, why in self.failures)
        what = self.rung.description
        if self.gpu_name:
            what = f"the GPU (Vulkan: {self.gpu_name}" + (f"; driver {self.gpu_driver})" if self.gpu_driver else ")")
        return f"{what}, {how}" + (f" (failed: {failed})" if failed else "")


def unproven(weight_type: str, lib_dir: Path | None = None, device: str = "cpu") -> KernelChoice:
    """The first rung, taken without a canary."""
    return KernelChoice(rungs(lib_dir, device)[0], weight_type, proven=False)


def canary_enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


# -- the cache --------------------------------------------------------------------------------------------------------

def build_identity(lib_dir: Path | None = None) -> dict[str, Any]:
    """What changes when llama.cpp's native code changes: llama-cpp-python's version and the name, size and
    modification time of every file in its lib folder."""
    folder = lib_dir if lib_dir is not None else llama_lib_dir()
    try:
        dist = version("llama_cpp_python")
    except Exception:  # a missing distribution record only weakens the key
        dist = ""
    files = []
    with contextlib.suppress(OSError):
        for p in sorted(folder.iterdir()):
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append([p.name, st.st_size, st.st_mtime_ns])
    return {"llama_cpp_python": dist, "lib": str(folder), "files": files}


def cache_folder() -> Path:
    return tuning_dir().parent / SUBDIR


def key_digest(key: dict[str, Any]) -> str:
    """A short, stable name for a cache key (the kernels' and the vision providers' verdicts)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _cache_path(weight_type: str, key: dict[str, Any]) -> Path:
    return cache_folder() / f"{weight_type}-{key_digest(key)}.json"


def parse_entry(data: bytes) -> dict[str, Any]:
    """A cache entry's bytes as a JSON object (ValueError otherwise), for ``durable.read_state_file``."""
    raw = json.loads(data.decode("utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("it is not a JSON object")
    return raw


def _read_cache(path: Path, key: dict[str, Any], chain: tuple[Rung, ...]) -> KernelChoice | None:
    # Half-written, garbage, too big or not a file: set aside as <name>.damaged, said once, proven again.
    raw = durable.read_state_file(path, parse_entry, what="kernel canary's cache", max_bytes=MAX_FILE_BYTES).value
    if raw is None or raw.get("format") != FORMAT or raw.get("key") != key:
        return None
    rung = next((r for r in chain if isinstance(raw.get("rung"), dict) and asdict(r) == raw["rung"]), None)
    failures = raw.get("failures")
    if rung is None or not isinstance(failures, list) \
            or not all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in failures):
        return None
    details = raw.get("details")
    return KernelChoice(rung, key["weight_type"], tuple((a, b) for a, b in failures), from_cache=True,
                        details=details if isinstance(details, dict) else {})


def _write_cache(path: Path, key: dict[str, Any], choice: KernelChoice) -> None:
    entry = {"format": FORMAT, "key": key, "rung": asdict(choice.rung), "failures": [list(f) for f in choice.failures],
             "details": choice.details, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(path, json.dumps(entry, indent=1))  # the whole entry or the old one, never half
    except OSError as e:
        log.warning("Could not save the kernel canary's result in %s (%s); the next start runs it again.", path, e)


# -- running one rung -------------------------------------------------------------------------------------------------

def fault_for(rung: Rung, chain: tuple[Rung, ...], spec: str | None = None) -> str | None:
    """The fault GLIMPSE_FAULT_CANARY (or ``spec``) injects into ``rung``'s canary, if any."""
    return injected_fault(os.environ.get(FAULT_ENV, "") if spec is None else spec, (rung.name,), rung == chain[0])


def injected_fault(spec: str, names: tuple[str, ...], first: bool) -> str | None:
    """The mode a fault switch ``<mode>[:<target>]`` injects into a check known by ``names``: the named check, or
    without a target the first one (``first``); None for other checks and unknown modes."""
    mode, _, target = spec.strip().partition(":")
    if mode not in FAULT_MODES:
        return None
    hit = target.strip() in names if target.strip() else first
    return mode if hit else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_rung(rung: Rung, weight_type: str, *, threads: int, timeout_s: float = TIMEOUT_S,
             fault: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """Run one rung's canary in a throwaway process: (None, its report) when it passed, else (how it failed, the
    report or {})."""
    args = ["--weight-type", weight_type, "--extra-bufts", "1" if rung.extra_bufts else "0", "--threads", str(threads),
            "--device", rung.device]
    if rung.variant is not None:
        args += ["--variant", rung.variant]
    if fault is not None:
        args += ["--fault", fault]
    return run_throwaway(self_command(ENTRY, *args), timeout_s)


def run_throwaway(cmd: list[str], timeout_s: float) -> tuple[str | None, dict[str, Any]]:
    """Run a check's throwaway process, which prints its report as a JSON line (``"ok": true`` when it passed):
    (None, the report) when it passed, else (how it failed: killed by a signal, hung past ``timeout_s``, a nonzero
    exit with its reason or last line of stderr, or the report's reason; the report or {})."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        return f"could not start ({e})", {}
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return f"hung: no result within {timeout_s:.0f} s (killed)", {}
    report: dict[str, Any] = {}
    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                report = parsed if isinstance(parsed, dict) else {}
            break
    rc = proc.returncode
    if rc < 0:
        return f"killed by {_signal_name(-rc)}", report
    if rc > 128 and sys.platform != "win32":  # a shell or launcher passing the signal on as 128 + n
        return f"killed by {_signal_name(rc - 128)}", report
    if rc != 0 or report.get("ok") is not True:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
        why = report.get("reason") or (last[0][:200] if last else "no result")
        return f"exited with status {rc}: {why}" if rc != 0 else f"{why}", report
    return None, report


def prove_kernels(weight_type: str, *, threads: int | None = None, status: StatusFn | None = None,
                  timeout_s: float = TIMEOUT_S, lib_dir: Path | None = None, device: str = "cpu") -> KernelChoice:
    """The first rung of :func:`rungs` whose canary passes for ``weight_type`` ("f16", "q8_0", "q4_0", "q4_k_m"),
    from the cache when this CPU, build, weight type, device choice and (for a GPU) drivers were proven before (no
    process then).

    Raises :class:`GpuUnavailable` when ``device`` is "gpu" and the GPU rung fails, and
    :class:`KernelCanaryError` when every rung fails.
    """
    chain = rungs(lib_dir, device)
    key: dict[str, Any] = {"cpu": cpu_fingerprint(), "build": build_identity(lib_dir), "weight_type": weight_type}
    if device != "cpu":
        key.update(device=device, gpu=driver_identity())
    path = _cache_path(weight_type, key)
    cached = _read_cache(path, key, chain)
    if cached is not None:
        return cached
    # One thread by default: every thread runs the same kernels (each configures its own AMX tiles; the GCC 12 crash
    # happens with one thread too), and on a busy machine more threads spin at ggml's barriers: the canary's compute
    # took 2.6 s with 2 threads and 0.25 s with 1 on a 2-core Xeon at load average 7.
    threads = threads or 1
    failures: list[tuple[str, str]] = []
    started = time.perf_counter()
    for i, rung in enumerate(chain):
        if status is not None:
            status(f"Checking llama.cpp's kernels on this computer, once ({rung.name})", i, len(chain))
        t = time.perf_counter()
        failure: str | None
        report: dict[str, Any]
        if rung.device == "gpu" and vulkan_library(lib_dir) is None:  # nothing to try: no process for it
            failure, report = "no Vulkan backend", {"unavailable": True, "reason": NO_VULKAN_BACKEND,
                                                    "hint": NO_VULKAN_HINT}
        else:
            failure, report = run_rung(rung, weight_type, threads=threads,
                                       timeout_s=max(timeout_s, GPU_TIMEOUT_S) if rung.device == "gpu" else timeout_s,
                                       fault=fault_for(rung, chain))
        report["canary_seconds"] = round(time.perf_counter() - t, 2)
        if failure is None:
            choice = KernelChoice(rung, weight_type, tuple(failures), seconds=round(time.perf_counter() - started, 2),
                                  details=report)
            _write_cache(path, key, choice)
            if failures:
                log.warning("llama.cpp's kernels failed their check on this computer (%s); using %s.",
                            "; ".join(f"{n}: {w}" for n, w in failures), rung.description)
            return choice
        log.info("Kernel canary, %s: %s", rung.name, failure)
        if rung.device == "gpu" and device == "gpu":
            hint = report.get("hint")
            no_backend = report.get("reason") == NO_VULKAN_BACKEND
            raise GpuUnavailable(_gpu_sentence(failure, report),
                                 hint if isinstance(hint, str) and hint else
                                 "Install or update your GPU's Vulkan driver, or let the CPU answer (--device cpu or "
                                 "auto).",
                                 gui_hint="Choose Automatic or CPU under Settings > Device. "
                                 + ("The packaged Glimpse has a Vulkan backend; the README's \"Using the GPU\" says "
                                    "how to add one to this install." if no_backend else
                                    "Or install or update your GPU's Vulkan driver."))
        failures.append((rung.name, _gpu_sentence(failure, report) if rung.device == "gpu" else failure))
    tried = "; ".join(f"{name}: {why}" for name, why in failures)
    raise KernelCanaryError(
        f"llama.cpp's {weight_type} kernels failed their check on this processor in every configuration ({tried}).",
        "Convert the model with another weight type (for example --quant f16), or install a llama-cpp-python built "
        "for this computer, and report the failure.",
        gui_hint="Import the model again with another weight type, or install another llama.cpp build, and report "
                 "the failure.")


# -- what a model needs ---------------------------------------------------------------------------------------------

WEIGHT_TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")  # the converter's --quant choices
# general.file_type (llama_ftype) of the files the converter writes
_FILE_TYPES = {1: "f16", 7: "q8_0", 2: "q4_0", 15: "q4_k_m"}


def weight_type_of(gguf_path: str | Path) -> str | None:
    """The weight type a GGUF's header records (general.file_type), if it is one the canary can build.

    Read with the engine's own header reader (0.3 s for the 0.5B model's 151,936-token vocabulary; gguf's
    GGUFReader builds every vocabulary string in Python and takes about 10 s)."""
    try:
        value = read_header(Path(gguf_path)).values.get("general.file_type")
    except GlimpseError as e:
        log.debug("No weight type in %s (%s).", gguf_path, e)
        return None
    return _FILE_TYPES.get(value) if isinstance(value, int) else None


def _gpu_sentence(failure: str, report: dict[str, Any]) -> str:
    """The GPU rung's failure as one sentence: the canary's own when the GPU was simply not there ("The Vulkan
    loader (libvulkan.so.1) is not installed, so the GPU is not used."), else what happened to the driver."""
    if report.get("unavailable") is True and isinstance(report.get("reason"), str):
        return str(report["reason"])
    return f"The GPU's check failed ({failure}), so the GPU is not used."


def choose_kernels(gguf_path: str | Path, weight_type: str | None = None, *, threads: int | None = None,
                   status: StatusFn | None = None, device: str = "cpu") -> KernelChoice:
    """The kernel configuration a model loads with: :func:`prove_kernels` for its weight type (``weight_type``
    from model.json, else the GGUF's header), or the as-built rung unproven when GLIMPSE_CANARY=0 or the type is not
    one the canary can build. A rung with its own CPU variant is loaded into this process now, before anything
    else loads ggml's pick. ``device``: "cpu", "gpu" or "auto" (the GPU where its canary passes, else the CPU);
    unproven, "auto" is the CPU."""
    wt = weight_type if weight_type in WEIGHT_TYPES else weight_type_of(gguf_path)
    if wt is None or not canary_enabled():
        if wt is None:
            log.info("The weight type of %s is not one the kernel canary builds; its kernels are not proven.",
                     gguf_path)
        return unproven(wt or str(weight_type), device="gpu" if device == "gpu" else "cpu")
    return apply_kernels(prove_kernels(wt, threads=threads, status=status, device=device))


def step_down(choice: KernelChoice, steps: int, reason: str, lib_dir: Path | None = None) -> KernelChoice:
    """The rung ``steps`` below ``choice`` in this installation's chain (the last one at most): what a model's
    runner loads with after it stopped (``reason``) while running ``choice``, which the canary had passed. From
    the GPU rung, one step down is the CPU as built: a driver that stopped costs the GPU, not the answer."""
    chain = rungs(lib_dir, "auto" if choice.device == "gpu" else "cpu")
    names = [r.name for r in chain]
    here = names.index(choice.rung.name) if choice.rung.name in names else 0
    target = chain[min(here + steps, len(chain) - 1)]
    if target == choice.rung:
        return choice
    return KernelChoice(target, choice.weight_type, failures=(*choice.failures, (choice.rung.name, reason)),
                        proven=False, why=f"chosen after the model's process stopped ({reason})")


def apply_kernels(choice: KernelChoice) -> KernelChoice:
    """Load ``choice``'s CPU variant into this process now (a portable build keeps one per process), so that
    whatever loads llama.cpp next (the tuning's measurement, the model) runs it rather than ggml's pick."""
    if choice.variant is not None:
        load_cpu_backends(variant=choice.variant)
    return choice


# -- the reference --------------------------------------------------------------------------------------------------

def _field(reader: Any, key: str) -> Any:
    """A scalar metadata value (the first element of its data part)."""
    f = reader.get_field(key)
    if f is None:
        raise ValueError(f"the GGUF has no {key}")
    return f.parts[f.data[0]][0]


def _string(reader: Any, key: str) -> str:
    f = reader.get_field(key)
    if f is None:
        raise ValueError(f"the GGUF has no {key}")
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def _rms_norm(x: F64Array, w: F64Array, eps: float) -> F64Array:
    out: F64Array = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    return out


def _rope(x: F64Array, positions: npt.NDArray[np.int64], theta: float) -> F64Array:
    """NEOX-style rotary embedding (Qwen2): dimension i pairs with i + d/2. ``x`` is (T, heads, d)."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    ang = positions[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    out: F64Array = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out


def reference_logits(gguf_path: str | Path, ids: list[int]) -> F64Array:
    """Qwen2's logits after each of ``ids`` (positions 0..), computed in float64 numpy from the GGUF's dequantized
    weights: RMSNorm, NEOX RoPE with the file's theta, grouped-query causal attention with q/k/v biases, SwiGLU MLP,
    and ``output`` or (tied) ``token_embd`` as the output matrix. Shape (len(ids), vocab rows)."""
    # Start-up: gguf takes about 0.35 s to import; only the canary process and tests come here.
    import gguf  # noqa: PLC0415

    reader = gguf.GGUFReader(str(gguf_path))
    arch = _string(reader, "general.architecture")
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv"))
    layers = int(_field(reader, f"{arch}.block_count"))
    eps = float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon"))
    theta = float(_field(reader, f"{arch}.rope.freq_base"))
    weights: dict[str, F64Array] = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        weights[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float64).reshape(shape)

    x = weights["token_embd.weight"][np.asarray(ids)]
    n, hidden = x.shape
    d = hidden // heads
    pos = np.arange(n, dtype=np.int64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(layers):
        w = {k.split(".", 2)[2]: v for k, v in weights.items() if k.startswith(f"blk.{i}.")}
        h = _rms_norm(x, w["attn_norm.weight"], eps)
        q = (h @ w["attn_q.weight"].T + w["attn_q.bias"]).reshape(n, heads, d)
        k = (h @ w["attn_k.weight"].T + w["attn_k.bias"]).reshape(n, kv_heads, d)
        v = (h @ w["attn_v.weight"].T + w["attn_v.bias"]).reshape(n, kv_heads, d)
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        group = heads // kv_heads
        att = np.empty((n, heads, d))
        for hd in range(heads):
            s = q[:, hd] @ k[:, hd // group].T / np.sqrt(d) + mask
            p = np.exp(s - s.max(axis=-1, keepdims=True))
            att[:, hd] = (p / p.sum(axis=-1, keepdims=True)) @ v[:, hd // group]
        x = x + att.reshape(n, hidden) @ w["attn_output.weight"].T
        h = _rms_norm(x, w["ffn_norm.weight"], eps)
        gate = h @ w["ffn_gate.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * (h @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    x = _rms_norm(x, weights["output_norm.weight"], eps)
    out: F64Array = x @ weights.get("output.weight", weights["token_embd.weight"]).T
    return out


def logit_error(got: npt.NDArray[Any], ref: F64Array) -> float:
    """The largest per-position relative error of ``got`` against ``ref`` (see :func:`tolerance`); inf when
    ``got`` has the wrong shape or holds a NaN or infinity."""
    got = np.asarray(got, np.float64)
    if got.shape != ref.shape or not np.isfinite(got).all():
        return float("inf")
    centred = ref - ref.mean(axis=-1, keepdims=True)
    scale = np.sqrt(np.mean(centred * centred, axis=-1))
    diff = got - ref
    diff -= diff.mean(axis=-1, keepdims=True)  # a constant shift of a position's logits changes no probability
    err = np.sqrt(np.mean(diff * diff, axis=-1)) / np.maximum(scale, 1e-12)
    return float(err.max())
