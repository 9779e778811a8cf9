"""engine/runtime/gpu_backends.py and the GPU's share of engine/runtime/llm.py: how many layers a device holds,
what identifies the installed Vulkan drivers, and the sentences for a GPU that is not there. The Vulkan path itself
runs on Mesa's software driver in tests/gpu/."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse.engine.models.gguf_header import read_header, tensor_bytes
from glimpse.engine.runtime import gpu_backends
from glimpse.engine.runtime.cpu_backends import llama_lib_dir, open_ggml
from glimpse.engine.runtime.gpu_backends import GpuUnavailable, driver_identity, layers_that_fit, load_gpu_backend
from glimpse.engine.runtime.llm import GPU_RESERVE_BYTES, gpu_plan

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20


# -- how much of the model goes on the device -------------------------------------------------------------------------

def test_layers_fill_the_budget_in_order() -> None:
    layers = [10 * MB] * 4
    assert layers_that_fit(layers, 5 * MB, 100 * MB, reserve_bytes=50 * MB) == 5  # 40 + 5 <= 50: all, output too
    assert layers_that_fit(layers, 15 * MB, 100 * MB, reserve_bytes=50 * MB) == 4  # the output does not fit
    assert layers_that_fit(layers, 5 * MB, 85 * MB, reserve_bytes=50 * MB) == 3  # 35 MB: three layers
    assert layers_that_fit(layers, 5 * MB, 40 * MB, reserve_bytes=50 * MB) == 0  # the reserve alone is too much
    assert layers_that_fit([], 0, 0, reserve_bytes=0) == 1  # nothing but the output, and it is empty


def test_the_plan_counts_weights_and_the_kv_cache(tiny_model_dir: Path) -> None:
    header = read_header(tiny_model_dir / "llm.gguf")
    n_layer = int(header.values["qwen2.block_count"])
    weights = sum(tensor_bytes(t) for t in header.tensors)
    assert 0 < weights <= (tiny_model_dir / "llm.gguf").stat().st_size
    plenty = 64 << 30
    assert gpu_plan(header, n_ctx=4096, n_batch=512, kv_bytes_per_value=2, free_bytes=plenty) == n_layer + 1
    assert gpu_plan(header, n_ctx=4096, n_batch=512, kv_bytes_per_value=2, free_bytes=GPU_RESERVE_BYTES) == 0
    # Between the two, the count never falls as memory grows, and a larger context never fits more.
    counts = [gpu_plan(header, n_ctx=4096, n_batch=512, kv_bytes_per_value=2, free_bytes=GPU_RESERVE_BYTES + k * MB)
              for k in range(0, 64, 2)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    free = GPU_RESERVE_BYTES + 8 * MB
    assert gpu_plan(header, n_ctx=32768, n_batch=512, kv_bytes_per_value=2, free_bytes=free) <= \
        gpu_plan(header, n_ctx=512, n_batch=512, kv_bytes_per_value=2, free_bytes=free)


def test_tensor_bytes_follow_the_block_sizes(tiny_model_dir: Path) -> None:
    header = read_header(tiny_model_dir / "llm.gguf")
    ordered = sorted(header.tensors, key=lambda t: t.offset)
    # Each tensor's bytes fit before the next tensor's data starts (the file pads to its alignment between them).
    for this, after in itertools.pairwise(ordered):
        assert this.offset + tensor_bytes(this) <= after.offset, this.name


# -- what a verdict about a GPU is keyed by ---------------------------------------------------------------------------

def test_the_driver_identity_changes_with_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    icd = tmp_path / "share" / "vulkan" / "icd.d"
    icd.mkdir(parents=True)
    lib = tmp_path / "libvulkan_fake.so"
    lib.write_bytes(b"driver 1")
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "share"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "none"))
    for name in gpu_backends.VULKAN_ENV:
        monkeypatch.delenv(name, raising=False)
    empty = driver_identity()
    manifest = icd / "fake_icd.json"
    manifest.write_text(json.dumps({"file_format_version": "1.0.0",
                                    "ICD": {"library_path": str(lib), "api_version": "1.3.0"}}))
    one = driver_identity()
    assert one != empty and any(entry[0] == str(manifest) for entry in one["drivers"])
    lib.write_bytes(b"driver 2, updated")  # the driver library updated in place: same manifest, other file
    two = driver_identity()
    assert two != one
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "0")
    assert driver_identity() != two and driver_identity()["env"] == {"GGML_VK_VISIBLE_DEVICES": "0"}
    assert driver_identity() == driver_identity()  # nothing else in it moves


# -- a GPU that is not there ------------------------------------------------------------------------------------------

def test_a_folder_without_the_vulkan_backend_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_backends, "_loaded", [])
    monkeypatch.setattr(gpu_backends, "load_cpu_backends", lambda folder: None)
    monkeypatch.setattr(gpu_backends, "open_ggml", lambda folder: open_ggml(llama_lib_dir()))
    monkeypatch.setattr(gpu_backends, "vulkan_library", lambda folder=None: None)
    if _vulkan_registered():
        pytest.skip("this llama.cpp has the Vulkan backend linked in")
    with pytest.raises(GpuUnavailable) as err:
        load_gpu_backend(tmp_path)
    assert err.value.message == gpu_backends.NO_VULKAN_BACKEND and "GGML_VULKAN=on" in err.value.hint


def _vulkan_registered() -> bool:
    return bool(open_ggml(llama_lib_dir()).reg_by_name(b"Vulkan"))


def _without_vulkan_loader(*args: str) -> subprocess.CompletedProcess[str]:
    """`glimpse ARGS` as on a machine with no Vulkan loader (libvulkan.so.1 hidden from the dynamic linker)."""
    env = {**os.environ, "GLIMPSE_RUNNER": "1"}
    return subprocess.run([str(REPO / "tests/gui/without-libs"), "libvulkan.so.1", "--", sys.executable, "-m",
                           "glimpse.engine", *args], capture_output=True, text=True, cwd=REPO, env=env, check=False,
                          timeout=300)


def _can_hide_libraries() -> bool:
    probe = subprocess.run([str(REPO / "tests/gui/without-libs"), "libvulkan.so.1", "--", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray((np.random.default_rng(3).random((64, 96, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.skipif(sys.platform != "linux", reason="hides a library with a Linux mount namespace")
def test_without_a_vulkan_loader_auto_answers_on_the_cpu_and_gpu_says_why(tiny_model_dir: Path, photo: Path) -> None:
    if not _can_hide_libraries():
        pytest.skip("no mount namespaces here (needs root or unprivileged user namespaces)")
    if _vulkan_registered():
        # A llama.cpp built here with -DGGML_VULKAN=on links the loader into libllama itself: it cannot start without
        # one, as built. The portable build (and the bundle) load the backend only where the loader is.
        pytest.skip("this llama.cpp has the Vulkan backend linked in: it needs the loader to start at all")
    auto = _without_vulkan_loader("ask", str(tiny_model_dir), str(photo), "What is this?", "--size", "256",
                                  "--max-tokens", "4", "--device", "auto")
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.strip()
    assert "LLM: CPU, vision: CPU" in auto.stderr and "so the GPU is not used" in auto.stderr, auto.stderr
    gpu = _without_vulkan_loader("ask", str(tiny_model_dir), str(photo), "What is this?", "--size", "256",
                                 "--max-tokens", "4", "--device", "gpu")
    assert gpu.returncode != 0 and not gpu.stdout.strip()
    assert "so the GPU is not used" in gpu.stderr and "Traceback" not in gpu.stderr, gpu.stderr
    lines = [line for line in gpu.stderr.splitlines() if "so the GPU is not used" in line]
    assert len(lines) == 1, gpu.stderr
