"""Before the QApplication exists on Linux: can the window system Qt will use actually load?

Without this, a machine that lacks one of the X libraries Qt's xcb plugin links (libxcb-cursor0, libxcb-icccm4...)
gets Qt's own "Could not load the Qt platform plugin" and an abort, which names neither the library nor the fix.
Here the plugin's shared-library dependencies are resolved with ``ldd`` (in a child process, so nothing is loaded
into this one); the Wayland plugin is only a choice when a compositor socket exists. When the platform Qt would pick
cannot load and the other one can, Glimpse falls back to it; when neither can, it says in one sentence which
packages to install, for apt, dnf and pacman.

No Qt is imported here: this runs before Qt could fail.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

XCB, WAYLAND = "xcb", "wayland"
PLUGIN_FILES = {XCB: ("libqxcb.so",), WAYLAND: ("libqwayland.so", "libqwayland-generic.so")}
LDD_TIMEOUT_S = 20

# Library file -> (apt, dnf, pacman) package. The X libraries first: Qt's xcb plugin links all of them, and stock
# installs of desktop distributions often lack the xcb-util ones.
PACKAGES: dict[str, tuple[str, str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util", "xcb-util"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon", "libxkbcommon"),
    "libxcb.so.1": ("libxcb1", "libxcb", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb", "libx11"),
    "libX11.so.6": ("libx11-6", "libX11", "libx11"),
    "libSM.so.6": ("libsm6", "libSM", "libsm"),
    "libICE.so.6": ("libice6", "libICE", "libice"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl", "libglvnd"),
    "libGL.so.1": ("libgl1", "libglvnd-glx", "libglvnd"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx", "libglvnd"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl", "libglvnd"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype", "freetype2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs", "dbus"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2", "glib2"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client", "wayland"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor", "wayland"),
    "libwayland-egl.so.1": ("libwayland-egl1", "libwayland-egl", "wayland"),
}
# The rest of libxcb's extension libraries: one package each on Debian, all in libxcb elsewhere.
_XCB_EXTENSION = re.compile(r"libxcb-([a-z0-9]+)\.so\.(\d+)$")
_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


@dataclass(frozen=True)
class Outcome:
    """``platform``: what QT_QPA_PLATFORM was set to (a fallback), or "" when Qt's own choice stands;
    ``problem``: the sentence to print instead of starting, or "" when the window can open."""

    platform: str = ""
    problem: str = ""


def packages_for(library: str) -> tuple[str, str, str] | None:
    known = PACKAGES.get(library)
    if known is not None:
        return known
    match = _XCB_EXTENSION.match(library)
    if match:
        return (f"libxcb-{match.group(1)}{match.group(2)}", "libxcb", "libxcb")
    return None


def missing_libraries(ldd_output: str) -> list[str]:
    """The library files ``ldd`` could not find, in its order, without repeats."""
    return list(dict.fromkeys(_NOT_FOUND.findall(ldd_output)))


def fix_sentence(platform: str, missing: list[str]) -> str:
    """One sentence: what is missing and the install command for apt, dnf and pacman."""
    known = [p for p in (packages_for(lib) for lib in missing) if p is not None]
    unknown = [lib for lib in missing if packages_for(lib) is None]
    libs = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    them = "them" if len(missing) > 1 else "it"
    head = f"Glimpse cannot open its window: Qt's {platform} platform needs {libs}, which this system lacks"
    commands = []
    if known:
        apt, dnf, pacman = (" ".join(dict.fromkeys(p[i] for p in known)) for i in range(3))
        commands.append(f"`sudo apt install {apt}` (Debian, Ubuntu), `sudo dnf install {dnf}` (Fedora) or "
                        f"`sudo pacman -S {pacman}` (Arch)")
    if unknown:
        files = " ".join(unknown)
        commands.append(f"the package that provides {files} (`apt-file search {unknown[0]}`, "
                        f"`dnf provides '*/{unknown[0]}'` or `pacman -F {unknown[0]}` finds it)")
    return f"{head}; install {them} with {' and '.join(commands)}, then start Glimpse again."


def plugin_dirs(env: Mapping[str, str]) -> list[Path]:
    """Where Qt looks for platform plugins: QT_QPA_PLATFORM_PLUGIN_PATH, QT_PLUGIN_PATH, then PySide6's own."""
    dirs = [Path(p) for p in env.get("QT_QPA_PLATFORM_PLUGIN_PATH", "").split(os.pathsep) if p]
    dirs += [Path(p) / "platforms" for p in env.get("QT_PLUGIN_PATH", "").split(os.pathsep) if p]
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        dirs.append(Path(bundle) / "PySide6" / "Qt" / "plugins" / "platforms")
    else:
        spec = importlib.util.find_spec("PySide6")
        for location in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(Path(location) / "Qt" / "plugins" / "platforms")
    return dirs


def find_plugin(platform: str, env: Mapping[str, str]) -> Path | None:
    for folder in plugin_dirs(env):
        for name in PLUGIN_FILES[platform]:
            if (folder / name).is_file():
                return folder / name
    return None


def unresolved(plugin: Path, env: Mapping[str, str]) -> list[str] | None:
    """The libraries the plugin links that the dynamic loader cannot find; None when that cannot be told here."""
    ldd = shutil.which("ldd", path=env.get("PATH") or os.defpath)
    if ldd is None:
        return None
    try:
        result = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, errors="replace",
                                env=dict(env), timeout=LDD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("could not check %s with ldd: %s", plugin, e)
        return None
    return missing_libraries(result.stdout + result.stderr)


def wayland_socket(env: Mapping[str, str]) -> Path | None:
    name = env.get("WAYLAND_DISPLAY", "")
    if not name:
        return None
    path = Path(name) if os.path.isabs(name) else Path(env.get("XDG_RUNTIME_DIR", "/nonexistent")) / name
    try:
        return path if stat.S_ISSOCK(path.stat().st_mode) else None
    except OSError:
        return None


def candidates(env: Mapping[str, str]) -> list[str] | None:
    """The platforms to try, Qt's own choice first; None when Qt was told to use a platform other than these two
    (offscreen, vnc, eglfs...), which is left alone."""
    asked = [p.split(":", 1)[0].strip() for p in env.get("QT_QPA_PLATFORM", "").split(";") if p.strip()]
    if asked:
        first = WAYLAND if asked[0].startswith(WAYLAND) else asked[0]
        if first not in (XCB, WAYLAND):
            return None
    elif env.get("XDG_SESSION_TYPE") == WAYLAND:
        first = WAYLAND
    else:
        first = XCB
    return [first, WAYLAND if first == XCB else XCB]


def platform_display(env: Mapping[str, str], platform: str) -> str | None:
    """What the platform would connect to (the X display or the Wayland socket), or None when there is none."""
    if platform == XCB:
        return env.get("DISPLAY") or None
    socket = wayland_socket(env)
    return str(socket) if socket else None


def choose(env: Mapping[str, str]) -> Outcome:
    """Decide without changing anything: which platform to use, or the sentence saying what to install."""
    order = candidates(env)
    if order is None:
        return Outcome()
    lacking: dict[str, list[str]] = {}
    for platform in order:
        if platform_display(env, platform) is None:
            continue
        plugin = find_plugin(platform, env)
        if plugin is None:
            # A PySide6 without this plugin: Qt will say so itself, and nothing here could fix it.
            lacking[platform] = []
            continue
        missing = unresolved(plugin, env)
        if not missing:  # None: no ldd here, so let Qt try
            return Outcome(platform="" if platform == order[0] else platform)
        lacking[platform] = missing
    with_libs = [(p, libs) for p, libs in lacking.items() if libs]
    if with_libs:
        return Outcome(problem=fix_sentence(*with_libs[0]))
    if lacking:
        return Outcome()
    return Outcome(problem="Glimpse cannot open its window: there is no desktop session here (neither DISPLAY nor "
                           "a Wayland socket from WAYLAND_DISPLAY); start it from a desktop, or use its command line "
                           "(`glimpse --help`).")


_done: dict[str, Outcome] = {}  # this process's check, once made: the launcher checks before app.main can


def prepare(env: MutableMapping[str, str] | None = None) -> str:
    """On Linux, check the platform and set QT_QPA_PLATFORM to a fallback if needed; returns the sentence to print
    instead of starting, or "" to go on. Call it before importing PySide6's QtGui: that links X and GL libraries
    too, and would fail with an ImportError instead of this sentence."""
    if not sys.platform.startswith("linux"):
        return ""
    if env is None and "os.environ" in _done:
        return _done["os.environ"].problem
    environ: MutableMapping[str, str] = os.environ if env is None else env
    outcome = choose(environ)
    if env is None:
        _done["os.environ"] = outcome
    if outcome.platform:
        log.info("Qt's default platform cannot load here; using %s instead", outcome.platform)
        environ["QT_QPA_PLATFORM"] = outcome.platform
    return outcome.problem
