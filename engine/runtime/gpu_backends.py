"""llama.cpp's Vulkan backend: found, loaded and described without trusting it.

The portable llama.cpp build (packaging/build-llama-wheel.sh) ships ``libggml-vulkan.so`` beside the CPU variants, as
one more dynamically loaded ggml backend. It links only the Vulkan loader (``libvulkan.so.1``, ``vulkan-1.dll``); the
GPU vendor's driver is found by the loader at run time. llama-cpp-python has no call that loads a dynamic backend,
so the engine loads it through ggml's own ``ggml_backend_load`` into the same ggml core library libllama uses, before
the model opens; llama.cpp then offloads to the devices it registered.

Nothing here is trusted before it has been seen to work: the backend is loaded only in the kernel canary's throwaway
process and in the model's runner process (engine/runtime/canary.py proves a device before any model uses it), and
each way of not having a usable GPU is one sentence (:class:`GpuUnavailable`), after which the CPU answers.

A native llama-cpp-python built with ``-DGGML_VULKAN=on`` has the backend linked in: it is used as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glimpse.engine.errors import GlimpseError
from glimpse.engine.runtime.cpu_backends import bind, llama_lib_dir, load_cpu_backends, open_ggml

DEVICES = ("auto", "cpu", "gpu")  # what a user chooses: --device, Settings
# Environment variables that change which Vulkan devices and drivers llama.cpp sees or how it computes: part of
# what the canary's verdict for a GPU is keyed by.
VULKAN_ENV = ("GGML_VK_VISIBLE_DEVICES", "GGML_VK_DISABLE_F16", "GGML_VK_DISABLE_COOPMAT", "GGML_VK_DISABLE_COOPMAT2",
              "GGML_VK_DISABLE_INTEGER_DOT_PRODUCT", "GGML_VK_DISABLE_BFLOAT16", "VK_ICD_FILENAMES",
              "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES", "VK_LOADER_DRIVERS_SELECT", "VK_LOADER_DRIVERS_DISABLE")
# ggml_backend_dev_type
_DEV_TYPES = {0: "CPU", 1: "GPU", 2: "integrated GPU", 3: "accelerator", 4: "meta"}

INSTALL_LINUX = ("Install your GPU's Vulkan driver: on Debian and Ubuntu `sudo apt install mesa-vulkan-drivers` for "
                 "Intel and AMD graphics, the nvidia-driver package for NVIDIA.")

NO_VULKAN_BACKEND = "This llama.cpp build has no Vulkan backend, so the GPU is not used."
NO_VULKAN_HINT = ("Use the packaged Glimpse, which has one, or reinstall llama-cpp-python with "
                  "CMAKE_ARGS=\"-DGGML_VULKAN=on\" (needs glslc and the Vulkan headers).")


class GpuUnavailable(GlimpseError):
    """No usable GPU for llama.cpp: the sentence says why, the hint what would give one."""


@dataclass(frozen=True)
class GpuDevice:
    """One device a GPU backend registered: ggml's name ("Vulkan0"), its description (the device's own name),
    its kind ("GPU", "integrated GPU") and its memory in bytes as the driver reports it."""

    name: str
    description: str
    kind: str
    memory_free: int
    memory_total: int


@dataclass(frozen=True)
class GpuBackend:
    """A loaded GPU backend: its ggml name ("Vulkan"), the library file (None when linked into llama.cpp) and its
    devices (at least one)."""

    name: str
    library: Path | None
    devices: tuple[GpuDevice, ...]


_loaded: list[GpuBackend] = []


def _backend_file_name() -> str:
    return "ggml-vulkan.dll" if sys.platform == "win32" else "libggml-vulkan.so"


def loader_name() -> str:
    """The Vulkan loader's file name on this OS."""
    if sys.platform == "win32":
        return "vulkan-1.dll"
    return "libvulkan.1.dylib" if sys.platform == "darwin" else "libvulkan.so.1"


def vulkan_library(lib_dir: Path | None = None) -> Path | None:
    """llama.cpp's Vulkan backend library in ``lib_dir`` (default: llama_cpp's), if the build has one."""
    path = (lib_dir if lib_dir is not None else llama_lib_dir()) / _backend_file_name()
    return path if path.is_file() else None


class _DevProps(ctypes.Structure):
    # struct ggml_backend_dev_props (ggml-backend.h); only the fields before ``caps`` are read
    _fields_ = [("name", ctypes.c_char_p), ("description", ctypes.c_char_p), ("memory_free", ctypes.c_size_t),
                ("memory_total", ctypes.c_size_t), ("type", ctypes.c_int), ("device_id", ctypes.c_char_p),
                ("caps", ctypes.c_bool * 8)]


def _devices(ggml: ctypes.CDLL, reg: int) -> tuple[GpuDevice, ...]:
    count = bind(ggml, "ggml_backend_reg_dev_count", [ctypes.c_void_p], ctypes.c_size_t)
    get = bind(ggml, "ggml_backend_reg_dev_get", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p)
    props = bind(ggml, "ggml_backend_dev_get_props", [ctypes.c_void_p, ctypes.POINTER(_DevProps)], None)
    found = []
    for i in range(int(count(reg))):
        dev = get(reg, i)
        p = _DevProps()
        props(dev, ctypes.byref(p))
        found.append(GpuDevice((p.name or b"").decode("utf-8", "replace"),
                               (p.description or b"").decode("utf-8", "replace"),
                               _DEV_TYPES.get(int(p.type), f"type {p.type}"), int(p.memory_free), int(p.memory_total)))
    return tuple(found)


def load_gpu_backend(lib_dir: Path | None = None) -> GpuBackend:
    """Load llama.cpp's Vulkan backend into this process (once) and return its devices.

    Raises :class:`GpuUnavailable` with one sentence when the build has no Vulkan backend, the Vulkan loader is not
    installed, the backend does not load, or Vulkan finds no device llama.cpp can use. The CPU backend is loaded
    first (its best variant alone, never every backend in the folder), so a failure here leaves the CPU usable.
    """
    if _loaded:
        return _loaded[0]
    folder = lib_dir if lib_dir is not None else llama_lib_dir()
    load_cpu_backends(folder)
    try:
        ggml = open_ggml(folder)
    except (OSError, AttributeError) as e:
        raise GpuUnavailable(f"llama.cpp's core library could not be opened in {folder} ({e}), so the GPU is not "
                             "used.", "Reinstall Glimpse: the installation is incomplete.") from e
    library = vulkan_library(folder)
    reg = ggml.reg_by_name(b"Vulkan")
    linked = bool(reg)
    if not linked:
        if library is None:
            raise GpuUnavailable(
                NO_VULKAN_BACKEND, NO_VULKAN_HINT)
        try:
            ctypes.CDLL(loader_name())
        except OSError as e:
            raise GpuUnavailable(
                f"The Vulkan loader ({loader_name()}) is not installed, so the GPU is not used.",
                "Install it with your GPU's driver: on Debian and Ubuntu `sudo apt install libvulkan1 "
                "mesa-vulkan-drivers` (Intel and AMD) or the nvidia-driver package; on Windows, your GPU vendor's "
                "driver.") from e
        reg = ggml.load(str(library).encode())
        if not reg:
            raise GpuUnavailable("llama.cpp's Vulkan backend could not be loaded, so the GPU is not used.",
                                 "Update your GPU's driver; the log names what failed.")
    devices = _devices(ggml.lib, reg)
    if not devices:
        raise GpuUnavailable("Vulkan found no GPU that llama.cpp can use, so the GPU is not used.", INSTALL_LINUX)
    _loaded.append(GpuBackend("Vulkan", None if linked else library, devices))
    return _loaded[0]


def gpu_loaded() -> GpuBackend | None:
    """The GPU backend this process loaded, if any."""
    return _loaded[0] if _loaded else None


# -- what decides whether a verdict about a GPU still holds ---------------------------------------------------------

def _icd_folders() -> list[Path]:
    """Where the Vulkan loader looks for driver manifests (Linux; the loader's documented search path)."""
    home = Path.home()
    config = [Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")]
    config += [Path(p) for p in (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if p]
    data = [Path(os.environ.get("XDG_DATA_HOME") or home / ".local/share")]
    data += [Path(p) for p in (os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share").split(":") if p]
    return [*(c / "vulkan/icd.d" for c in config), Path("/etc/vulkan/icd.d"), *(d / "vulkan/icd.d" for d in data)]


def driver_identity() -> dict[str, Any]:
    """What identifies the Vulkan drivers installed here without running any of them: each driver manifest's path
    and content digest, the size and time of the library it names, the loader's file, and the variables that steer
    the loader and llama.cpp's Vulkan backend. A driver update, a new GPU driver or a changed variable gives a new
    identity, so the canary proves the GPU again."""
    manifests = []
    for folder in _icd_folders():
        with contextlib.suppress(OSError):
            for path in sorted(folder.glob("*.json")):
                with contextlib.suppress(OSError, ValueError):
                    data = path.read_bytes()[:65536]
                    entry: list[Any] = [str(path), hashlib.sha256(data).hexdigest()[:16]]
                    lib = json.loads(data).get("ICD", {}).get("library_path", "")
                    if isinstance(lib, str) and lib:
                        target = Path(lib) if Path(lib).is_absolute() else path.parent / lib
                        with contextlib.suppress(OSError):
                            st = target.stat()  # a bare file name resolves through the linker's path: name only
                            entry += [st.st_size, st.st_mtime_ns]
                        entry.append(lib)
                    manifests.append(entry)
    return {"loader": _loader_file(), "drivers": manifests,
            "env": {k: os.environ[k] for k in VULKAN_ENV if k in os.environ}}


def _loader_file() -> list[Any] | None:
    """The Vulkan loader's file where the dynamic linker would find it (path, size, time), without loading it; None
    when it is not installed. The linker's cache is not asked: it still names a file that was removed."""
    if sys.platform == "win32":
        folders = [Path(os.environ.get("SYSTEMROOT", r"C:\Windows")) / "System32"]
    elif sys.platform == "darwin":
        found = ctypes.util.find_library("vulkan")
        folders = [Path(found).parent] if found else []
    else:
        arch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
        folders = [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        folders += [Path(root) / sub for root in ("/lib", "/usr/lib", "/usr/local/lib") for sub in (arch, "")]
        folders += [Path("/lib64"), Path("/usr/lib64")]
    for folder in folders:
        path = folder / loader_name()
        with contextlib.suppress(OSError):
            st = path.stat()
            return [str(path), st.st_size, st.st_mtime_ns]
    return None


# -- how much of the model the device holds ---------------------------------------------------------------------------

def layers_that_fit(layer_bytes: list[int], other_bytes: int, free_bytes: int, *, reserve_bytes: int) -> int:
    """How many of a model's repeating layers (``layer_bytes`` each, weights and KV cache) go on a device with
    ``free_bytes`` free, after ``reserve_bytes`` for compute buffers and the driver; ``other_bytes`` (the output
    layer, placed on the device only when every repeating layer is) counts as one more layer. The result is what
    llama.cpp's ``n_gpu_layers`` takes: len(layer_bytes) + 1 puts the whole model on the device."""
    budget = free_bytes - reserve_bytes
    placed = 0
    for size in layer_bytes:
        if size > budget:
            return placed
        budget -= size
        placed += 1
    return placed + 1 if other_bytes <= budget else placed


# -- the driver's own name for itself ---------------------------------------------------------------------------------

class _AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]


class _InstanceInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(_AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


class _DriverProps(ctypes.Structure):
    # VkPhysicalDeviceDriverProperties (Vulkan 1.2)
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("driverID", ctypes.c_uint32),
                ("driverName", ctypes.c_char * 256), ("driverInfo", ctypes.c_char * 256),
                ("conformanceVersion", ctypes.c_uint8 * 4)]


class _Props2(ctypes.Structure):
    # VkPhysicalDeviceProperties2: the properties themselves start with apiVersion, driverVersion, vendorID,
    # deviceID, deviceType and deviceName[256]; the limits after them are not read (the buffer covers them).
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("apiVersion", ctypes.c_uint32),
                ("driverVersion", ctypes.c_uint32), ("vendorID", ctypes.c_uint32), ("deviceID", ctypes.c_uint32),
                ("deviceType", ctypes.c_int), ("deviceName", ctypes.c_char * 256), ("rest", ctypes.c_uint8 * 2048)]


_VK_STRUCTURE_TYPE_APPLICATION_INFO = 0
_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
_VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2 = 1000059001
_VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES = 1000196000
_VK_API_VERSION_1_2 = (1 << 22) | (2 << 12)


def vulkan_drivers() -> dict[str, str]:
    """Each Vulkan device's name with its driver's own description ("llvmpipe, Mesa 22.3.6 (LLVM 15.0.6)",
    "NVIDIA, 550.54.14"), asked from the Vulkan loader directly. Empty when there is no loader or no device.
    Runs the drivers' code: only the canary's and the runner's processes call it."""
    try:
        vk = ctypes.CDLL(loader_name())
    except OSError:
        return {}
    create = bind(vk, "vkCreateInstance", [ctypes.POINTER(_InstanceInfo), ctypes.c_void_p,
                                              ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int)
    destroy = bind(vk, "vkDestroyInstance", [ctypes.c_void_p, ctypes.c_void_p], None)
    enum = bind(vk, "vkEnumeratePhysicalDevices", [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                                    ctypes.POINTER(ctypes.c_void_p)], ctypes.c_int)
    props2 = bind(vk, "vkGetPhysicalDeviceProperties2", [ctypes.c_void_p, ctypes.POINTER(_Props2)], None)
    app = _AppInfo(_VK_STRUCTURE_TYPE_APPLICATION_INFO, None, b"Glimpse", 1, b"Glimpse", 1, _VK_API_VERSION_1_2)
    info = _InstanceInfo(_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, None, 0, ctypes.pointer(app), 0, None, 0, None)
    instance = ctypes.c_void_p()
    if create(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
        return {}
    found: dict[str, str] = {}
    try:
        count = ctypes.c_uint32(0)
        if enum(instance, ctypes.byref(count), None) != 0 or count.value == 0:
            return {}
        handles = (ctypes.c_void_p * count.value)()
        if enum(instance, ctypes.byref(count), handles) not in (0, 5):  # VK_INCOMPLETE is 5
            return {}
        for handle in handles[: count.value]:
            driver = _DriverProps(_VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES, None)
            p = _Props2(_VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, ctypes.cast(ctypes.pointer(driver),
                                                                                     ctypes.c_void_p))
            props2(handle, ctypes.byref(p))
            name = p.deviceName.decode("utf-8", "replace")
            parts = [x.decode("utf-8", "replace") for x in (driver.driverName, driver.driverInfo) if x]
            found[name] = ", ".join(parts) or f"driver version {p.driverVersion:#x}"
    finally:
        destroy(instance, None)
    return found
