"""Facts about the machine the engine runs on."""

from __future__ import annotations

import contextlib
import os
import signal
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


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """On Linux, have the kernel kill this process (SIGKILL) when its parent dies, for Glimpse's helper processes:
    the model's runner, and the checks the runner starts (a hung driver in a check must not outlive a runner that
    was killed, nor a window that was closed). Strictly, the kernel watches the thread that started this process,
    which in Glimpse waits for it to end."""
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: PLC0415 (start-up: every command imports this module; only helpers need ctypes)

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
