"""Before Qt starts on Linux: the platform plugin's libraries are checked, a fallback is taken when there is one,
and otherwise one sentence says what to install (app/platform_check.py); signals close the window cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from glimpse.app import platform_check as pc
from glimpse.app.lifecycle import close_on_signals

ROOT = Path(__file__).resolve().parents[2]
LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibxkbcommon-x11.so.0 => /lib/x86_64-linux-gnu/libxkbcommon-x11.so.0 (0x00007f8c)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-xinerama.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibfoo-unknown.so.3 => not found
"""


def test_missing_libraries_are_read_from_ldd() -> None:
    assert pc.missing_libraries(LDD_OUTPUT) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-xinerama.so.0",
                                                "libfoo-unknown.so.3"]
    assert pc.missing_libraries("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n") == []


def test_the_sentence_names_packages_for_apt_dnf_and_pacman() -> None:
    text = pc.fix_sentence("xcb", ["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libxcb-cursor.so.0"])
    assert text.count(".") >= 1 and "\n" not in text and text.endswith("start Glimpse again.")
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1 and libxcb-cursor.so.0" in text
    assert "`sudo apt install libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0`" in text
    assert "`sudo dnf install xcb-util-wm xcb-util-keysyms xcb-util-cursor`" in text
    assert "`sudo pacman -S xcb-util-wm xcb-util-keysyms xcb-util-cursor`" in text
    # libxcb's other extensions are one package each on Debian, all part of libxcb elsewhere; no repeats.
    text = pc.fix_sentence("xcb", ["libxcb-xinerama.so.0", "libxcb-randr.so.0"])
    assert "apt install libxcb-xinerama0 libxcb-randr0`" in text and "dnf install libxcb`" in text
    # An unknown library still gets a way to find its package.
    text = pc.fix_sentence("xcb", ["libfoo-unknown.so.3"])
    assert "needs libfoo-unknown.so.3" in text and "apt-file search libfoo-unknown.so.3" in text
    assert "pacman -F libfoo-unknown.so.3" in text and "install it with" in text


def test_which_platforms_are_tried() -> None:
    assert pc.candidates({}) == ["xcb", "wayland"]
    assert pc.candidates({"XDG_SESSION_TYPE": "wayland"}) == ["wayland", "xcb"]
    assert pc.candidates({"QT_QPA_PLATFORM": "wayland-egl;xcb"}) == ["wayland", "xcb"]
    assert pc.candidates({"QT_QPA_PLATFORM": "xcb:nomousegrab", "XDG_SESSION_TYPE": "wayland"}) == ["xcb", "wayland"]
    assert pc.candidates({"QT_QPA_PLATFORM": "offscreen"}) is None  # the tests, the self-test: left alone


def _wayland_socket(tmp_path: Path) -> tuple[socket.socket, dict[str, str]]:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "wayland-7"))
    return server, {"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-7"}


def test_falls_back_to_wayland_when_xcb_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lacking = {"libqxcb.so": ["libxcb-icccm.so.4"], "libqwayland.so": []}
    monkeypatch.setattr(pc, "unresolved", lambda plugin, _env: lacking[plugin.name])
    server, env = _wayland_socket(tmp_path)
    with server:
        env = {**env, "DISPLAY": ":0", "PATH": os.defpath}
        assert pc.choose(env) == pc.Outcome(platform="wayland")
        prepared = dict(env)
        assert pc.prepare(prepared) == "" and prepared["QT_QPA_PLATFORM"] == "wayland"
        # Without a compositor the fallback is not there: the sentence instead.
        outcome = pc.choose({"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-7", "XDG_RUNTIME_DIR": str(tmp_path / "x")})
        assert outcome.platform == "" and "sudo apt install libxcb-icccm4" in outcome.problem
    # A file that is not a socket is no compositor either.
    (tmp_path / "wayland-8").write_text("")
    assert pc.wayland_socket({"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-8"}) is None


def test_xcb_is_kept_when_it_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pc, "unresolved", lambda _plugin, _env: [])
    env = {"DISPLAY": ":0"}
    assert pc.prepare(env) == "" and "QT_QPA_PLATFORM" not in env
    # Wayland session whose plugin cannot load: back to X (XWayland).
    server, wl = _wayland_socket(tmp_path)
    with server:
        monkeypatch.setattr(pc, "unresolved", lambda p, _env: ["libwayland-cursor.so.0"] if "wayland" in p.name else [])
        env = {**wl, "DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}
        assert pc.prepare(env) == "" and env["QT_QPA_PLATFORM"] == "xcb"


def test_no_display_at_all() -> None:
    outcome = pc.choose({"PATH": os.defpath})
    assert outcome.platform == "" and "no desktop session" in outcome.problem


def test_plugin_folders_follow_qt_variables(tmp_path: Path) -> None:
    (tmp_path / "libqxcb.so").write_bytes(b"")
    assert pc.find_plugin("xcb", {"QT_QPA_PLATFORM_PLUGIN_PATH": str(tmp_path)}) == tmp_path / "libqxcb.so"
    assert pc.find_plugin("xcb", {}) is not None  # PySide6's own
    assert pc.find_plugin("xcb", {}) != tmp_path / "libqxcb.so"


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("ldd") is None, reason="needs Linux's ldd")
def test_ldd_reads_the_real_plugin() -> None:
    plugin = pc.find_plugin("xcb", {})
    assert plugin is not None
    missing = pc.unresolved(plugin, dict(os.environ))
    assert missing is not None
    assert all(lib.startswith("lib") and ".so" in lib for lib in missing)


def _namespaces_work() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    flags = "-m" if os.geteuid() == 0 else "-rm"
    return subprocess.run(["unshare", flags, "true"], capture_output=True, check=False).returncode == 0


def _start_without(libs: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    environ.update(PYTHONPATH=str(ROOT), GLIMPSE_HOME=str(tmp_path / "home"), **env)
    return subprocess.run([str(ROOT / "tests" / "gui" / "without-libs"), *libs, "--", sys.executable, "-m",
                           "glimpse.app"], capture_output=True, text=True, env=environ, timeout=120, check=False)


@pytest.mark.skipif(not _namespaces_work(), reason="hiding system libraries needs mount namespaces (root in CI)")
def test_a_machine_without_the_xcb_libraries_gets_the_one_sentence_fix(tmp_path: Path) -> None:
    """As on a fresh machine: the libraries Qt's xcb plugin links are hidden, and `glimpse` must say what to install
    (with a display set: no X server is needed, since Qt never gets that far)."""
    result = _start_without(["libxcb-icccm.so.4", "libxcb-keysyms.so.1"], tmp_path, DISPLAY=":99")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Could not load the Qt platform plugin" not in result.stderr
    assert "`sudo apt install libxcb-icccm4 libxcb-keysyms1`" in lines[0]
    assert "`sudo dnf install xcb-util-wm xcb-util-keysyms`" in lines[0]
    assert "`sudo pacman -S xcb-util-wm xcb-util-keysyms`" in lines[0]


def test_no_display_is_one_sentence_too(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY")}
    environ.update(PYTHONPATH=str(ROOT), GLIMPSE_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-m", "glimpse.app"], capture_output=True, text=True, env=environ,
                            timeout=120,
                            check=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("the check is for Linux")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "no desktop session" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_closes_the_window_through_its_close_event(qtbot: QtBot) -> None:


    closed: list[bool] = []

    class Window(QWidget):
        def closeEvent(self, event: QCloseEvent) -> None:
            closed.append(True)
            event.accept()

    previous = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGTERM", "SIGINT", "SIGHUP")}
    window = Window()
    qtbot.addWidget(window)
    try:
        assert close_on_signals(window)
        window.show()
        qtbot.waitExposed(window)
        os.kill(os.getpid(), signal.SIGTERM)
        qtbot.waitUntil(lambda: bool(closed), timeout=5000)
        assert not window.isVisible()
    finally:
        signal.set_wakeup_fd(-1)
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def test_the_launcher_checks_before_qtgui_is_imported(tmp_path: Path) -> None:
    """QtGui itself links X and GL libraries: the check must come first, or a missing libxcb is a traceback."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the check is for Linux")
    environ = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY")}
    environ.update(PYTHONPATH=str(ROOT), GLIMPSE_HOME=str(tmp_path / "home"))
    code = ("import sys; from glimpse.app.launcher import main; rc = main([]); "
            "print(sorted(m for m in sys.modules if m.startswith(('PySide6.QtGui', 'app.main')))); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120,
                            check=False)
    assert result.returncode == 1 and "no desktop session" in result.stderr
    assert result.stdout.strip() == "[]"
