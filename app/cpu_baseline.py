"""The launcher's first check: does this processor have the instructions Glimpse's native libraries need?

Run before NumPy, Qt, onnxruntime or llama.cpp are imported, because each of them, built for a baseline the CPU
lacks, dies with an illegal instruction (or NumPy's import error, or Qt's abort) instead of saying what is wrong.
llama.cpp picks its own kernels at run time (engine/runtime/cpu_backends.py) and onnxruntime dispatches, so the floor is
set by the prebuilt NumPy and Qt wheels: x86-64-v2 (SSE4.2, POPCNT, SSSE3, CMPXCHG16B; Intel since 2008, AMD since
2011). Only standard-library code runs here.

Flags come from the CPUID instruction itself, not from /proc/cpuinfo: user-mode emulators (qemu-user, which CI
uses to stand in for other processors) pass the host's /proc/cpuinfo through but emulate CPUID.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from collections.abc import Callable

# (name users and spec sheets know it by, CPUID leaf, register, bit)
BASELINE: tuple[tuple[str, int, str, int], ...] = (
    ("SSE3", 1, "ecx", 0),
    ("SSSE3", 1, "ecx", 9),
    ("CMPXCHG16B", 1, "ecx", 13),
    ("SSE4.1", 1, "ecx", 19),
    ("SSE4.2", 1, "ecx", 20),
    ("POPCNT", 1, "ecx", 23),
    ("LAHF-SAHF", 0x80000001, "ecx", 0),
)

# The same features as Linux names them in /proc/cpuinfo (the fallback where CPUID cannot be run).
_PROC_NAMES = {"SSE3": "pni", "SSSE3": "ssse3", "CMPXCHG16B": "cx16", "SSE4.1": "sse4_1", "SSE4.2": "sse4_2",
               "POPCNT": "popcnt", "LAHF-SAHF": "lahf_lm"}

# x86-64 System V: cpuid(leaf=edi, subleaf=esi, out=rdx) stores eax, ebx, ecx, edx to out[0..3].
_CPUID_SYSV = bytes.fromhex(
    "53"          # push rbx (callee-saved, cpuid overwrites it)
    "89f8"        # mov eax, edi
    "89f1"        # mov ecx, esi
    "4989d0"      # mov r8, rdx
    "0fa2"        # cpuid
    "418900"      # mov [r8], eax
    "41895804"    # mov [r8+4], ebx
    "41894808"    # mov [r8+8], ecx
    "4189500c"    # mov [r8+12], edx
    "5b"          # pop rbx
    "c3"          # ret
)

Registers = dict[str, int]
CpuidFn = Callable[[int], Registers]


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


class _NativeCpuid:
    """CPUID through a few bytes of machine code in an executable page, which lives as long as this object."""

    def __init__(self, page: mmap.mmap) -> None:
        page.write(_CPUID_SYSV)
        self._page = page
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        prototype = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))
        self._fn = prototype(address)

    def __call__(self, leaf: int) -> Registers:
        out = (ctypes.c_uint32 * 4)()
        self._fn(leaf, 0, out)
        return dict(zip(("eax", "ebx", "ecx", "edx"), out, strict=True))


def native_cpuid() -> CpuidFn | None:
    """This processor's CPUID; None where the OS refuses an executable page (hardened runtimes) or the calling
    convention differs (Windows)."""
    if not is_x86_64() or sys.platform == "win32":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    return _NativeCpuid(page)


def missing_from_cpuid(cpuid: CpuidFn) -> list[str]:
    """Baseline features the processor behind ``cpuid`` lacks, in BASELINE order."""
    highest = {0: cpuid(0)["eax"], 0x80000000: cpuid(0x80000000)["eax"]}
    missing = []
    for name, leaf, register, bit in BASELINE:
        base = leaf & 0x80000000
        if leaf > highest[base] or not (cpuid(leaf)[register] >> bit) & 1:
            missing.append(name)
    return missing


def missing_from_proc_flags(flags: set[str]) -> list[str]:
    """Baseline features absent from a /proc/cpuinfo ``flags`` set."""
    return [name for name, *_ in BASELINE if _PROC_NAMES[name] not in flags]


def proc_cpuinfo_flags(text: str) -> set[str] | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def missing_features(cpuid: CpuidFn | None = None, cpuinfo: str | None = None) -> list[str] | None:
    """What this processor lacks of the baseline; None where it cannot be told (then nothing is claimed).

    ``cpuid`` and ``cpuinfo`` replace the real sources (tests); by default CPUID is run, then /proc/cpuinfo read.
    """
    if cpuid is None and cpuinfo is None:
        if not is_x86_64():
            return None
        cpuid = native_cpuid()
        if cpuid is None:
            try:
                with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                    cpuinfo = f.read()
            except OSError:
                return None
    if cpuid is not None:
        return missing_from_cpuid(cpuid)
    flags = proc_cpuinfo_flags(cpuinfo or "")
    return None if flags is None else missing_from_proc_flags(flags)


def baseline_message(missing: list[str] | None) -> str | None:
    """The one sentence for a processor below the baseline, or None when it is fine (or unknown)."""
    if not missing:
        return None
    return (f"Glimpse cannot run on this processor: it lacks {', '.join(missing)}, which Glimpse needs "
            "(an x86-64 CPU from 2009 or later: Intel Core i3/i5/i7 or newer, AMD Bulldozer or newer).")
