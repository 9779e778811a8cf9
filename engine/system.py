"""Facts about the machine the engine runs on."""

from __future__ import annotations

import os
import sys

import psutil


def default_threads() -> int:
    """Physical cores: onnxruntime and llama.cpp gain nothing from hyper-threads and lose time to contention."""
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (falls back to the current RSS where the OS keeps no peak)."""
    info = psutil.Process().memory_info()
    return int(getattr(info, "peak_wset", 0) or _ru_maxrss() or info.rss)


def _ru_maxrss() -> int:
    try:
        # Platform: Windows has no resource module.
        import resource  # noqa: PLC0415
    except ImportError:  # Windows
        return 0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib if sys.platform == "darwin" else kib * 1024)


def self_command(entry: str, *args: str) -> list[str]:
    """The command line that runs ``glimpse <entry> ARGS`` with this very program: the frozen bundle's executable,
    or this Python running the engine's command line. Helper processes (the model's runner, the kernel canary) are
    started this way, so they run the same code and native libraries as their parent, from a source tree, a wheel,
    the bundle or the Debian package alike."""
    if getattr(sys, "frozen", False):
        return [sys.executable, entry, *args]
    return [sys.executable, "-m", "glimpse.engine", entry, *args]
