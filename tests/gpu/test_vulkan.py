"""The language model on llama.cpp's Vulkan backend, run on Mesa's software Vulkan driver (lavapipe), which computes
on the CPU: the GPU path must give the CPU path's greedy answer, image rows included, and name its device.

Needs a llama.cpp build with the Vulkan backend (the portable wheel, packaging/build-llama-wheel.sh), the Vulkan
loader and lavapipe (Debian: libvulkan1 mesa-vulkan-drivers). Skipped where they are missing, unless
GLIMPSE_REQUIRE_GPU_TESTS=1 (CI's packaging step), which turns the skip into a failure. No speed is measured here:
lavapipe's figures say nothing about a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from glimpse.engine.runtime.canary import logit_error, tolerance
from glimpse.engine.runtime.gpu_backends import vulkan_library

REPO = Path(__file__).resolve().parents[2]
LAVAPIPE = sorted(Path("/usr/share/vulkan/icd.d").glob("lvp_icd*.json"))


def _missing() -> str:
    if vulkan_library() is None:
        return "this llama.cpp build has no Vulkan backend (build it with packaging/build-llama-wheel.sh)"
    if not LAVAPIPE:
        return "Mesa's lavapipe is not installed (apt install mesa-vulkan-drivers libvulkan1)"
    return ""


@pytest.fixture(scope="module", autouse=True)
def _lavapipe() -> None:
    why = _missing()
    if why and os.environ.get("GLIMPSE_REQUIRE_GPU_TESTS") == "1":
        pytest.fail(f"GLIMPSE_REQUIRE_GPU_TESTS=1, but {why}")
    if why:
        pytest.skip(why)


def _env(tmp: Path) -> dict[str, str]:
    """lavapipe as the only Vulkan driver, made visible to llama.cpp (which skips CPU-type devices by default), with
    the settings it needs (no fp16 shaders, no cooperative matrices)."""
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(exist_ok=True, mode=0o700)
    drivers = ":".join(str(p) for p in LAVAPIPE)
    return {**os.environ, "VK_DRIVER_FILES": drivers, "VK_ICD_FILENAMES": drivers, "GGML_VK_VISIBLE_DEVICES": "0",
            "GGML_VK_DISABLE_F16": "1", "GGML_VK_DISABLE_COOPMAT": "1", "XDG_RUNTIME_DIR": str(runtime)}


def _glimpse(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glimpse.engine", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, check=False, timeout=600)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.random.default_rng(7).random((120, 160, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _probe(env: dict[str, str], model: Path, image: Path, device: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "tests.gpu.probe", str(model), str(image), "--device", device],
                            capture_output=True, text=True, cwd=REPO, env=env, check=False, timeout=600)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_the_gpu_computes_what_the_cpu_computes(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    # A random tiny model's greedy text is nearly always one repeated token, which would agree by chance: the
    # logits behind it are compared too, after the answer (one position) and for a batch of positions, by the
    # kernel canary's own measure and tolerance for f16 weights.
    env = _env(tmp_path)
    cpu = _probe(env, tiny_model_dir, photo, "cpu")
    gpu = _probe(env, tiny_model_dir, photo, "gpu")
    assert cpu["devices"] == "LLM: CPU, vision: CPU" and cpu["gpu_layers"] == 0
    assert gpu["devices"].startswith("LLM: Vulkan (llvmpipe") and gpu["gpu_layers"] > 0, gpu["devices"]
    assert gpu["image_tokens"] == cpu["image_tokens"] == 16  # the image's rows went in as embeddings
    assert gpu["token_ids"] == cpu["token_ids"] and len(gpu["token_ids"]) == 6
    error = logit_error(np.array(gpu["logits"]), np.array(cpu["logits"], dtype=np.float64))
    assert error <= tolerance("f16"), f"GPU logits differ from the CPU's by {error:.4g}"
    assert len(gpu["logits"]) > 2


def test_the_measure_catches_a_wrong_device(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    # The comparison above can fail: logits off by a tenth of their spread (a wrong kernel) are far outside it.
    cpu = np.array(_probe(_env(tmp_path), tiny_model_dir, photo, "cpu")["logits"], dtype=np.float64)
    wrong = cpu + np.random.default_rng(0).standard_normal(cpu.shape) * cpu.std() * 0.1
    assert logit_error(wrong, cpu) > tolerance("f16")


def test_ask_on_the_gpu_gives_the_cpus_answer(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    ask = ("ask", str(tiny_model_dir), str(photo), "What is in this picture?", "--size", "256", "--max-tokens", "12",
           "--json")
    cpu = _glimpse(env, *ask, "--device", "cpu")
    gpu = _glimpse(env, *ask, "--device", "gpu")
    assert cpu.returncode == 0, cpu.stderr
    assert gpu.returncode == 0, gpu.stderr
    on_cpu, on_gpu = json.loads(cpu.stdout), json.loads(gpu.stdout)
    assert on_gpu["timings"]["image_tokens"] == 16
    assert on_gpu["token_ids"] == on_cpu["token_ids"] and len(on_gpu["token_ids"]) == 12
    assert "LLM: Vulkan (llvmpipe" in gpu.stderr and "layers), vision: CPU" in gpu.stderr, gpu.stderr
    assert "Vulkan" not in cpu.stderr


def test_bench_names_the_vulkan_device_and_driver(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = _glimpse(env, "bench", str(tiny_model_dir), "--sizes", "256", "--runs", "1", "--device", "gpu")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[:4]
    line = next((x for x in header if x.startswith("devices: ")), "")
    assert line.startswith("devices: LLM: Vulkan (llvmpipe") and "GPU driver: llvmpipe, Mesa" in line, header


def test_auto_takes_the_gpu_its_canary_proved(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = _glimpse(env, "ask", str(tiny_model_dir), str(photo), "Hi?", "--size", "256", "--max-tokens", "3",
                      "--device", "auto")
    assert result.returncode == 0, result.stderr
    assert "LLM: Vulkan (llvmpipe" in result.stderr, result.stderr


def test_auto_without_a_visible_gpu_answers_on_the_cpu(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    # lavapipe is a CPU-type device, which llama.cpp leaves out unless told to use it: "auto" finds no GPU.
    env = {k: v for k, v in _env(tmp_path).items() if k != "GGML_VK_VISIBLE_DEVICES"}
    result = _glimpse(env, "ask", str(tiny_model_dir), str(photo), "Hi?", "--size", "256", "--max-tokens", "3")
    assert result.returncode == 0, result.stderr
    assert "LLM: CPU, vision: CPU. Vulkan found no GPU that llama.cpp can use, so the GPU is not used." \
        in result.stderr, result.stderr


def test_a_driver_crash_costs_the_gpu_not_the_answer(tiny_model_dir: Path, photo: Path, tmp_path: Path) -> None:
    # The runner on the GPU dies mid-answer (as a driver crash would end it): the restarted runner runs on the CPU
    # and the answer comes, the same greedy text as the CPU's.
    env = _env(tmp_path)
    ask = ("ask", str(tiny_model_dir), str(photo), "Describe it.", "--size", "256", "--max-tokens", "8", "--json")
    cpu = _glimpse(env, *ask, "--device", "cpu")
    crashed = _glimpse({**env, "GLIMPSE_FAULT_RUNNER": "segv@answer#1"}, *ask, "--device", "gpu")
    assert crashed.returncode == 0, crashed.stderr
    assert "restarting it with safer settings" in crashed.stderr, crashed.stderr
    assert json.loads(crashed.stdout)["token_ids"] == json.loads(cpu.stdout)["token_ids"]
