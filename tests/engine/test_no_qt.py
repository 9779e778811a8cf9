"""engine/ is a library and a CLI of its own: it must never import Qt (napari's rule)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
QT_ROOTS = {"PySide6", "PyQt5", "PyQt6", "PySide2", "shiboken6"}
APP = "glimpse.app"


def test_engine_sources_never_import_qt_or_app() -> None:
    offenders = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            offenders += [f"{path.relative_to(ENGINE.parent)}: {n}" for n in names
                          if n.split(".")[0] in QT_ROOTS or f"{n}.".startswith(f"{APP}.")]
    assert offenders == []


def test_engine_imports_with_qt_blocked() -> None:
    """Import every engine module in a fresh interpreter where importing Qt raises."""
    modules = sorted("glimpse.engine." + ".".join(p.relative_to(ENGINE).with_suffix("").parts)
                     for p in ENGINE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('PySide6', 'PyQt5', 'PyQt6', 'PySide2', 'shiboken6'):\n"
        "            raise ImportError('Qt is blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert not any(k.startswith('PySide6') for k in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ENGINE.parent, check=False)
    assert result.returncode == 0, result.stderr
