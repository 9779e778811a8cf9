"""The vision encoder on a real onnxruntime execution provider that is not the CPU's: OpenVINO, from the
``onnxruntime-openvino`` package swapped in for ``onnxruntime`` as the README's "Using the GPU" says, run on
OpenVINO's own CPU plugin (GLIMPSE_OPENVINO_DEVICE=CPU) the way lavapipe stands in for a GPU in test_vulkan.py. It is
a different runtime and different kernels from onnxruntime's CPU provider, so the check compares two independent
computations, as it does for a GPU.

Skipped where onnxruntime has no OpenVINO provider, unless GLIMPSE_REQUIRE_PROVIDER_TESTS=1 (CI's packaging step,
which makes a venv with the swap), which turns the skip into a failure. No speed is measured here: OpenVINO's CPU
plugin says nothing about a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from glimpse.engine.convert.answer_gate import GateThresholds, centred_cosine
from glimpse.engine.runtime import vision_providers as vp
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.preprocess import preprocess
from glimpse.engine.runtime.vision import CPU_PROVIDER, VisionEncoder

REPO = Path(__file__).resolve().parents[2]
OPENVINO = "OpenVINOExecutionProvider"


@pytest.fixture(scope="module", autouse=True)
def _openvino() -> None:
    if OPENVINO not in ort.get_available_providers():
        why = (f"this onnxruntime ({vp.runtime_name()}) has no OpenVINO provider (swap in onnxruntime-openvino as the "
               "README says)")
        if os.environ.get("GLIMPSE_REQUIRE_PROVIDER_TESTS") == "1":
            pytest.fail(f"GLIMPSE_REQUIRE_PROVIDER_TESTS=1, but {why}")
        pytest.skip(why)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(vp.OPENVINO_DEVICE_ENV, "CPU")
    for name in (vp.PROVIDER_ENV, vp.FAULT_ENV):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path / "home"


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.random.default_rng(11).random((120, 160, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_openvino_computes_the_cpus_rows(tiny_model_dir: Path, photo: Path, home: Path) -> None:
    pixels = preprocess(photo, 256)
    cpu = VisionEncoder(tiny_model_dir / "vision.onnx").encode(pixels)
    encoder = VisionEncoder(tiny_model_dir / "vision.onnx", provider=OPENVINO,
                            provider_options=vp.spec_for(OPENVINO).options())
    assert encoder.provider == OPENVINO  # the session has it: onnxruntime did not quietly fall back to the CPU
    rows = encoder.encode(pixels)
    assert rows.shape == cpu.shape
    # OpenVINO's CPU plugin computes in bfloat16 where the CPU has it (AVX512_BF16, AMX): 0.9986 on a Zen 4 class
    # EPYC. The gate's threshold, not equality, is what a provider must meet.
    assert centred_cosine(cpu, rows) >= GateThresholds().min_centred_cosine
    assert not np.array_equal(rows, cpu)  # two computations, not one: the comparison below means something


def test_auto_proves_openvino_and_names_its_device(tiny_model_dir: Path, home: Path) -> None:
    choice = vp.choose_vision(tiny_model_dir, "auto")
    assert choice.provider == OPENVINO and choice.failures == (), choice.failures
    assert choice.device == vp.openvino_device_name("CPU") != ""  # OpenVINO's own name for the device
    gate = choice.details["gate"]
    assert gate["passed"] and gate["answer_positions"] > 0
    assert choice.details["centred_cosine"] >= GateThresholds().min_centred_cosine


def test_openvino_wrong_rows_keep_the_cpu(tiny_model_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vp.FAULT_ENV, "wrong")
    choice = vp.choose_vision(tiny_model_dir, "auto")
    assert choice.provider == CPU_PROVIDER
    assert choice.not_used.startswith("The vision encoder failed its check on OpenVINO (its image rows differ from "
                                      "the CPU's: centred cosine")


def test_an_openvino_device_that_is_not_there_is_a_sentence(tiny_model_dir: Path, home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.capi import _pybind_state  # noqa: PLC0415 (only onnxruntime-openvino has this call)

    if "NPU" in _pybind_state.get_available_openvino_device_ids():
        pytest.skip("this computer has an NPU for OpenVINO")
    monkeypatch.setenv(vp.OPENVINO_DEVICE_ENV, "NPU")
    choice = vp.choose_vision(tiny_model_dir, "auto")
    assert choice.not_used == ("The vision encoder failed its check on OpenVINO (onnxruntime could not start "
                               "OpenVINO), so it runs on the CPU.")


def test_the_model_answers_alike_with_openvino(tiny_model_dir: Path, photo: Path, home: Path) -> None:
    with load_model(tiny_model_dir, device="cpu") as model:
        on_cpu = model.ask(Image.open(photo), "What is in this picture?", size=256, max_tokens=10)
    with load_model(tiny_model_dir, device="auto") as model:
        name = vp.openvino_device_name("CPU")
        assert model.devices.endswith(f"vision: OpenVINO ({name})"), model.devices
        assert model.vision_check.startswith(f"OpenVINO ({name}): mean KL")
        on_ov = model.ask(Image.open(photo), "What is in this picture?", size=256, max_tokens=10)
    assert on_ov.token_ids == on_cpu.token_ids and len(on_cpu.token_ids) == 10


def test_ask_through_the_runner_names_openvino(tiny_model_dir: Path, photo: Path, home: Path) -> None:
    env = {**os.environ, "GLIMPSE_HOME": str(home), vp.OPENVINO_DEVICE_ENV: "CPU"}
    ask = [sys.executable, "-m", "glimpse.engine", "ask", str(tiny_model_dir), str(photo), "What is it?", "--size",
           "256", "--max-tokens", "6", "--json"]
    result = subprocess.run([*ask, "--device", "auto"], capture_output=True, text=True, cwd=REPO, env=env,
                            check=False, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"vision: OpenVINO ({vp.openvino_device_name('CPU')})" in result.stderr, result.stderr
    cpu = subprocess.run([*ask, "--device", "cpu"], capture_output=True, text=True, cwd=REPO, env=env, check=False,
                         timeout=600)
    assert json.loads(result.stdout)["token_ids"] == json.loads(cpu.stdout)["token_ids"]


def test_both_halves_off_the_default_path(tiny_model_dir: Path, photo: Path, home: Path) -> None:
    # The language model on Vulkan (lavapipe) and the encoder on OpenVINO in one model's runner: the devices line
    # names both, and the answer is the CPU's.
    from tests.gpu.test_vulkan import _env, _missing  # noqa: PLC0415

    why = _missing()
    if why and os.environ.get("GLIMPSE_REQUIRE_GPU_TESTS") == "1":
        pytest.fail(f"GLIMPSE_REQUIRE_GPU_TESTS=1, but {why}")
    if why:
        pytest.skip(why)
    env = {**_env(home.parent), "GLIMPSE_HOME": str(home), vp.OPENVINO_DEVICE_ENV: "CPU"}
    ask = [sys.executable, "-m", "glimpse.engine", "ask", str(tiny_model_dir), str(photo), "What is it?", "--size",
           "256", "--max-tokens", "6", "--json"]
    gpu = subprocess.run([*ask, "--device", "gpu"], capture_output=True, text=True, cwd=REPO, env=env, check=False,
                         timeout=600)
    cpu = subprocess.run([*ask, "--device", "cpu"], capture_output=True, text=True, cwd=REPO, env=env, check=False,
                         timeout=600)
    assert gpu.returncode == 0 and cpu.returncode == 0, gpu.stderr + cpu.stderr
    line = next(x for x in gpu.stderr.splitlines() if x.startswith("glimpse: LLM: "))
    assert line.startswith("glimpse: LLM: Vulkan (llvmpipe") and line.endswith(
        f"vision: OpenVINO ({vp.openvino_device_name('CPU')})"), line
    assert json.loads(gpu.stdout)["token_ids"] == json.loads(cpu.stdout)["token_ids"]
