"""engine/runtime/vision_providers.py and engine/cli/vision_canary.py: the vision encoder on an onnxruntime execution
provider only after a throwaway process has seen it give the CPU's answers, one sentence when it does not, and the
cache of that verdict.

onnxruntime's default package has no GPU provider, so the checks that run a real process use the CPU's own provider
or onnxruntime's Azure provider (which takes no node: the graph runs on the CPU behind a provider that is not the
CPU's) through GLIMPSE_VISION_PROVIDER. A real non-CPU provider (OpenVINO) is exercised by tests/gpu/
test_vision_provider.py in .ci/package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from glimpse.engine.cli import HIDDEN_ENTRIES
from glimpse.engine.cli.bench import format_table
from glimpse.engine.runner import server
from glimpse.engine.runtime import vision_providers as vp
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.vision import CPU_PROVIDER, VisionEncoder
from glimpse.engine.runtime.vision_providers import (
    CPU,
    KNOWN,
    ProviderSpec,
    VisionChoice,
    candidates,
    choose_vision,
    fault_for,
    runtime_identity,
)

AZURE = "AzureExecutionProvider"
needs_azure = pytest.mark.skipif(AZURE not in ort.get_available_providers(),
                                 reason="this onnxruntime has no Azure provider to stand in for a GPU one")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    for name in (vp.PROVIDER_ENV, vp.FAULT_ENV, vp.OPENVINO_DEVICE_ENV):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path / "home"


# -- which providers, and how they are created ------------------------------------------------------------------------

def test_only_known_gpu_providers_are_candidates_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vp.PROVIDER_ENV, raising=False)
    assert candidates([CPU_PROVIDER, AZURE]) == []  # onnxruntime's default package: nothing to try
    got = candidates(["OpenVINOExecutionProvider", CPU_PROVIDER, "CUDAExecutionProvider", "TensorrtExecutionProvider"])
    assert [s.label for s in got] == ["CUDA", "OpenVINO"]


def test_the_variable_names_the_providers_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    have = ["CUDAExecutionProvider", AZURE, CPU_PROVIDER]
    monkeypatch.setenv(vp.PROVIDER_ENV, "none")
    assert candidates(have) == []
    assert "GLIMPSE_VISION_PROVIDER=none" in vp.no_provider_sentence()
    monkeypatch.setenv(vp.PROVIDER_ENV, f"OpenVINOExecutionProvider, {AZURE}")
    assert [s.name for s in candidates(have)] == [AZURE]  # one this onnxruntime lacks is left out
    assert candidates(have)[0].label == "Azure"


def test_openvino_takes_its_device_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    openvino = next(s for s in KNOWN if s.label == "OpenVINO")
    monkeypatch.delenv(vp.OPENVINO_DEVICE_ENV, raising=False)
    assert openvino.options() == {"device_type": "GPU"}
    monkeypatch.setenv(vp.OPENVINO_DEVICE_ENV, "CPU")
    assert openvino.options() == {"device_type": "CPU"}


def test_the_sentence_names_the_installed_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vp.PROVIDER_ENV, raising=False)
    sentence = vp.no_provider_sentence()
    assert sentence.startswith(f"This onnxruntime ({vp.runtime_name()}) has no GPU") and ort.__version__ in sentence
    assert sentence.endswith("runs on the CPU.")
    assert vp.runtime_name().split()[0] in vp.PACKAGES  # "onnxruntime", "onnxruntime-openvino", ...


def test_the_identity_changes_with_a_device_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vp.OPENVINO_DEVICE_ENV, raising=False)
    before = runtime_identity()
    assert before == runtime_identity()
    assert any(name.startswith("libonnxruntime") or "onnxruntime" in name for *_, name in before["native"])
    monkeypatch.setenv(vp.OPENVINO_DEVICE_ENV, "CPU")
    assert runtime_identity() != before
    monkeypatch.delenv(vp.OPENVINO_DEVICE_ENV)
    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent.json")  # WebGPU's Vulkan drivers are part of it
    assert runtime_identity() != before


def test_faults_hit_the_first_provider_or_the_named_one() -> None:
    specs = [vp.spec_for("CUDAExecutionProvider"), vp.spec_for(AZURE)]
    assert fault_for(specs[0], specs, "crash") == "crash" and fault_for(specs[1], specs, "crash") is None
    assert fault_for(specs[1], specs, "wrong:Azure") == "wrong" and fault_for(specs[0], specs, "wrong:Azure") is None
    assert fault_for(specs[0], specs, "melt") is None


def test_the_check_is_a_hidden_entry() -> None:
    assert HIDDEN_ENTRIES[vp.ENTRY] == "glimpse.engine.cli.vision_canary:main"


# -- choosing, with the check's process faked --------------------------------------------------------------------------

def _fake_checks(monkeypatch: pytest.MonkeyPatch, results: dict[str, tuple[str | None, dict[str, Any]]]) -> list[str]:
    ran: list[str] = []

    def fake(folder: Path, spec: ProviderSpec, **kw: Any) -> tuple[str | None, dict[str, Any]]:
        ran.append(spec.name)
        return results[spec.name]

    monkeypatch.setattr(vp, "check_provider", fake)
    monkeypatch.setattr(vp.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "OpenVINOExecutionProvider", CPU_PROVIDER])
    return ran


def test_the_cpu_choice_runs_no_check(home: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    ran = _fake_checks(monkeypatch, {})
    assert choose_vision(tiny_model_dir, "cpu") == CPU and ran == []
    assert CPU.not_used == "" and CPU.describe() == "CPU"


def test_without_a_provider_the_cpu_says_why(home: Path, monkeypatch: pytest.MonkeyPatch,
                                             tiny_model_dir: Path) -> None:
    monkeypatch.setattr(vp.ort, "get_available_providers", lambda: [AZURE, CPU_PROVIDER])
    monkeypatch.setattr(vp, "check_provider", lambda *a, **k: pytest.fail("no provider, no process"))
    choice = choose_vision(tiny_model_dir, "auto")
    assert not choice.on_gpu and choice.not_used == vp.no_provider_sentence()
    assert choose_vision(tiny_model_dir, "gpu").not_used == vp.no_provider_sentence()  # gpu is the LLM's demand


def test_a_failing_provider_is_a_sentence_and_the_next_is_tried(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tiny_model_dir: Path) -> None:
    ran = _fake_checks(monkeypatch, {
        "CUDAExecutionProvider": ("killed by SIGSEGV", {}),
        "OpenVINOExecutionProvider": (None, {"ok": True, "device": "Intel(R) Arc(TM) A380", "summary": "mean KL 0",
                                             "provider_ms": 12.0, "cpu_ms": 80.0})})
    choice = choose_vision(tiny_model_dir, "auto")
    assert ran == ["CUDAExecutionProvider", "OpenVINOExecutionProvider"]
    assert choice.on_gpu and choice.describe() == "OpenVINO (Intel(R) Arc(TM) A380)"
    assert choice.failures == ("The vision encoder failed its check on CUDA (killed by SIGSEGV), so it runs on the "
                               "CPU.",)
    assert choice.not_used == ""  # it is on a GPU
    assert choice.check_summary() == "OpenVINO (Intel(R) Arc(TM) A380): mean KL 0; encode 12 ms, the CPU's 80 ms"
    # The verdict is cached: the next load starts no process and gets the same choice.
    again = choose_vision(tiny_model_dir, "auto")
    assert ran == ["CUDAExecutionProvider", "OpenVINOExecutionProvider"]
    assert again == choice and again.from_cache and again.check_summary().endswith("(cached)")
    # Another OpenVINO device is another verdict.
    monkeypatch.setenv(vp.OPENVINO_DEVICE_ENV, "GPU.1")
    choose_vision(tiny_model_dir, "auto")
    assert len(ran) == 4


def test_when_every_provider_fails_the_cpu_keeps_every_sentence(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                tiny_model_dir: Path) -> None:
    ran = _fake_checks(monkeypatch, {
        "CUDAExecutionProvider": ("killed by SIGSEGV", {}),
        "OpenVINOExecutionProvider": ("its answers differ from the CPU's: top-1 agreement 40.0 % < 95 %", {})})
    choice = choose_vision(tiny_model_dir, "auto")
    assert not choice.on_gpu and len(choice.failures) == 2
    assert choice.not_used == (
        "The vision encoder failed its check on CUDA (killed by SIGSEGV), so it runs on the CPU. "
        "The vision encoder failed its check on OpenVINO (its answers differ from the CPU's: top-1 agreement 40.0 % "
        "< 95 %), so it runs on the CPU.")
    assert choose_vision(tiny_model_dir, "auto") == choice and len(ran) == 2  # cached, failures included


def test_a_damaged_cache_entry_is_checked_again(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiny_model_dir: Path) -> None:
    ran = _fake_checks(monkeypatch, {"CUDAExecutionProvider": (None, {"ok": True, "device": "RTX"})})
    choose_vision(tiny_model_dir, "auto")
    (entry,) = vp.cache_folder().glob("vision-*.json")
    data = json.loads(entry.read_text())
    data["choice"]["provider"] = "SomethingElseExecutionProvider"  # not one this onnxruntime would try
    entry.write_text(json.dumps(data))
    assert choose_vision(tiny_model_dir, "auto").provider == "CUDAExecutionProvider" and len(ran) == 2
    entry.write_bytes(b"\x00garbage")
    assert choose_vision(tiny_model_dir, "auto").provider == "CUDAExecutionProvider" and len(ran) == 3


# -- the check's real process ------------------------------------------------------------------------------------------

def test_the_cpu_against_itself_passes_the_gate(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiny_model_dir: Path) -> None:
    ok, report = vp.check_provider(tiny_model_dir, vp.spec_for(CPU_PROVIDER), threads=1)
    assert ok is None, report
    assert report["gate"]["passed"] and report["gate"]["mean_kl"] < 1e-6 and report["gate"]["top1"] == 1.0
    assert report["centred_cosine"] == 1.0 and 1 <= len(report["views"]) <= vp.MAX_VIEWS
    assert report["views"][0].split("_")[0] in ("screen", "doc")  # text first


@pytest.mark.parametrize(("fault", "expect"), [
    ("wrong", "its image rows differ from the CPU's: centred cosine"),
    ("crash", "killed by SIGSEGV"),
    ("illegal", "killed by SIGILL"),
])
def test_a_provider_that_fails_its_check_is_not_used(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                     tiny_model_dir: Path, fault: str, expect: str) -> None:
    monkeypatch.setenv(vp.PROVIDER_ENV, CPU_PROVIDER)
    monkeypatch.setenv(vp.FAULT_ENV, fault)
    choice = choose_vision(tiny_model_dir, "auto")
    assert choice.provider == CPU_PROVIDER and len(choice.failures) == 1
    assert choice.failures[0].startswith(f"The vision encoder failed its check on CPU ({expect}")
    assert choice.failures[0].endswith("so it runs on the CPU.")


def test_a_hung_check_is_killed_in_bounded_time(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                tiny_model_dir: Path) -> None:
    monkeypatch.setenv(vp.PROVIDER_ENV, CPU_PROVIDER)
    monkeypatch.setenv(vp.FAULT_ENV, "hang")
    choice = choose_vision(tiny_model_dir, "auto", timeout_s=5)
    assert "hung: no result within 5 s (killed)" in choice.not_used
    # Neither a hang (a busy machine looks the same) nor an injected fault is kept: the next load checks again.
    assert not vp.cache_folder().exists() or not list(vp.cache_folder().glob("vision-*.json"))


def test_a_hang_is_not_remembered(home: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    ran = _fake_checks(monkeypatch, {"CUDAExecutionProvider": ("hung: no result within 240 s (killed)", {}),
                                     "OpenVINOExecutionProvider": ("killed by SIGSEGV", {})})
    choose_vision(tiny_model_dir, "auto")
    choose_vision(tiny_model_dir, "auto")
    assert len(ran) == 4  # checked again
    monkeypatch.setattr(vp, "check_provider", lambda *a, **k: ("killed by SIGSEGV", {}))
    choose_vision(tiny_model_dir, "auto")
    monkeypatch.setattr(vp, "check_provider", lambda *a, **k: pytest.fail("a crash is a lasting verdict"))
    assert "killed by SIGSEGV" in choose_vision(tiny_model_dir, "auto").not_used


@needs_azure
def test_a_proven_provider_encodes_the_model_and_answers_alike(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tiny_model_dir: Path) -> None:
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (96, 128, 3), np.uint8))
    with load_model(tiny_model_dir, device="cpu") as model:
        on_cpu = model.ask(picture, "What is this?", max_tokens=8)
        assert model.devices.endswith("vision: CPU") and model.vision_check == ""
    monkeypatch.setenv(vp.PROVIDER_ENV, AZURE)
    with load_model(tiny_model_dir, device="auto") as model:
        assert model.vision.provider == AZURE and model.vision_choice.details["gate"]["passed"]
        assert model.devices.endswith("vision: Azure") and "vision encoder" not in model.gpu_not_used
        assert model.vision_check.startswith("Azure: mean KL")
        assert model.ask(picture, "What is this?", max_tokens=8).token_ids == on_cpu.token_ids
        # bench's header says how the provider passed
        report = {"model": "tiny", "quant": "f16", "vision_precision": "fp32", "threads": 1, "runner": False,
                  "peak_rss_mb": 1, "sizes": [], "devices": model.devices, "vision_check": model.vision_check}
        assert f"vision provider: {model.vision_check}" in format_table(report)


def test_a_provider_that_does_not_start_now_leaves_the_cpu(home: Path, tiny_model_dir: Path) -> None:
    # Proven once, gone now (a driver removed since): the model loads with the CPU and says so.
    gone = VisionChoice("CUDAExecutionProvider", (("device_id", "0"),), "CUDA", "RTX", details={"ok": True})
    with load_model(tiny_model_dir, device="auto", vision=gone) as model:
        assert model.vision.provider == CPU_PROVIDER and model.devices.endswith("vision: CPU")
        assert model.gpu_not_used.endswith("onnxruntime could not start CUDA, so the vision encoder runs on the "
                                           "CPU.")


@needs_azure
def test_a_provider_that_fails_while_encoding_hands_over_to_the_cpu(tiny_model_dir: Path) -> None:
    encoder = VisionEncoder(tiny_model_dir / "vision.onnx", provider=AZURE)
    assert encoder.provider == AZURE
    pixels = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    expected = VisionEncoder(tiny_model_dir / "vision.onnx").encode(pixels)

    class Failing:
        def run(self, *a: Any) -> Any:
            raise RuntimeError("device lost\nmore detail")

    encoder._session = Failing()  # type: ignore[assignment]
    rows = encoder.encode(pixels)
    np.testing.assert_array_equal(rows, expected)
    assert encoder.provider == CPU_PROVIDER
    assert encoder.fallback == "Azure failed while encoding (device lost), so the vision encoder runs on the CPU."


@needs_azure
def test_a_restart_after_a_crash_puts_the_encoder_on_the_cpu(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                             tiny_model_dir: Path) -> None:
    monkeypatch.setenv(vp.PROVIDER_ENV, AZURE)
    assert server._safer(str(tiny_model_dir), 0, "", lambda *a: None, "auto") == {}
    options = server._safer(str(tiny_model_dir), 1, "killed by SIGSEGV", lambda *a: None, "auto")
    vision = options["vision"]
    assert not vision.on_gpu
    assert vision.not_used == ("The model's process stopped (killed by SIGSEGV) while the vision encoder ran on "
                               "Azure, so it runs on the CPU.")
    assert server._safer(str(tiny_model_dir), 1, "killed by SIGSEGV", lambda *a: None, "cpu").get("vision") is None


def test_nothing_is_left_behind_by_a_check(home: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv(vp.PROVIDER_ENV, CPU_PROVIDER)
    before = sorted(os.listdir(tiny_model_dir))
    choose_vision(tiny_model_dir, "auto")
    assert sorted(os.listdir(tiny_model_dir)) == before  # the model folder is only read
    assert all(p.name.startswith("vision-") for p in vp.cache_folder().iterdir())


@needs_azure
def test_a_provider_that_raises_at_start_leaves_the_cpu(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ort.InferenceSession

    def session(path: str, sess_options: Any = None, providers: Any = None) -> Any:
        if providers and providers[0] != CPU_PROVIDER:
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return real(path, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    encoder = VisionEncoder(tiny_model_dir / "vision.onnx", provider=AZURE, label="CUDA")
    assert encoder.provider == CPU_PROVIDER
    assert encoder.fallback == ("CUDA did not start (CUDA driver version is insufficient for CUDA runtime version), "
                                "so the vision encoder runs on the CPU.")
    assert encoder.encode(np.zeros((1, 3, 64, 64), np.float32)).shape[0] == 1  # one 64 px patch, one row


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_hung_check_ends_with_its_parent(home: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # A runner killed while its check hangs (the window closed, a second crash): the check must not stay behind.
    parent = (
        "import subprocess, sys, time\n"
        "from glimpse.engine.system import self_command\n"
        f"p = subprocess.Popen(self_command('{vp.ENTRY}', '--model', {str(tiny_model_dir)!r}, '--provider', "
        f"'{CPU_PROVIDER}', '--fault', 'hang'), stderr=subprocess.PIPE, text=True)\n"
        "print(p.pid, flush=True)\n"
        "print(p.stderr.readline(), end='', flush=True)\n"  # its first line comes after it asked to die with us
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, vp.PROVIDER_ENV: CPU_PROVIDER})
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert proc.stdout.readline().startswith("glimpse _vision_canary: checking CPUExecutionProvider")
    assert _state(child) not in ("", "Z")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _state(child) not in ("", "Z"):
        time.sleep(0.1)
    assert _state(child) in ("", "Z"), "the check outlived its parent"


def _state(pid: int) -> str:
    """The process's state letter from /proc ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
