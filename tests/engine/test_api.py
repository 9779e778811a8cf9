"""The documented public API stays importable from the package root."""

from __future__ import annotations

import subprocess
import sys

import pytest

import engine


@pytest.mark.parametrize("name", engine.__all__)
def test_public_names_resolve(name: str) -> None:
    assert getattr(engine, name) is not None


def test_unknown_name() -> None:
    with pytest.raises(AttributeError):
        engine.nope  # type: ignore[attr-defined]  # noqa: B018


def test_importing_engine_loads_no_runtime() -> None:
    code = "import sys, engine; assert 'onnxruntime' not in sys.modules and 'llama_cpp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
