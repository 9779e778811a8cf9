"""Runtime settings chosen by measurement on the machine that runs, cached per CPU and model.

The fastest onnxruntime graph layout, llama.cpp batch split, flash attention, KV cache type and thread counts
depend on the CPU (AVX-512 VNNI and AVX2-only machines rank them differently, docs/benchmarks.md) and on the model.
So the first load of a model on a CPU measures the candidates briefly (``engine.runtime.tuning_measure``) and keeps the
winners in ``<cache>/tuning/<model>-<cpu>.json``; later loads read that file. ``glimpse bench --tune`` measures
again. A cache file is only advice: one made for another CPU or model, or holding a value outside the known
choices, is ignored and the model is measured again, never an error; one that is unreadable, half-written, garbage
or too big is also set aside beside itself as ``<name>.damaged`` with one warning (``engine.durable.read_state_file``).

``GLIMPSE_TUNE=0`` skips measuring and uses :data:`DEFAULTS` (the settings Glimpse used before it measured).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import onnxruntime as ort
import psutil

from glimpse.engine import durable
from glimpse.engine.models.model_folder import LLM_FILE, VISION_FILE, ModelManifest
from glimpse.engine.runtime.vision import cache_dir
from glimpse.engine.system import default_threads

log = logging.getLogger("glimpse")

FORMAT = 1
SUBDIR = "tuning"
MAX_FILE_BYTES = 64 * 1024  # a real entry is about 2 KB; anything bigger is not ours and is not read
VISION_LEVELS = ("all", "extended")  # "all" adds onnxruntime's blocked NCHWc layout on x86; "extended" keeps NCHW
UBATCHES = (64, 128, 256, 512)
KV_TYPES = ("f16", "q8_0")  # a quantized V cache needs flash attention in llama.cpp
N_BATCH = 512


@dataclass(frozen=True)
class RuntimeSettings:
    """What the runtimes are told. Thread counts of 0 mean "the physical core count" (resolved at load)."""

    vision_level: str = "all"
    vision_threads: int = 0
    n_batch: int = N_BATCH
    n_ubatch: int = N_BATCH
    flash_attn: bool = False
    kv_type: str = "f16"
    threads: int = 0  # llama.cpp while generating, one token at a time
    threads_batch: int = 0  # llama.cpp while evaluating image rows and prompts

    def resolved(self) -> RuntimeSettings:
        cores = default_threads()
        return replace(self, vision_threads=self.vision_threads or cores, threads=self.threads or cores,
                       threads_batch=self.threads_batch or cores)

    def with_overrides(self, *, threads: int | None = None, n_batch: int | None = None,
                       flash_attn: bool | None = None) -> RuntimeSettings:
        """The caller's explicit choices win over measured ones; a quantized KV cache needs flash attention."""
        out = self
        if threads is not None:
            out = replace(out, vision_threads=threads, threads=threads, threads_batch=threads)
        if n_batch is not None:
            out = replace(out, n_batch=n_batch, n_ubatch=min(out.n_ubatch, n_batch))
        if flash_attn is not None:
            out = replace(out, flash_attn=flash_attn)
        if not out.flash_attn and out.kv_type != "f16":
            out = replace(out, kv_type="f16")
        return out

    def describe(self) -> str:
        return (f"encoder graph {self.vision_level}, {self.vision_threads or 'all'} threads; llama.cpp n_ubatch "
                f"{self.n_ubatch}, flash attention {'on' if self.flash_attn else 'off'}, KV {self.kv_type}, "
                f"threads {self.threads_batch or 'all'} batch / {self.threads or 'all'} decode")


DEFAULTS = RuntimeSettings()


def settings_from_dict(raw: object) -> RuntimeSettings | None:
    """Strictly parse settings read from a file: every field present, of its type, and one of the known choices."""
    if not isinstance(raw, dict) or set(raw) != {f.name for f in fields(RuntimeSettings)}:
        return None
    cores = os.cpu_count() or 1
    ints = ("vision_threads", "n_batch", "n_ubatch", "threads", "threads_batch")
    if any(type(raw[k]) is not int for k in ints) or type(raw["flash_attn"]) is not bool:
        return None
    if any(not 1 <= raw[k] <= cores for k in ("vision_threads", "threads", "threads_batch")):
        return None
    if raw["vision_level"] not in VISION_LEVELS or raw["kv_type"] not in KV_TYPES \
            or raw["n_batch"] != N_BATCH or raw["n_ubatch"] not in UBATCHES:
        return None
    if raw["kv_type"] != "f16" and not raw["flash_attn"]:
        return None
    return RuntimeSettings(**raw)


# -- what the cache is keyed by ---------------------------------------------------------------------------------------

def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("model name", "Model", "Hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
            if not line.strip():
                break
    return os.environ.get("PROCESSOR_IDENTIFIER", "") or platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The SIMD features this CPU has, as numpy detected them (the same names on Linux, Windows and macOS)."""

    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy 1.x
        umath = importlib.import_module("numpy.core._multiarray_umath")
    found: dict[str, bool] = getattr(umath, "__cpu_features__", {})
    return sorted(str(name) for name, present in found.items() if present)


def cpu_class(features: list[str]) -> str:
    """A short name for the CPU's vector class, as the benchmark tables give it."""
    have = set(features)
    for needs, name in ((("AVX512F", "AVX512_VNNI"), "AVX-512 VNNI"), (("AVX512F",), "AVX-512"),
                        (("AVX2", "FMA3"), "AVX2"), (("AVX",), "AVX"), (("ASIMDDP",), "NEON dot product"),
                        (("ASIMD",), "NEON")):
        if have.issuperset(needs):
            return name
    return "baseline"


def cpu_fingerprint() -> dict[str, Any]:
    """Everything a measured choice depends on apart from the model: the CPU, its cores and the runtimes."""

    try:

        llama_version = version("llama_cpp_python")
    except Exception:  # a missing distribution record only weakens the key
        llama_version = ""
    features = cpu_features()
    return {"cpu": _cpu_name(), "class": cpu_class(features), "features": features,
            "system": platform.system(), "machine": platform.machine(),
            "logical": os.cpu_count() or 1, "physical": psutil.cpu_count(logical=False) or 0,
            "onnxruntime": ort.__version__, "llama_cpp_python": llama_version}


def model_key(manifest: ModelManifest) -> str:
    """The sha256 of the model's two files as model.json records them (verified before any load)."""
    parts = []
    for name in (VISION_FILE, LLM_FILE):
        entry = manifest.files.get(name, {})
        parts.append(f"{name}:{entry.get('sha256') or entry.get('size')}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _key(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def tuning_dir() -> Path:

    return cache_dir().parent / SUBDIR


def cache_path(model: str, fingerprint: dict[str, Any]) -> Path:
    return tuning_dir() / f"{model[:32]}-{_key(fingerprint)[:16]}.json"


# -- reading and writing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tuned:
    """Measured settings and what was measured (``report``: per choice, the candidates' times and the winner)."""

    settings: RuntimeSettings
    report: dict[str, Any]
    fingerprint: dict[str, Any]
    measured_now: bool


def read_cached(model: str, fingerprint: dict[str, Any]) -> Tuned | None:
    """The cached entry for this model and CPU, or None when there is none we can trust."""
    path = cache_path(model, fingerprint)
    # Half-written, garbage, too big or not a file: set aside as <name>.damaged with one warning, then measured
    # again and rewritten (engine.durable.read_state_file).
    raw = durable.read_state_file(path, _parse_entry, what="tuning cache", max_bytes=MAX_FILE_BYTES).value
    if raw is None:
        return None
    if raw.get("format") != FORMAT or raw.get("model") != model or raw.get("cpu") != fingerprint:
        log.debug("Ignoring the tuning cache %s: made for another format, model or CPU.", path)
        return None
    settings = settings_from_dict(raw.get("settings"))
    if settings is None:
        log.debug("Ignoring the tuning cache %s: a setting is outside the known choices.", path)
        return None
    report = raw.get("report")
    return Tuned(settings, report if isinstance(report, dict) else {}, fingerprint, measured_now=False)


def _parse_entry(data: bytes) -> dict[str, Any]:
    raw = json.loads(data.decode("utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"a JSON {type(raw).__name__}, not an object")
    return raw


def write_cached(model: str, tuned: Tuned) -> Path | None:
    """Store the entry atomically; None when the cache folder is not writable (the next load measures again)."""
    path = cache_path(model, tuned.fingerprint)
    entry = {"format": FORMAT, "model": model, "cpu": tuned.fingerprint, "settings": asdict(tuned.settings),
             "report": tuned.report, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(entry, indent=1), encoding="utf-8")
        os.replace(partial, path)
    except OSError as e:
        log.warning("Could not save the measured settings in %s (%s); the next start measures again.", path, e)
        with contextlib.suppress(OSError):
            partial.unlink()
        return None
    return path


def load_average() -> float:
    """The 1-minute load average: above the CPU count, other work shared the cores and timings are noisy."""

    try:
        return round(float(psutil.getloadavg()[0]), 2)
    except (OSError, AttributeError):
        return 0.0


def measured_while_busy(report: dict[str, Any]) -> bool:
    """Whether the report says the CPU was busy while it measured (a report from a file may hold anything)."""
    load, cpus = report.get("load_average"), report.get("logical_cpus")
    if not isinstance(load, list) or not all(isinstance(x, (int, float)) for x in load) or not load \
            or not isinstance(cpus, int) or cpus < 1:
        return False
    return bool(max(load) > cpus)


def tuning_enabled() -> bool:
    return os.environ.get("GLIMPSE_TUNE", "1").strip().lower() not in ("0", "no", "off", "false")


StatusFn = Callable[[str, int, int], None]
