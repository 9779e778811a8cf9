"""llama.cpp's CPU kernels in a portable build: one library per CPU variant, the best one chosen at run time.

A portable llama-cpp-python wheel (packaging/build-llama-wheel.sh: ``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``)
has no CPU backend linked into libggml; it ships ``libggml-cpu-<variant>.so`` (x64, sse42, haswell, skylakex, ...)
next to libllama, and ggml scores each against the running CPU and loads the best. Left to itself, ggml looks for
them next to the executable (for a venv, python's real path in /usr/bin) and in the current folder, which must
never decide what native code Glimpse runs. So the engine points ggml at llama_cpp's own lib folder before the
first model opens; llama.cpp then finds a backend already registered and searches nowhere else.

A caller may also name the variant (``load_cpu_backends(variant=...)``): the kernel canary (engine/runtime/canary.py)
steps down to a lower variant, or to the generic one, when the best one crashes or computes wrong numbers on this CPU.
``variant_scores`` asks each library what ggml asks it (its ``ggml_backend_score``: 0 when this CPU cannot run it,
more for more instruction-set features), so "lower" means what ggml itself ranks lower.

A native build (the CPU backend linked in, no variant files) is left exactly as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.errors import GlimpseError


class CpuBackendError(GlimpseError):
    """llama.cpp's CPU kernels could not be loaded."""


@dataclass(frozen=True)
class CpuBackends:
    """What :func:`load_cpu_backends` found: the lib folder, the variant files in it, and the one in use."""

    lib_dir: Path
    variants: tuple[str, ...]
    loaded: str | None  # the variant's file name where the OS says which one is mapped (Linux), else None


_loaded: list[CpuBackends] = []  # at most one: ggml registers a backend once per process


def _ggml_file_names() -> tuple[str, str, str]:
    """(prefix of a variant file, its suffix, the core ggml library) for this OS, as ggml names them."""
    if sys.platform == "win32":
        return "ggml-cpu-", ".dll", "ggml.dll"
    core = "libggml.dylib" if sys.platform == "darwin" else "libggml.so"
    return "libggml-cpu-", ".so", core


def core_library(folder: Path) -> Path:
    """The ggml core library that libllama itself links: its soname file (libggml.so.0, libggml.0.dylib).

    A wheel cannot hold symlinks, so libggml.so and libggml.so.0 are two copies of one library; opening the
    unversioned one would give a second ggml with its own, empty backend registry, and llama.cpp would then
    find "no backends are loaded".
    """
    _, _, core = _ggml_file_names()
    versioned = {"libggml.so": "libggml.so.0", "libggml.dylib": "libggml.0.dylib"}.get(core)
    if versioned and (folder / versioned).exists():
        return folder / versioned
    return folder / core


def bind(lib: ctypes.CDLL, name: str, args: list[Any], res: Any) -> Any:
    """``lib``'s C function ``name`` with its argument and result types set (AttributeError when it is missing)."""
    fn = getattr(lib, name)
    fn.argtypes = args
    fn.restype = res
    return fn


@dataclass(frozen=True)
class Ggml:
    """ggml's core library (the one libllama links) and the backend registry functions the engine calls:
    ``load(path)`` (ggml_backend_load) and ``reg_by_name(name)`` (ggml_backend_reg_by_name), each returning a
    registry handle or None."""

    lib: ctypes.CDLL
    load: Any
    reg_by_name: Any


def open_ggml(folder: Path) -> Ggml:
    """:class:`Ggml` for the llama.cpp libraries in ``folder``; OSError or AttributeError when the library or one of
    its functions is missing (engine/internals.py pins them)."""
    lib = ctypes.CDLL(str(core_library(folder)))
    return Ggml(lib, bind(lib, "ggml_backend_load", [ctypes.c_char_p], ctypes.c_void_p),
                bind(lib, "ggml_backend_reg_by_name", [ctypes.c_char_p], ctypes.c_void_p))


def variant_files(lib_dir: Path) -> tuple[str, ...]:
    """Names of the CPU variant libraries in ``lib_dir``, sorted; empty for a native build."""
    prefix, suffix, _ = _ggml_file_names()
    try:
        names = [p.name for p in lib_dir.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
    except OSError:
        return ()
    return tuple(sorted(names))


def llama_lib_dir() -> Path:
    """llama_cpp's own folder of native libraries (in the frozen app too: the spec collects them there)."""
    import llama_cpp  # noqa: PLC0415 (about 0.5 s at start-up; only a model load and the self-test ask)

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def mapped_variant(maps_text: str) -> str | None:
    """The CPU variant library named in a /proc/self/maps text, if exactly one is mapped."""
    prefix, suffix, _ = _ggml_file_names()
    found = {line.rsplit("/", 1)[-1] for line in maps_text.splitlines()
             if f"/{prefix}" in line and line.rstrip().endswith(suffix)}
    return found.pop() if len(found) == 1 else None


def _read_maps() -> str:
    try:
        return Path("/proc/self/maps").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def variant_scores(lib_dir: Path) -> dict[str, int]:
    """Each CPU variant library in ``lib_dir`` with the score ggml gives it on this CPU (0: it cannot run here).

    The libraries are opened and closed again, as ggml's own choice does; empty for a native build. A file that
    cannot be opened, or has no score function, scores 0.
    """
    scores: dict[str, int] = {}
    if not variant_files(lib_dir):
        return scores
    with contextlib.suppress(OSError):
        ctypes.CDLL(str(core_library(lib_dir)))  # the variants link ggml's base library from this folder
    for name in variant_files(lib_dir):
        try:
            lib = ctypes.CDLL(str(lib_dir / name))
        except OSError:
            scores[name] = 0
            continue
        try:
            score = lib.ggml_backend_score
            score.argtypes = []
            score.restype = ctypes.c_int
            scores[name] = max(0, int(score()))
        except AttributeError:
            scores[name] = 0
        finally:
            _close(lib)
    return scores


def _close(lib: ctypes.CDLL) -> None:
    """Unmap a library opened only to ask it something (so /proc/self/maps names the loaded variant alone)."""
    if sys.platform == "win32":
        return
    # Platform: _ctypes.dlclose exists on POSIX only.
    import _ctypes  # noqa: PLC0415

    with contextlib.suppress(OSError):
        _ctypes.dlclose(lib._handle)


def best_variant(scores: dict[str, int], *, at_most: str | None = None, below: str | None = None) -> str | None:
    """The highest-scoring variant this CPU runs, not above ``at_most`` / strictly below ``below`` (by score);
    None when there is none."""
    ceiling = None
    if at_most is not None:
        ceiling = scores.get(at_most, 0)
    if below is not None:
        ceiling = scores.get(below, 0) - 1 if ceiling is None else min(ceiling, scores.get(below, 0) - 1)
    runnable = [(s, name) for name, s in scores.items() if s > 0 and (ceiling is None or s <= ceiling)]
    return max(runnable)[1] if runnable else None


def generic_variant(variants: tuple[str, ...]) -> str | None:
    """The variant that runs on every CPU of the architecture (x86-64's baseline ``x64``), if the build has one."""
    prefix, suffix, _ = _ggml_file_names()
    name = f"{prefix}x64{suffix}"
    return name if name in variants else None


def load_cpu_backends(lib_dir: Path | None = None, *, variant: str | None = None) -> CpuBackends | None:
    """Load the best CPU variant from ``lib_dir`` (default: llama_cpp's) once per process, or the one named
    ``variant`` (a file name from :func:`variant_files`).

    Returns None for a native build (``variant`` is then ignored). Raises :class:`CpuBackendError` if variants are
    there but none loads, if ``variant`` cannot run here, or if another variant is already loaded in this process
    (ggml keeps one CPU backend per process: a different one needs a new process).
    """
    if _loaded:
        current = _loaded[0]
        if variant is not None and current.loaded is not None and current.loaded != variant:
            raise CpuBackendError(f"llama.cpp's CPU kernels {current.loaded} are already loaded in this process, "
                                  f"so {variant} cannot be.", "Start Glimpse again.")
        return current
    folder = lib_dir if lib_dir is not None else llama_lib_dir()
    variants = variant_files(folder)
    if not variants:
        return None
    if variant is not None and variant not in variants:
        raise CpuBackendError(f"llama.cpp's CPU kernels {variant} are not in {folder}.",
                              "Reinstall Glimpse: the installation is incomplete.")
    try:
        ggml = open_ggml(folder)
    except (OSError, AttributeError) as e:
        raise CpuBackendError(f"llama.cpp's core library could not be opened in {folder} ({e}).",
                              "Reinstall Glimpse (or llama-cpp-python): the installation is incomplete.") from e
    load_one, by_name = ggml.load, ggml.reg_by_name
    if not by_name(b"CPU"):  # nothing registered it yet (a second registration would double the CPU device)
        # ggml's own load_all_from_path would also load every other backend in the folder (the Vulkan one: a GPU
        # that llama.cpp then offloads large batches to, even with no layer on it), so the best variant is picked
        # here, by the same scores ggml uses, and loaded alone.
        if variant is None:
            variant = best_variant(variant_scores(folder))  # None: no variant runs here, and the check below says so
        if variant is not None and not load_one(str(folder / variant).encode()):
            raise CpuBackendError(f"llama.cpp's CPU kernels {variant} cannot run on this processor.",
                                  "Choose another variant, or let Glimpse choose.")
    if not by_name(b"CPU"):
        raise CpuBackendError(f"None of llama.cpp's CPU kernels in {folder} ({', '.join(variants)}) can run on "
                              "this processor.", "Reinstall Glimpse: the x64 variant runs on every x86-64 CPU.")
    _loaded.append(CpuBackends(folder, variants, mapped_variant(_read_maps())))
    return _loaded[0]
