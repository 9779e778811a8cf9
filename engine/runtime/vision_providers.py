"""The vision encoder on a GPU: onnxruntime's execution providers, each proven on this computer before it is used.

Which providers exist depends on which onnxruntime package is installed: ``onnxruntime`` (Glimpse's default, CPU
only), ``onnxruntime-gpu`` (CUDA), ``onnxruntime-directml`` (DirectML, Windows), ``onnxruntime-openvino`` (OpenVINO:
Intel graphics) or ``onnxruntime-webgpu`` (WebGPU: Vulkan, Metal or Direct3D through Dawn). All of them install the
same ``onnxruntime`` module, so they replace one another rather than add up, which is why they are a documented swap
(the README's "Using the GPU") and not pip extras beside the default.

A provider is never trusted on its name. With the device choice "auto" or "gpu", before the model's vision graph
runs anywhere but the CPU, a throwaway process (``glimpse _vision_canary``, engine/cli/vision_canary.py) encodes
held-out pictures with the model's own graph on the CPU and on the provider and runs the answer-level gate
(engine/convert/answer_gate.py, the check an int8 encoder passes against float32 at conversion) with the CPU's rows
as the reference: the language model answers each picture from the CPU's rows, and the provider's rows must give
the same next-token distributions. A provider that crashes, hangs, does not start or changes the answers costs one
sentence, and the encoder runs on the CPU. The verdict is cached per model graph, onnxruntime build, provider and
GPU drivers (:func:`runtime_identity`), so later loads start no process.

Switches: ``GLIMPSE_VISION_PROVIDER`` names the providers to try instead of the known GPU ones (comma-separated
onnxruntime names, e.g. ``OpenVINOExecutionProvider``; ``none`` keeps the encoder on the CPU);
``GLIMPSE_OPENVINO_DEVICE`` is the OpenVINO device (default ``GPU``; ``CPU`` runs OpenVINO's own CPU plugin, which is
how CI exercises a real non-default provider without a GPU); ``GLIMPSE_FAULT_VISION=<mode>[:<provider>]`` makes a
provider's check fail on purpose (crash, illegal, wrong or hang).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import onnxruntime as ort

from glimpse.engine import durable
from glimpse.engine.models.model_folder import VISION_FILE, recorded_file
from glimpse.engine.runtime.canary import injected_fault, key_digest, parse_entry, run_throwaway
from glimpse.engine.runtime.gpu_backends import DEVICES, driver_identity
from glimpse.engine.runtime.tuning import StatusFn, tuning_dir
from glimpse.engine.runtime.vision import CPU_PROVIDER
from glimpse.engine.system import self_command

log = logging.getLogger("glimpse")

FORMAT = 1
SUBDIR = "vision-providers"
ENTRY = "_vision_canary"
# The check encodes up to MAX_VIEWS held-out pictures twice and loads the language model for their answers: 5-20 s
# for the 0.5B model on 2 CPU cores. A GPU provider may also compile its kernels on first use (OpenVINO's GPU
# plugin, TensorRT-like paths), so a verdict of "hung" takes much longer than that.
TIMEOUT_S = 240.0
MAX_VIEWS = 3
MAX_FILE_BYTES = 64 * 1024
PROVIDER_ENV = "GLIMPSE_VISION_PROVIDER"
OPENVINO_DEVICE_ENV = "GLIMPSE_OPENVINO_DEVICE"
FAULT_ENV = "GLIMPSE_FAULT_VISION"
# Variables that change which device a provider runs on or how: part of what a verdict is keyed by.
PROVIDER_ENV_KEYS = (PROVIDER_ENV, OPENVINO_DEVICE_ENV, "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                     "ORT_CUDA_FLAGS", "OV_GPU_CACHE_MODEL")


@dataclass(frozen=True)
class ProviderSpec:
    """An onnxruntime execution provider Glimpse knows: onnxruntime's name for it, the name people know, and the
    PyPI package that has it."""

    name: str
    label: str
    package: str

    def options(self) -> dict[str, str]:
        """The provider options Glimpse creates it with: the first GPU; for OpenVINO, the device
        GLIMPSE_OPENVINO_DEVICE names (GPU by default)."""
        if self.name == "OpenVINOExecutionProvider":
            return {"device_type": os.environ.get(OPENVINO_DEVICE_ENV, "").strip() or "GPU"}
        if self.name in ("CUDAExecutionProvider", "DmlExecutionProvider"):
            return {"device_id": "0"}
        return {}


# In the order "auto" tries them (an installation normally has one of them at most).
KNOWN = (ProviderSpec("CUDAExecutionProvider", "CUDA", "onnxruntime-gpu"),
         ProviderSpec("DmlExecutionProvider", "DirectML", "onnxruntime-directml"),
         ProviderSpec("OpenVINOExecutionProvider", "OpenVINO", "onnxruntime-openvino"),
         ProviderSpec("WebGpuExecutionProvider", "WebGPU", "onnxruntime-webgpu"))
PACKAGES = ("onnxruntime", *(s.package for s in KNOWN))

def spec_for(name: str) -> ProviderSpec:
    known = next((s for s in KNOWN if s.name == name), None)
    if known is not None:
        return known
    label = name.removesuffix("ExecutionProvider") or name
    return ProviderSpec(name, "CPU" if name == CPU_PROVIDER else label, "onnxruntime")


def installed_runtimes() -> list[str]:
    """The onnxruntime packages installed, as "name version" (normally one; two means one overwrote the other's
    files, and only the last installed one works)."""
    found = []
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError, ValueError):
            found.append(f"{name} {version(name)}")
    return found


def runtime_name() -> str:
    """The onnxruntime package in use, for sentences ("onnxruntime 1.32.0")."""
    found = installed_runtimes()
    return ", ".join(found) if found else f"onnxruntime {ort.__version__}"


def candidates(available: list[str] | None = None) -> list[ProviderSpec]:
    """The providers to try for the encoder, best first: the known GPU providers this onnxruntime has, or those
    GLIMPSE_VISION_PROVIDER names ("none": none)."""
    have = ort.get_available_providers() if available is None else available
    wanted = os.environ.get(PROVIDER_ENV, "").strip()
    if wanted:
        if wanted.lower() in ("none", "cpu", "0", "off"):
            return []
        names = [n.strip() for n in wanted.split(",") if n.strip()]
        return [spec_for(n) for n in names if n in have]
    return [s for s in KNOWN if s.name in have]


def no_provider_sentence() -> str:
    wanted = os.environ.get(PROVIDER_ENV, "").strip()
    if wanted:
        return (f"{PROVIDER_ENV}={wanted} leaves no provider this onnxruntime has, so the vision encoder runs on "
                "the CPU.")
    return f"This onnxruntime ({runtime_name()}) has no GPU execution provider, so the vision encoder runs on the CPU."


# -- the choice -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisionChoice:
    """Where the vision encoder runs. ``provider`` is onnxruntime's name (CPUExecutionProvider: the CPU),
    ``options`` its provider options, ``device`` the device's own name where it is known ("Intel(R) UHD Graphics
    770"); ``failures``: one sentence for each provider that was tried and failed, or why none was tried."""

    provider: str = CPU_PROVIDER
    options: tuple[tuple[str, str], ...] = ()
    label: str = "CPU"
    device: str = ""
    failures: tuple[str, ...] = ()
    from_cache: bool = field(default=False, compare=False)
    details: dict[str, Any] = field(default_factory=dict, compare=False)  # the passing check's report

    @property
    def on_gpu(self) -> bool:
        return self.provider != CPU_PROVIDER

    def describe(self) -> str:
        """For the devices line: "CPU", "OpenVINO (Intel(R) UHD Graphics 770)", "CUDA"."""
        return f"{self.label} ({self.device})" if self.on_gpu and self.device else self.label

    def check_summary(self) -> str:
        """How the provider passed its check, for bench: its gate figures and the median encode times of the
        held-out views on it and on the CPU; "" on the CPU."""
        if not self.on_gpu:
            return ""
        d = self.details
        times = (f"; encode {d['provider_ms']:.0f} ms, the CPU's {d['cpu_ms']:.0f} ms"
                 if isinstance(d.get("provider_ms"), (int, float)) and isinstance(d.get("cpu_ms"), (int, float))
                 else "")
        return f"{self.describe()}: {d.get('summary', 'passed')}{times}" + (" (cached)" if self.from_cache else "")

    @property
    def not_used(self) -> str:
        """Why the encoder is not on a GPU (one sentence per reason), "" when it is or none was asked for."""
        return "" if self.on_gpu else " ".join(self.failures)

    def on_cpu(self, why: str) -> VisionChoice:
        """The CPU, with ``why`` (a sentence) added to the reasons."""
        return VisionChoice(failures=(*self.failures, why))


CPU = VisionChoice()


# -- what a verdict depends on ----------------------------------------------------------------------------------------

def _file_entry(path: Path) -> list[Any] | None:
    with contextlib.suppress(OSError):
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    return None


def runtime_identity() -> dict[str, Any]:
    """What identifies the onnxruntime build and the GPU drivers without running any of them: the onnxruntime
    packages and the name, size and time of every file of its native part (the providers' libraries are there);
    the NVIDIA kernel driver's version line; the OpenCL driver manifests (Intel's GPU runtime, which OpenVINO's GPU
    plugin uses); the Vulkan drivers (WebGPU's backend on Linux); the variables that choose a device. An update of
    any of them proves the provider again."""
    capi = Path(ort.__file__).parent / "capi"
    files = []
    with contextlib.suppress(OSError):
        for p in sorted(capi.iterdir()):
            if p.suffix in (".so", ".dll", ".dylib", ".pyd") or ".so." in p.name:
                entry = _file_entry(p)
                if entry is not None:
                    files.append([*entry[1:], p.name])
    nvidia = ""
    with contextlib.suppress(OSError):
        nvidia = Path("/proc/driver/nvidia/version").read_text(errors="replace")[:300]
    opencl = []
    with contextlib.suppress(OSError):
        for icd in sorted(Path("/etc/OpenCL/vendors").glob("*.icd")):
            with contextlib.suppress(OSError):
                lib = icd.read_text(errors="replace").strip()[:300]
                opencl.append([icd.name, lib, _file_entry(Path(lib)) if lib.startswith("/") else None])
    return {"onnxruntime": ort.__version__, "packages": installed_runtimes(), "native": files, "nvidia": nvidia,
            "opencl": opencl, "vulkan": driver_identity(), "os": [platform.system(), platform.release()],
            "env": {k: os.environ[k] for k in PROVIDER_ENV_KEYS if k in os.environ}}


def graph_identity(graph: Path) -> dict[str, Any]:
    """The model graph a verdict is about: the sha256 its model.json records, else its size and time."""
    sha, precision = recorded_file(graph)
    return {"sha256": sha, "precision": precision} if sha else {"file": _file_entry(graph)}


def cache_folder() -> Path:
    return tuning_dir().parent / SUBDIR


def _cache_path(key: dict[str, Any]) -> Path:
    return cache_folder() / f"vision-{key_digest(key)}.json"


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _read_cache(path: Path, key: dict[str, Any], specs: list[ProviderSpec]) -> VisionChoice | None:
    raw = durable.read_state_file(path, parse_entry, what="vision provider check's cache",
                                  max_bytes=MAX_FILE_BYTES).value
    if raw is None or raw.get("format") != FORMAT or raw.get("key") != key:
        return None
    choice = raw.get("choice")
    if not isinstance(choice, dict) or not _strings(choice.get("failures")):
        return None
    provider = choice.get("provider")
    spec = next((s for s in specs if s.name == provider), None)
    if provider == CPU_PROVIDER:
        return VisionChoice(failures=tuple(choice["failures"]), from_cache=True)
    if spec is None or not isinstance(choice.get("device"), str) or not isinstance(choice.get("details"), dict):
        return None
    return VisionChoice(spec.name, tuple(sorted(spec.options().items())), spec.label, choice["device"],
                        tuple(choice["failures"]), from_cache=True, details=choice["details"])


def _write_cache(path: Path, key: dict[str, Any], choice: VisionChoice) -> None:
    data = asdict(choice)
    data.pop("from_cache")
    entry = {"format": FORMAT, "key": key, "choice": data,
             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_text(path, json.dumps(entry, indent=1))
    except OSError as e:
        log.warning("Could not save the vision provider check's result in %s (%s); the next start runs it again.",
                    path, e)


# -- proving a provider -----------------------------------------------------------------------------------------------

def fault_for(spec: ProviderSpec, specs: list[ProviderSpec], text: str | None = None) -> str | None:
    """The fault GLIMPSE_FAULT_VISION (or ``text``) injects into ``spec``'s check, if any."""
    return injected_fault(os.environ.get(FAULT_ENV, "") if text is None else text, (spec.name, spec.label),
                          spec == specs[0])


def check_provider(model_folder: Path, spec: ProviderSpec, *, threads: int, timeout_s: float = TIMEOUT_S,
                   fault: str | None = None) -> tuple[str | None, dict[str, Any]]:
    """Run ``spec``'s check in a throwaway process: (None, its report) when the provider's answers are the CPU's,
    else (how it failed, the report or {})."""
    args = ["--model", str(model_folder), "--provider", spec.name, "--options", json.dumps(spec.options()),
            "--threads", str(threads)]
    if fault is not None:
        args += ["--fault", fault]
    return run_throwaway(self_command(ENTRY, *args), timeout_s)


def failure_sentence(spec: ProviderSpec, failure: str) -> str:
    return f"The vision encoder failed its check on {spec.label} ({failure.rstrip('.')}), so it runs on the CPU."


def choose_vision(model_folder: str | Path, device: str, *, graph: Path | None = None, threads: int | None = None,
                  status: StatusFn | None = None, timeout_s: float = TIMEOUT_S) -> VisionChoice:
    """Where the model's vision encoder runs for the device choice ``device``: the CPU for "cpu"; for "auto" and
    "gpu", the first provider of :func:`candidates` whose check passes, else the CPU with the sentences that say
    why. Cached: a later load with the same graph, onnxruntime, providers and drivers starts no process (unless a
    check hung or had a fault injected: those are tried again at the next load)."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return CPU
    specs = candidates()
    if not specs:
        return CPU.on_cpu(no_provider_sentence())
    folder = Path(model_folder)
    key = {"graph": graph_identity(graph or folder / VISION_FILE), "runtime": runtime_identity(),
           "providers": [[s.name, s.options()] for s in specs], "python": sys.version.split()[0]}
    path = _cache_path(key)
    cached = _read_cache(path, key, specs)
    if cached is not None:
        return cached
    threads = threads or 1
    failures: list[str] = []
    choice: VisionChoice | None = None
    lasting = True  # a verdict worth keeping: no injected fault, and no hang (a busy machine can look like one)
    for i, spec in enumerate(specs):
        if status is not None:
            status(f"Checking the vision encoder on {spec.label}, once", i, len(specs))
        t = time.perf_counter()
        fault = fault_for(spec, specs)
        failure, report = check_provider(folder, spec, threads=threads, timeout_s=timeout_s, fault=fault)
        lasting = lasting and fault is None and not (failure or "").startswith("hung")
        log.info("Vision provider check, %s: %s (%.1f s)", spec.label, failure or "passed", time.perf_counter() - t)
        if failure is None:
            device_name = report.get("device")
            choice = VisionChoice(spec.name, tuple(sorted(spec.options().items())), spec.label,
                                  device_name if isinstance(device_name, str) else "", tuple(failures),
                                  details=report)
            break
        reason = report.get("reason")  # the check's own words rather than "exited with status 1: ..."
        failures.append(failure_sentence(spec, reason if report.get("ok") is False and isinstance(reason, str)
                                         and reason else failure))
    if choice is None:
        choice = VisionChoice(failures=tuple(failures))
        log.warning("%s", " ".join(failures))
    if lasting:
        _write_cache(path, key, choice)
    return choice


# -- naming the device ------------------------------------------------------------------------------------------------

def openvino_device_name(device: str) -> str:
    """OpenVINO's FULL_DEVICE_NAME of ``device`` ("Intel(R) UHD Graphics 770"), read through the OpenVINO C
    library that onnxruntime-openvino ships beside its own; "" when it cannot be read."""
    capi = Path(ort.__file__).parent / "capi"
    names = ("openvino_c.dll",) if sys.platform == "win32" else ("libopenvino_c.so", "libopenvino_c.dylib")
    path = next((capi / n for n in names if (capi / n).is_file()), None)
    if path is None:
        return ""
    try:
        lib = ctypes.CDLL(str(path))
        core = ctypes.c_void_p()
        if lib.ov_core_create(ctypes.byref(core)) != 0:
            return ""
        try:
            value = ctypes.c_char_p()
            lib.ov_core_get_property.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                                 ctypes.POINTER(ctypes.c_char_p)]
            if lib.ov_core_get_property(core, device.encode(), b"FULL_DEVICE_NAME", ctypes.byref(value)) != 0:
                return ""
            name = (value.value or b"").decode("utf-8", "replace").strip()
            lib.ov_free.argtypes = [ctypes.c_char_p]
            lib.ov_free(value)
            return name[:200]
        finally:
            lib.ov_core_free.argtypes = [ctypes.c_void_p]
            lib.ov_core_free(core)
    except (OSError, AttributeError):
        return ""


def nvidia_device_name(index: int) -> str:
    """The name NVIDIA's management library gives GPU ``index`` ("NVIDIA GeForce RTX 4060"); "" without it."""
    name = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"
    try:
        nvml = ctypes.CDLL(name)
    except OSError:
        return ""
    try:
        if nvml.nvmlInit_v2() != 0:
            return ""
        try:
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) != 0:
                return ""
            buf = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetName(handle, buf, ctypes.c_uint(len(buf))) != 0:
                return ""
            return buf.value.decode("utf-8", "replace").strip()
        finally:
            nvml.nvmlShutdown()
    except AttributeError:
        return ""


def device_name(provider: str, options: dict[str, str]) -> str:
    """The device's own name for a provider, where a library that says it is at hand; "" otherwise."""
    if provider == "OpenVINOExecutionProvider":
        return openvino_device_name(options.get("device_type", "GPU"))
    if provider == "CUDAExecutionProvider":
        with contextlib.suppress(ValueError):
            return nvidia_device_name(int(options.get("device_id", "0")))
    return ""
