"""Shared fixtures: tiny random FastVLM checkpoints written in Apple's layout, and converted model folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.synthetic import CheckpointSpec, write_checkpoint
from glimpse.engine.runtime import canary, vision

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Session-wide too, not only per test: module-scoped fixtures load models before the per-test fixture runs, and
# nothing a test does may write into the real user folders (caches included).
os.environ["GLIMPSE_HOME"] = tempfile.mkdtemp(prefix="glimpse-test-home-")
# Each test has its own home, so every load would measure the CPU again; tests/engine/test_tuning.py turns it on.
os.environ["GLIMPSE_TUNE"] = "0"
# The kernel canary stays on, as for users: on a CPU whose llama.cpp kernels are broken (an AMX Xeon with a GCC 12
# build) every test that runs a q8_0 model would otherwise end the test run by SIGILL. Its results are shared between
# the tests' homes (below), so it runs once per weight type and session, not once per test.
os.environ.pop("GLIMPSE_CANARY", None)
_SESSION_KERNELS = canary.cache_folder()


# What makes a test a ``model`` test: a fixture that writes or converts a checkpoint (repo_dir: a checkpoint a fake
# hub serves, which pulling converts), or, for tests that build their own, its module or node id.
MODEL_FIXTURES = {"tiny_checkpoint", "tiny_model_dir", "repo_dir"}
MODEL_NODES = ("tests/engine/test_llm_gguf.py::", "tests/engine/test_answer_gate.py::",
               "tests/app/test_selftest.py::test_self_test_passes_and_reports")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``model`` every test that converts or loads a model: the tiny model alone takes about half a minute to
    convert on 2 cores, and these tests are most of the suite's time. The quick check (tools/check) leaves them out
    with ``-m "not slow and not model"``; CI and the README's test command run them all."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.nodeid.startswith(MODEL_NODES):
            item.add_marker(pytest.mark.model)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                   request: pytest.FixtureRequest) -> Iterator[None]:
    """No test reads or writes the real user folders or reaches the network."""
    home = tmp_path_factory.mktemp("glimpse-home")
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kernels = canary.cache_folder()
    if _SESSION_KERNELS.is_dir():
        shutil.copytree(_SESSION_KERNELS, kernels, dirs_exist_ok=True)
    yield
    # What the canary proved for real goes back for the next tests; test_canary.py makes results up (faults, fake
    # processes), and they stay in its own home.
    if request.node.module.__name__.endswith("test_canary") or os.environ.get(canary.FAULT_ENV):
        return
    for entry in kernels.glob("*.json") if kernels.is_dir() else ():
        _SESSION_KERNELS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(entry, _SESSION_KERNELS / entry.name)


@pytest.fixture(autouse=True)
def _denormals_left_alone() -> Iterator[None]:
    """A tool's main() run in this process turns flushing on for the process; the next test starts without it."""
    yield
    vision.flush_denormals(False)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced-tower, two-layer random checkpoint (a few MB). Treat it as read-only."""
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "llava-fastvithd_tiny_stage3", CheckpointSpec())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint converted by the real converter (f16 language model). Treat it as read-only."""
    return convert_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("models") / "tiny", quant="f16")
