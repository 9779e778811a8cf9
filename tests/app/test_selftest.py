"""glimpse self-test and the launcher: the same entry points the packaged app uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse.app.launcher", *args], capture_output=True, text=True,
                          cwd=REPO, check=False, timeout=600, env={**os.environ, **(env or {})})


def test_self_test_passes_and_reports() -> None:
    result = _launch("self-test")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in ("onnxruntime: ", "llama_cpp: ", "llama.cpp CPU kernels: ", "PySide6: ", "first window: ",
                 "self-test passed"):
        assert line in out
    assert "FAIL" not in out


def test_launcher_passes_other_commands_to_the_engine_cli(tmp_path: Path) -> None:
    result = _launch("models", "list", env={"GLIMPSE_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "fastvlm-0.5b" in result.stdout
    assert (tmp_path / "logs" / "glimpse.log").is_file()


def test_launcher_survives_without_stdout(tmp_path: Path) -> None:
    # A windowed build has no terminal: sys.stdout and sys.stderr are None. Printing must not crash.
    code = ("import sys; sys.stdout = None; sys.stderr = None\n"
            "from glimpse.app.launcher import main\n"
            "raise SystemExit(main(['models', 'list']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, timeout=120,
                            env={**os.environ, "GLIMPSE_HOME": str(tmp_path)})
    assert result.returncode == 0
    assert "fastvlm-0.5b" in (tmp_path / "logs" / "glimpse.log").read_text()
