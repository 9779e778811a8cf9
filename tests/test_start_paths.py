"""One way to start Glimpse: ``glimpse`` (glimpse.app.launcher.main). ``python -m glimpse.app`` runs the same
function; ``python -m glimpse.engine`` is the engine's half that it hands commands to. The version is written once."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from glimpse.app.launcher import WINDOW_OPTIONS, opens_the_window
from glimpse.app.main import _parse
from glimpse.engine.version import __version__

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)


def test_glimpse_python_m_app_and_the_bundle_run_the_launcher() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"glimpse": "glimpse.app.launcher:main"}
    tree = ast.parse((ROOT / "app" / "__main__.py").read_text(encoding="utf-8"))
    assert [(n.module, [a.name for a in n.names]) for n in tree.body if isinstance(n, ast.ImportFrom)] == [
        ("glimpse.app.launcher", ["main"])]
    assert '"app" / "launcher.py"' in (ROOT / "packaging" / "glimpse.spec").read_text(encoding="utf-8")


@pytest.mark.parametrize(("args", "window"), [
    ([], True), (["--open", "a.png"], True), (["--mode=ask"], True), (["-platform", "offscreen"], True),
    (["ask", "a.png", "what?"], False), (["self-test"], False), (["--version"], False), (["-h"], False),
    (["--debug", "models", "list"], False), (["runner"], False),
])
def test_the_window_opens_without_a_command(args: list[str], window: bool) -> None:
    assert opens_the_window(args) is window


@pytest.mark.parametrize("option", WINDOW_OPTIONS)
def test_the_window_options_are_the_windows(option: str) -> None:
    _, qt_args = _parse([option, "ask"])
    assert qt_args == []


def test_python_m_app_is_glimpse_and_python_m_engine_its_engine_half(tmp_path: Path) -> None:
    """A command given to ``python -m glimpse.app`` reaches the engine's command line, as ``glimpse``'s does."""
    for entry in ("glimpse.app", "glimpse.engine"):
        result = _run("-m", entry, "--version")
        assert result.returncode == 0 and result.stdout.strip() == f"glimpse {__version__}", result.stderr


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads it from engine/version.py; the installed metadata and build_deb.py agree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "glimpse.engine.version.__version__"}
    assert metadata.version("glimpse") == __version__
    spec = importlib.util.spec_from_file_location("build_deb", ROOT / "packaging" / "build_deb.py")
    assert spec is not None and spec.loader is not None
    build_deb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_deb)
    assert build_deb._project_version() == __version__
    version_py = (ROOT / "engine" / "version.py").read_text(encoding="utf-8")
    assert not [n for n in ast.walk(ast.parse(version_py)) if isinstance(n, ast.Import | ast.ImportFrom)]
