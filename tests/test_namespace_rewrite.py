"""tools/namespace_rewrite.py rewrites what names a module, by rule, and nothing else; a second run changes nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tools.namespace_rewrite import main, names_a_module, rewrite_markdown, rewrite_python, rewrite_text

BEFORE = '''"""Docstrings stay (engine.runtime.llm; from engine import x), commands not: `python -m engine`."""
import sys, engine
import engine.convert.vision_int8 as vi
import engine.cli as cli
import app.window
from engine import load_model
from engine.cli.canary import main  # a comment naming engine.cli stays
from . import sibling
from tools import bench


def late(app):
    from app.capture import media  # noqa: PLC0415 (comments stay: app.capture, but python -m app)

    app.processEvents()  # a variable called app is not the package
    hidden = {"_canary": "engine.cli.canary:main", "logger": "engine.llama_cpp",
              "folder": "engine/runtime/llm.py"}
    code = "import sys; from app.launcher import main; print([m for m in sys.modules if m.startswith('app.')])"
    return ([sys.executable, "-m", "engine", "ask"], ["-m", "app"], ("engine", "app.window"),
            hidden, code)
'''

AFTER = '''"""Docstrings stay (engine.runtime.llm; from engine import x), commands not: `python -m glimpse.engine`."""
import sys
from glimpse import engine
import glimpse.engine.convert.vision_int8 as vi
from glimpse.engine import cli
import glimpse.app.window
from glimpse import app
from glimpse.engine import load_model
from glimpse.engine.cli.canary import main  # a comment naming engine.cli stays
from . import sibling
from tools import bench


def late(app):
    from glimpse.app.capture import media  # noqa: PLC0415 (comments stay: app.capture, but python -m glimpse.app)

    app.processEvents()  # a variable called app is not the package
    hidden = {"_canary": "glimpse.engine.cli.canary:main", "logger": "engine.llama_cpp",
              "folder": "engine/runtime/llm.py"}
    code = "import sys; from glimpse.app.launcher import main; print([m for m in sys.modules if m.startswith('app.')])"
    return ([sys.executable, "-m", "glimpse.engine", "ask"], ["-m", "glimpse.app"], ("engine", "glimpse.app.window"),
            hidden, code)
'''


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in ("engine/cli/canary.py", "engine/runtime/llm.py", "app/window.py", "app/launcher.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    return tmp_path


def test_python_imports_and_module_strings_are_rewritten_and_nothing_else(root: Path) -> None:
    after = rewrite_python(BEFORE, root)
    assert after == AFTER
    ast.parse(after)
    assert rewrite_python(after, root) == after


def test_a_module_string_must_name_a_module_of_the_package(root: Path) -> None:
    assert names_a_module("engine.cli.canary:main", root) and names_a_module("app.window.reason", root)
    assert names_a_module("engine.*", root) and names_a_module("engine.", root)
    assert not names_a_module("engine", root)  # a bare name may be a folder
    assert not names_a_module("engine.llama_cpp", root)  # a logger, no module
    assert not names_a_module("engine/cli/canary.py", root) and not names_a_module("glimpse.engine.cli", root)


def test_configuration_and_shell_text(root: Path) -> None:
    toml = ('glimpse = "app.launcher:main"\nversion = { attr = "engine.cli.canary.__version__" }\nmodule = "engine.*"\n'
            'filterwarnings = ["error::DeprecationWarning:engine.*"]\nfiles = ["engine", "app"]\n'
            'include = ["engine*"]\n')
    expected = ('glimpse = "glimpse.app.launcher:main"\nversion = { attr = "glimpse.engine.cli.canary.__version__" }\n'
                'module = "glimpse.engine.*"\nfilterwarnings = ["error::DeprecationWarning:glimpse.engine.*"]\n'
                'files = ["engine", "app"]\ninclude = ["engine*"]\n')
    assert rewrite_text(toml, root) == expected
    assert rewrite_text(expected, root) == expected
    shell = '"$python" -m engine convert a b\n"$python" -c "import engine; print(engine.__file__)"\ncd engine/cli\n'
    assert rewrite_text(shell, root) == ('"$python" -m glimpse.engine convert a b\n'
                                         '"$python" -c "from glimpse import engine; print(engine.__file__)"\n'
                                         'cd engine/cli\n')


def test_markdown_commands_and_code_but_not_prose(root: Path) -> None:
    text = ("Run `python -m engine` or python -m app.\nThe module engine.runtime.llm, in `engine/runtime/llm.py`.\n"
            "`import engine` loads little.\n\n```python\nimport engine\nfrom engine.cli import main\n```\n")
    expected = ("Run `python -m glimpse.engine` or python -m glimpse.app.\n"
                "The module engine.runtime.llm, in `engine/runtime/llm.py`.\n"
                "`from glimpse import engine` loads little.\n\n```python\nfrom glimpse import engine\n"
                "from glimpse.engine.cli import main\n```\n")
    assert rewrite_markdown(text, root) == expected
    assert rewrite_markdown(expected, root) == expected


def test_the_command_rewrites_files_once_and_says_what(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "engine" / "a.py").write_text("from engine.cli import canary\n", encoding="utf-8")
    (root / "notes.md").write_text("see engine/a.py\n", encoding="utf-8")
    args = ["--root", str(root), "--no-sort", str(root / "engine"), str(root / "notes.md")]
    assert main(["--check", *args]) == 1
    assert main(args) == 0
    assert (root / "engine" / "a.py").read_text(encoding="utf-8") == "from glimpse.engine.cli import canary\n"
    out = capsys.readouterr().out
    assert "-> from glimpse.engine.cli import canary" in out and "1 file(s) changed." in out
    assert main(["--check", *args]) == 0
    assert (root / "notes.md").read_text(encoding="utf-8") == "see engine/a.py\n"
    kept = "# namespace-rewrite: skip-file (examples)\nfrom engine.cli import canary\n"
    (root / "engine" / "b.py").write_text(kept, encoding="utf-8")
    assert main(["--check", *args]) == 0 and (root / "engine" / "b.py").read_text(encoding="utf-8") == kept
