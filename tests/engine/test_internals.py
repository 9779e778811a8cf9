"""Every library internal in engine/internals.py still exists in the installed release, each library is pinned below
its first untested release, and no private module is imported without being listed.

When an upgrade breaks one, the failure names the internal, the file that uses it and why, so the fix starts there.
"""

from __future__ import annotations

import ast
import ctypes
import importlib
import inspect
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as raw_llama
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from glimpse.engine.internals import INTERNALS, TESTED, Internal
from glimpse.engine.runtime import gpu_backends
from glimpse.engine.runtime.cpu_backends import core_library, llama_lib_dir, load_cpu_backends, open_ggml
from glimpse.engine.runtime.llm import LanguageModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def problem(internal: Internal, instance: object | None = None) -> str | None:
    """Why ``internal`` cannot be reached in the installed release, as a sentence; None when it can."""
    module_name, _, attributes = internal.name.partition(":")
    try:
        version = metadata.version(internal.distribution)
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    where = f"{internal.distribution} {version}"
    fix = f"{internal.used_in} uses it ({internal.why}); see engine/internals.py."
    try:
        target: object = importlib.import_module(module_name) if instance is None else instance
    except ImportError as e:
        return f"{where} has no module {module_name} ({e}); {fix}"
    parts = attributes.split(".")
    for part in parts[1:] if instance is not None else parts:
        if not hasattr(target, part):
            return f"{where} has no {internal.name}; {fix}"
        target = getattr(target, part)
    return None


@pytest.fixture(scope="module")
def llama(tiny_model_dir: Path) -> Iterator[Any]:
    with LanguageModel(tiny_model_dir / "llm.gguf", n_ctx=64, n_threads=1) as lm:
        yield lm._ll


@pytest.mark.parametrize("internal", [i for i in INTERNALS if i.kind == "module"], ids=lambda i: i.name)
def test_module_internal_exists(internal: Internal) -> None:
    found = problem(internal)
    assert found is None, found


@pytest.mark.parametrize("internal", [i for i in INTERNALS if i.kind == "instance"], ids=lambda i: i.name)
def test_instance_internal_exists(internal: Internal, llama: object) -> None:
    found = problem(internal, llama)
    assert found is None, found


@pytest.mark.parametrize("internal", [i for i in INTERNALS if i.kind == "symbol"], ids=lambda i: i.name)
def test_ggml_symbol_exists(internal: Internal) -> None:
    library, _, symbol = internal.name.partition(":")
    assert library == "libggml"
    ggml = ctypes.CDLL(str(core_library(llama_lib_dir())))
    assert hasattr(ggml, symbol), (f"llama-cpp-python {metadata.version('llama-cpp-python')}'s ggml has no {symbol}; "
                                   f"{internal.used_in} uses it ({internal.why}); see engine/internals.py.")


def test_the_device_properties_layout_reads_the_cpu_device() -> None:
    # gpu_backends._DevProps mirrors struct ggml_backend_dev_props: read through it, the CPU backend's own device
    # must come out as ggml describes it (its name, the CPU type, the machine's memory).
    load_cpu_backends()
    ggml = open_ggml(llama_lib_dir())
    reg = ggml.reg_by_name(b"CPU")
    assert reg, "ggml has no CPU backend registered after load_cpu_backends"
    (cpu,) = gpu_backends._devices(ggml.lib, reg)
    assert cpu.name == "CPU" and cpu.kind == "CPU" and cpu.description, cpu
    assert 0 < cpu.memory_free <= cpu.memory_total < 1 << 50, cpu


def test_llama_takes_op_offload() -> None:
    assert "op_offload" in inspect.signature(llama_cpp.Llama.__init__).parameters, (
        "llama_cpp.Llama() no longer takes op_offload; engine/runtime/llm.py passes it (see engine/internals.py).")


def test_instance_internals_have_the_types_llm_relies_on(llama: Any) -> None:
    assert llama.input_ids.dtype.kind == "i", "Llama.input_ids is no longer an integer array"
    assert isinstance(llama.n_tokens, int), "Llama.n_tokens is no longer an int"
    assert isinstance(llama._requires_eval, bool), "Llama._requires_eval is no longer a bool"


@pytest.mark.parametrize("extra_bufts", [True, False])
def test_extra_buffer_types_reach_llama_cpp(tiny_model_dir: Path, extra_bufts: bool) -> None:
    # LanguageModel(extra_bufts=False) relies on Llama.__init__ calling llama_cpp.llama_cpp.llama_model_default_params
    # at construction time (engine/internals.py); the parameters it keeps must show the choice, and the library's
    # function must be itself again afterwards.
    before = raw_llama.llama_model_default_params
    with LanguageModel(tiny_model_dir / "llm.gguf", n_ctx=64, n_threads=1, extra_bufts=extra_bufts) as lm:
        assert lm._ll.model_params.use_extra_bufts is extra_bufts
        assert lm.extra_bufts is extra_bufts
        lm.eval_tokens([1, 2, 3])
        assert np.isfinite(lm.logits()).all()
    assert raw_llama.llama_model_default_params is before
    assert raw_llama.llama_model_default_params().use_extra_bufts is True  # llama.cpp's default is untouched


def test_a_missing_internal_is_named() -> None:
    gone = Internal("pytest", "json:no_such_function", "module", "engine/example.py", "an example")
    found = problem(gone)
    assert found is not None and "json:no_such_function" in found and "engine/example.py" in found
    assert problem(Internal("pytest", "no_such_module_here:x", "module", "a.py", "b")) is not None
    assert problem(Internal("pytest", "json:dumps", "module", "a.py", "b")) is None


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


@pytest.mark.parametrize("distribution", sorted(TESTED))
def test_pinned_below_the_first_untested_release(distribution: str) -> None:
    low, high = TESTED[distribution]
    req = _requirements()[distribution.lower().replace("_", "-")]
    assert f"<{high}" in str(req.specifier), (
        f"pyproject.toml must pin {distribution} below {high}, the first release its internals were not tested "
        f"with (engine/internals.py), not {req.specifier}")
    assert f">={low}" in str(req.specifier), f"pyproject.toml's lower bound for {distribution} is not {low}"
    installed = Version(metadata.version(distribution))
    assert Version(low) <= installed < Version(high), (
        f"{distribution} {installed} is outside the tested range [{low}, {high}); run the tests of "
        "engine/internals.py's entries for it, then move the bounds")


def test_every_listed_distribution_is_pinned() -> None:
    assert {i.distribution for i in INTERNALS} == set(TESTED)


def _private_imports() -> Iterator[tuple[str, str]]:
    for folder in ("engine", "app"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.ImportFrom) and node.module
                        and not node.module.startswith(("glimpse.engine", "glimpse.app"))
                        and any(p.startswith("_") and not p.startswith("__") for p in node.module.split("."))):
                    for alias in node.names:
                        yield str(path.relative_to(ROOT)), f"{node.module}:{alias.name}"


def test_every_private_module_import_is_listed() -> None:
    found = list(_private_imports())
    assert ("engine/models/download.py", "huggingface_hub.utils._headers:build_hf_headers") in found  # the scan works
    listed = {i.name for i in INTERNALS}
    unlisted = [f"{where} imports {name}" for where, name in found if name not in listed]
    assert not unlisted, "private library modules not listed in engine/internals.py: " + "; ".join(unlisted)
