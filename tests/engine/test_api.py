"""The documented public API stays importable from the package root."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from glimpse import engine


@pytest.mark.parametrize("name", engine.__all__)
def test_public_names_resolve(name: str) -> None:
    assert getattr(engine, name) is not None


def test_unknown_name() -> None:
    with pytest.raises(AttributeError):
        engine.nope  # type: ignore[attr-defined]  # noqa: B018


def test_importing_engine_loads_no_runtime() -> None:
    code = ("import sys; from glimpse import engine; "
            "assert 'onnxruntime' not in sys.modules and 'llama_cpp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_engine_loads_nothing_but_the_version() -> None:
    """The window's and the CLI's start-up: the front door costs nothing until a name is used."""
    code = ("import sys; from glimpse import engine; "
            "print(sorted(m for m in sys.modules if m.startswith('glimpse.engine')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['glimpse.engine', 'glimpse.engine.version']"


def test_the_lazy_table_and_the_type_checking_imports_agree() -> None:
    """What type checkers and PyInstaller's analysis read (the TYPE_CHECKING imports) is what runs (``_PUBLIC``)."""
    source = Path(engine.__file__)
    modules = {".".join(("glimpse", *p.relative_to(source.parent.parent).with_suffix("").parts)) for p in
               source.parent.rglob("*.py")}
    tree = ast.parse(source.read_text(encoding="utf-8"))
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    declared: dict[str, tuple[str, str | None]] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            declared[alias.asname or alias.name] = (sub, None) if sub in modules else (node.module, alias.name)
    assert declared == engine._PUBLIC
    assert sorted(engine.__all__) == sorted(["__version__", *declared])


def test_a_public_name_is_the_object_its_module_defines() -> None:
    from glimpse.engine.models.store import Store  # noqa: PLC0415
    from glimpse.engine.runtime.caption import caption_stream  # noqa: PLC0415

    assert engine.Store is Store and engine.caption_stream is caption_stream
    assert engine.catalog.__name__ == "glimpse.engine.models.catalog"
