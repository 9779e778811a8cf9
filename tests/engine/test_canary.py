"""engine/runtime/canary.py and engine/cli/canary.py: llama.cpp's kernels proven in a throwaway process, the fallback
chain under injected crashes, hangs and wrong numbers, the cache, and the numpy reference itself."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from glimpse.engine.cli import HIDDEN_ENTRIES
from glimpse.engine.cli import canary as child
from glimpse.engine.cli.bench import format_table
from glimpse.engine.runtime import canary
from glimpse.engine.runtime import llm as llm_module
from glimpse.engine.runtime import model as model_module
from glimpse.engine.runtime.canary import (
    TOLERANCE,
    KernelCanaryError,
    KernelChoice,
    Rung,
    fault_for,
    logit_error,
    prove_kernels,
    reference_logits,
    rungs,
    tolerance,
)
from glimpse.engine.runtime.gpu_backends import NO_VULKAN_BACKEND, GpuBackend, GpuDevice, GpuUnavailable
from glimpse.engine.runtime.model import load_model
from glimpse.engine.runtime.vision_providers import no_provider_sentence

# f16 never reaches AMX or repacked kernels, so its as-built rung passes on every CPU: the injected faults are the only
# failures these tests see.
SAFE = "f16"


@pytest.fixture(scope="module")
def canary_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the module, so each canary process finds its model built (a few hundred ms saved each)."""
    return tmp_path_factory.mktemp("canary-home")


@pytest.fixture
def home(canary_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("GLIMPSE_HOME", str(canary_home))
    monkeypatch.delenv(canary.FAULT_ENV, raising=False)
    monkeypatch.setenv(canary.ENABLE_ENV, "1")
    for entry in canary.cache_folder().glob("*.json"):  # results only: the models stay built
        entry.unlink()
    yield canary_home


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("canary-models")
    for wt in ("f16", "q8_0"):
        child.canary_model(wt, folder)
    return folder


# -- the reference and the comparison -------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_type", ["f16", "q8_0"])
def test_the_reference_agrees_with_llama_cpp(models: Path, weight_type: str) -> None:
    # Without extra buffer types: in this process a broken AMX kernel (GCC 12 builds) would take pytest down.
    report = child.run_canary(weight_type, extra_bufts=False, variant=None, threads=1, model_folder=models)
    assert report["ok"], report
    assert report["error"] < tolerance(weight_type) / 3, report  # the margin the tolerance's comment claims
    assert report["prompt_tokens"] >= 40


def test_the_comparison_fails_on_wrong_numbers(models: Path) -> None:
    report = child.run_canary("f16", extra_bufts=False, variant=None, threads=1, fault="wrong", model_folder=models)
    assert not report["ok"] and report["error"] > 5 * TOLERANCE  # the quantized types' (larger) tolerance
    assert "wrong numbers" in report["reason"]


def test_logit_error_catches_garbage(models: Path) -> None:
    path = models / f"canary-v{child.MODEL_VERSION}-f16.gguf"
    ref = reference_logits(path, [5, 6, 7, 8])
    assert logit_error(ref, ref) == 0.0
    assert logit_error(ref + 1.0, ref) < 1e-12  # a constant shift does not change a softmax
    assert logit_error(ref[:, ::-1], ref) > 5 * TOLERANCE
    assert logit_error(ref * 1.2, ref) > 1.5 * TOLERANCE
    nan = ref.copy()
    nan[1, 3] = np.nan
    assert logit_error(nan, ref) == float("inf")
    assert logit_error(ref[:3], ref) == float("inf")


def test_the_canary_model_reaches_the_tiled_kernels(models: Path) -> None:
    reader = gguf.GGUFReader(str(models / f"canary-v{child.MODEL_VERSION}-q8_0.gguf"))
    matrices = [t for t in reader.tensors if len(t.shape) == 2]
    assert {t.tensor_type.name for t in matrices} == {"Q8_0"}
    for t in matrices:
        k, rows = (int(n) for n in t.shape)
        assert k % 256 == 0 and rows % 32 == 0, t.name  # AMX: rows % 32, k-quant blocks: K % 256


# -- the chain ------------------------------------------------------------------------------------------------------

def test_a_native_build_has_two_rungs() -> None:
    chain = rungs(Path("/nonexistent"))
    assert [r.name for r in chain] == ["as built", "no extra buffer types"]
    assert [r.extra_bufts for r in chain] == [True, False] and all(r.variant is None for r in chain)
    assert chain[0].description.startswith("as built (native build, ")


def test_a_portable_build_steps_down_variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("x64", "haswell", "skylakex", "sapphirerapids")
    for n in names:
        (tmp_path / f"libggml-cpu-{n}.so").write_bytes(b"")
    scores = {"libggml-cpu-x64.so": 1, "libggml-cpu-haswell.so": 60, "libggml-cpu-skylakex.so": 200,
              "libggml-cpu-sapphirerapids.so": 0}
    monkeypatch.setattr(canary, "variant_scores", lambda folder: scores)
    chain = rungs(tmp_path)
    assert [(r.name, r.extra_bufts, r.variant) for r in chain] == [
        ("as built", True, None), ("no extra buffer types", False, None),
        ("a lower CPU variant", False, "libggml-cpu-haswell.so"),
        ("the generic variant", False, "libggml-cpu-x64.so")]
    assert "libggml-cpu-skylakex.so" in chain[0].description
    # Only the generic variant below the best: no separate "lower" rung.
    monkeypatch.setattr(canary, "variant_scores", lambda folder: {**scores, "libggml-cpu-haswell.so": 0})
    assert [r.name for r in rungs(tmp_path)][2:] == ["the generic variant"]


def test_fault_switch_targets_one_rung() -> None:
    chain = rungs(Path("/nonexistent"))
    assert fault_for(chain[0], chain, "crash") == "crash"
    assert fault_for(chain[1], chain, "crash") is None
    assert fault_for(chain[1], chain, "wrong:no extra buffer types") == "wrong"
    assert fault_for(chain[0], chain, "wrong:no extra buffer types") is None
    assert fault_for(chain[0], chain, "explode") is None
    assert fault_for(chain[0], chain, "") is None


@pytest.mark.parametrize(("mode", "how"), [("crash", "killed by SIGSEGV"), ("illegal", "killed by SIGILL"),
                                           ("wrong", "wrong numbers"), ("hang", "hung")])
def test_a_failing_first_rung_steps_down(home: Path, monkeypatch: pytest.MonkeyPatch, mode: str, how: str) -> None:
    monkeypatch.setenv(canary.FAULT_ENV, mode)
    choice = prove_kernels(SAFE, threads=1, timeout_s=20 if mode == "hang" else canary.TIMEOUT_S)
    assert choice.rung.name == "no extra buffer types" and not choice.extra_bufts
    assert len(choice.failures) == 1 and choice.failures[0][0] == "as built"
    assert how in choice.failures[0][1], choice.failures
    assert choice.details["ok"] is True and choice.details["error"] < tolerance(SAFE)
    assert "as built: " in choice.describe() and choice.describe().startswith("no extra buffer types (")


def test_every_rung_failing_is_a_sentence(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary, "run_rung", lambda rung, wt, **kw: ("killed by SIGSEGV", {}))
    with pytest.raises(KernelCanaryError) as err:
        prove_kernels("q8_0", threads=1)
    text = str(err.value)
    assert "q8_0" in text and "as built: killed by SIGSEGV" in text and "no extra buffer types" in text
    assert "--quant f16" in text and "--quant" not in err.value.gui_text
    assert not list(canary.cache_folder().glob("*.json"))  # a failure is not cached: the next start tries again


def test_the_cache_is_hit_the_second_time_and_keyed_by_weight_type(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake(rung: Rung, wt: str, **kw: Any) -> tuple[str | None, dict[str, Any]]:
        calls.append((rung.name, wt))
        return ("killed by SIGILL", {}) if rung.name == "as built" else (None, {"ok": True})

    monkeypatch.setattr(canary, "run_rung", fake)
    first = prove_kernels("q8_0", threads=1)
    assert not first.from_cache and calls == [("as built", "q8_0"), ("no extra buffer types", "q8_0")]
    second = prove_kernels("q8_0", threads=1)
    assert second.from_cache and len(calls) == 2  # no process
    assert second.rung == first.rung and second.failures == (("as built", "killed by SIGILL"),)
    prove_kernels("f16", threads=1)
    assert calls[2:] == [("as built", "f16"), ("no extra buffer types", "f16")]  # another weight type: proven again
    files = sorted(p.name for p in canary.cache_folder().glob("*.json"))
    assert len(files) == 2 and files[0].startswith("f16-") and files[1].startswith("q8_0-")
    # A changed llama.cpp build is a different key.
    monkeypatch.setattr(canary, "build_identity", lambda lib_dir=None: {"llama_cpp_python": "0.0.0"})
    prove_kernels("f16", threads=1)
    assert len(calls) == 6


def test_a_damaged_cache_entry_is_proven_again(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary, "run_rung", lambda rung, wt, **kw: (None, {"ok": True}))
    prove_kernels("f16", threads=1)
    (entry,) = canary.cache_folder().glob("*.json")
    raw = json.loads(entry.read_text())
    raw["rung"]["variant"] = "libggml-cpu-gone.so"
    entry.write_text(json.dumps(raw))
    monkeypatch.setattr(canary, "run_rung", lambda rung, wt, **kw: (None, {"ok": True, "again": True}))
    assert prove_kernels("f16", threads=1).details.get("again") is True


# -- loading a model --------------------------------------------------------------------------------------------------

def test_load_model_proves_the_kernels_first(home: Path, tiny_model_dir: Path) -> None:
    with load_model(tiny_model_dir, n_ctx=512, tune=False) as model:
        assert isinstance(model.kernels, KernelChoice)
        assert model.kernels.proven and model.kernels.weight_type == "f16"
        assert model.llm.extra_bufts is model.kernels.extra_bufts
        assert "proven by the canary" in model.kernels.describe()
    with load_model(tiny_model_dir, n_ctx=512, tune=False) as model:
        assert model.kernels is not None and model.kernels.from_cache


def test_load_model_takes_a_given_rung(home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary, "run_rung", lambda *a, **k: pytest.fail("no canary when the rung is given"))
    chosen = KernelChoice(rungs()[1], "f16")
    with load_model(tiny_model_dir, n_ctx=512, tune=False, kernels=chosen) as model:
        assert model.kernels is chosen and model.llm.extra_bufts is False


def test_glimpse_canary_0_skips_it(home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(canary.ENABLE_ENV, "0")
    monkeypatch.setattr(canary, "run_rung", lambda *a, **k: pytest.fail("GLIMPSE_CANARY=0 runs no canary"))
    with load_model(tiny_model_dir, n_ctx=512, tune=False) as model:
        assert model.kernels is not None and not model.kernels.proven
        assert model.kernels.rung.name == "as built" and "not proven" in model.kernels.describe()


def test_the_weight_type_comes_from_the_gguf_without_model_json(tiny_model_dir: Path, models: Path) -> None:
    assert canary.weight_type_of(tiny_model_dir / "llm.gguf") == "f16"
    assert canary.weight_type_of(models / f"canary-v{child.MODEL_VERSION}-q8_0.gguf") == "q8_0"


# -- on this very machine ---------------------------------------------------------------------------------------------

def test_q8_0_kernels_on_this_cpu(home: Path) -> None:
    # The real chain for the default weight type. On an AMX Xeon with a llama.cpp built natively by GCC 12 the
    # as-built rung dies by SIGSEGV and the next rung is chosen; elsewhere the as-built rung passes. Either way some
    # rung must compute correctly, and every failure before it is recorded.
    choice = prove_kernels("q8_0")
    assert choice.details["ok"] and choice.details["error"] < tolerance("q8_0")
    names = [r.name for r in rungs()]
    assert [name for name, _ in choice.failures] == names[:names.index(choice.rung.name)]
    print("q8_0 on this CPU:", choice.describe(), json.dumps(choice.details))


def test_the_canary_model_is_built_once(tmp_path: Path) -> None:
    path = child.canary_model("f16", tmp_path)
    stamp = path.stat().st_mtime_ns
    assert child.canary_model("f16", tmp_path) == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary folder left behind
    shutil.rmtree(tmp_path)


def test_bench_names_the_rung() -> None:
    choice = KernelChoice(rungs()[1], "q8_0", (("as built", "killed by SIGILL"),))
    report = {"model": "m", "quant": "q8_0", "vision_precision": "int8", "threads": 2, "peak_rss_mb": 1, "sizes": [],
              "kernels": choice.describe()}
    lines = format_table(report).splitlines()
    assert "llama.cpp kernels: no extra buffer types (" in "\n".join(lines)
    assert any(line.endswith("proven by the canary (failed: as built: killed by SIGILL)") for line in lines)


def test_the_bundle_carries_every_hidden_entry() -> None:
    # Hidden entries are imported by name, which PyInstaller cannot see: the spec must list each module.
    spec = (Path(__file__).resolve().parents[2] / "packaging" / "glimpse.spec").read_text(encoding="utf-8")
    assert HIDDEN_ENTRIES["_canary"] == "glimpse.engine.cli.canary:main"
    for target in HIDDEN_ENTRIES.values():
        assert f'"{target.partition(":")[0]}"' in spec, target


def test_the_tuning_measures_the_proven_rung(home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def settings_for(folder: Path, manifest: Any, **kw: Any) -> Any:
        seen.append(kw["extra_bufts"])
        raise RuntimeError("measured")  # what matters is what it was asked to measure

    monkeypatch.setattr(model_module, "settings_for", settings_for)
    monkeypatch.setenv("GLIMPSE_TUNE", "1")
    with pytest.raises(RuntimeError, match="measured"):
        load_model(tiny_model_dir, n_ctx=512, kernels=KernelChoice(rungs()[1], "f16"))
    assert seen == [False]


@pytest.mark.parametrize("damage", [b"{\"format\": 1, \"key\": ", b"\x00\xff garbage", b"[1, 2, 3]"])
def test_a_half_written_cache_entry_is_set_aside_and_rebuilt(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture, damage: bytes) -> None:
    monkeypatch.setattr(canary, "run_rung", lambda rung, wt, **kw: (None, {"ok": True}))
    prove_kernels("f16", threads=1)
    (entry,) = canary.cache_folder().glob("*.json")
    entry.write_bytes(damage)  # a power cut mid-write, or another program's bytes
    with caplog.at_level("WARNING"):
        again = prove_kernels("f16", threads=1)
    assert not again.from_cache and entry.is_file()  # proven again and written anew
    kept = [p.read_bytes() for p in entry.parent.glob(entry.name + ".damaged*")]
    assert damage in kept  # the bad file kept beside (.damaged, or .damaged-2 ... beside older ones)
    assert sum("kernel canary's cache" in r.getMessage() for r in caplog.records) == 1  # said once


# -- the GPU rung ---------------------------------------------------------------------------------------------------

def _gpu_runs(monkeypatch: pytest.MonkeyPatch, gpu: tuple[str | None, dict[str, Any]]) -> list[str]:
    """Canary processes faked: the GPU rung answers ``gpu``, every CPU rung passes; returns the rungs run."""
    ran: list[str] = []

    def fake(rung: Rung, wt: str, **kw: Any) -> tuple[str | None, dict[str, Any]]:
        ran.append(rung.name)
        return gpu if rung.device == "gpu" else (None, {"ok": True})

    monkeypatch.setattr(canary, "run_rung", fake)
    monkeypatch.setattr(canary, "vulkan_library", lambda lib_dir=None: Path("/opt/libggml-vulkan.so"))
    return ran


def test_the_gpu_rung_comes_first_only_when_asked_for() -> None:
    assert canary.GPU_RUNG not in rungs(Path("/nonexistent"))
    for device in ("auto", "gpu"):
        chain = rungs(Path("/nonexistent"), device)
        assert chain[0] is canary.GPU_RUNG and chain[0].device == "gpu"
        assert [r.name for r in chain[1:]] == ["as built", "no extra buffer types"]
    with pytest.raises(ValueError, match="cuda"):
        rungs(Path("/nonexistent"), "cuda")


def test_a_passing_gpu_rung_is_chosen_and_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"ok": True, "gpu": "Radeon 780M", "driver": "radv, Mesa 25.0.7", "gpu_layers": 3}
    ran = _gpu_runs(monkeypatch, (None, report))
    choice = prove_kernels("q8_0", threads=1, device="auto")
    assert ran == ["the GPU"] and choice.device == "gpu" and choice.gpu_name == "Radeon 780M"
    assert choice.describe().startswith("the GPU (Vulkan: Radeon 780M; driver radv, Mesa 25.0.7), proven")
    assert prove_kernels("q8_0", threads=1, device="auto").from_cache and len(ran) == 1
    # A verdict about the GPU holds for the drivers it was seen with: another driver set-up is proven again.
    monkeypatch.setenv("GGML_VK_VISIBLE_DEVICES", "1")
    assert not prove_kernels("q8_0", threads=1, device="auto").from_cache and len(ran) == 2
    # The CPU's verdict is its own entry, proven without the GPU.
    assert prove_kernels("q8_0", threads=1).device == "cpu" and ran[2:] == ["as built"]


@pytest.mark.parametrize(("gpu", "sentence"), [
    (("unavailable", {"ok": False, "unavailable": True,
                      "reason": "The Vulkan loader (libvulkan.so.1) is not installed, so the GPU is not used.",
                      "hint": "Install it."}),
     "The Vulkan loader (libvulkan.so.1) is not installed, so the GPU is not used."),
    (("killed by SIGSEGV", {}), "The GPU's check failed (killed by SIGSEGV), so the GPU is not used."),
    (("wrong numbers (error 3.1 > 0.05)", {"ok": False}),
     "The GPU's check failed (wrong numbers (error 3.1 > 0.05)), so the GPU is not used."),
])
def test_a_failing_gpu_is_a_sentence_then_the_cpu(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  gpu: tuple[str, dict[str, Any]], sentence: str) -> None:
    ran = _gpu_runs(monkeypatch, gpu)
    choice = prove_kernels("f16", threads=1, device="auto")
    assert ran == ["the GPU", "as built"] and choice.device == "cpu" and choice.rung.name == "as built"
    assert choice.gpu_not_used == sentence
    # Asked for the GPU alone, the same failure is the error, and the CPU rungs are not tried.
    ran.clear()
    with pytest.raises(GpuUnavailable) as err:
        prove_kernels("f16", threads=1, device="gpu")
    assert err.value.message == sentence and ran == ["the GPU"] and err.value.hint


def test_a_build_without_vulkan_costs_no_process(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran = _gpu_runs(monkeypatch, (None, {"ok": True}))
    monkeypatch.setattr(canary, "vulkan_library", lambda lib_dir=None: None)
    choice = prove_kernels("f16", threads=1, device="auto")
    assert ran == ["as built"] and choice.gpu_not_used == NO_VULKAN_BACKEND
    with pytest.raises(GpuUnavailable) as err:
        prove_kernels("f16", threads=1, device="gpu")
    assert err.value.message == NO_VULKAN_BACKEND and "GGML_VULKAN=on" in err.value.hint
    assert "Settings > Device" in err.value.gui_hint and "GGML" not in err.value.gui_hint  # the window's own advice


def test_a_gpu_that_stopped_steps_down_to_the_cpu() -> None:
    gpu = KernelChoice(canary.GPU_RUNG, "q8_0")
    down = canary.step_down(gpu, 1, "killed by SIGSEGV", Path("/nonexistent"))
    assert down.device == "cpu" and down.rung.name == "as built" and "killed by SIGSEGV" in down.describe()


def test_auto_loads_on_the_cpu_when_the_gpu_will_not_hold_the_model(home: Path, tiny_model_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The canary's small model passed on the GPU, the real one does not load there (the loader vanished since, or
    # the device's memory): "auto" answers on the CPU and says why; "gpu" is the error.
    _gpu_runs(monkeypatch, (None, {"ok": True, "gpu": "Arc A380"}))
    why = "The Vulkan loader (libvulkan.so.1) is not installed, so the GPU is not used."

    def no_gpu() -> Any:
        raise GpuUnavailable(why)

    monkeypatch.setattr(llm_module, "load_gpu_backend", no_gpu)
    with load_model(tiny_model_dir, n_ctx=512, tune=False, device="auto") as model:
        assert model.kernels is not None and model.kernels.device == "cpu"
        # one sentence for each half: this onnxruntime has no GPU provider for the vision encoder
        assert model.devices == "LLM: CPU, vision: CPU" and model.gpu_not_used == f"{why} {no_provider_sentence()}"
        assert model.llm.gpu_layers == 0 and model.ask(np.zeros((64, 64, 3), np.uint8), "Hi?", max_tokens=2).text
    with pytest.raises(GpuUnavailable, match="not installed"):
        load_model(tiny_model_dir, n_ctx=512, tune=False, device="gpu")
    with load_model(tiny_model_dir, n_ctx=512, tune=False, device="cpu") as model:
        assert model.devices == "LLM: CPU, vision: CPU" and model.gpu_not_used == ""


def test_bench_names_the_devices() -> None:
    report = {"model": "m", "quant": "q8_0", "vision_precision": "int8", "threads": 2, "peak_rss_mb": 1, "sizes": [],
              "devices": "LLM: Vulkan (Intel UHD 770, 25/25 layers), vision: CPU",
              "gpu_driver": "Intel open-source Mesa driver, Mesa 25.0.7"}
    assert ("devices: LLM: Vulkan (Intel UHD 770, 25/25 layers), vision: CPU; GPU driver: Intel open-source Mesa "
            "driver, Mesa 25.0.7") in format_table(report).splitlines()
    report = {**report, "devices": "LLM: CPU, vision: CPU", "gpu_driver": None,
              "gpu_not_used": NO_VULKAN_BACKEND}
    assert f"devices: LLM: CPU, vision: CPU ({NO_VULKAN_BACKEND})" in format_table(report).splitlines()


def test_a_gpu_without_room_for_a_layer_says_so(home: Path, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The canary passed on the GPU, but its free memory holds none of this model's layers: the CPU runs them all,
    # and the sentence says why the GPU is not used.
    _gpu_runs(monkeypatch, (None, {"ok": True, "gpu": "Tiny GPU"}))
    tiny = GpuBackend("Vulkan", None, (GpuDevice("Vulkan0", "Tiny GPU", "integrated GPU", 1 << 20, 1 << 20),))
    monkeypatch.setattr(llm_module, "load_gpu_backend", lambda: tiny)
    with load_model(tiny_model_dir, n_ctx=512, tune=False, device="auto") as model:
        assert model.llm.gpu_layers == 0 and model.devices == "LLM: CPU, vision: CPU"
        assert model.gpu_not_used == ("The GPU (Tiny GPU) has too little free memory for any of the model's layers, "
                                      f"so the GPU is not used. {no_provider_sentence()}")


def test_the_gpu_rung_has_time_to_build_its_pipelines(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: dict[str, float] = {}

    def fake(rung: Rung, wt: str, **kw: Any) -> tuple[str | None, dict[str, Any]]:
        timeouts[rung.name] = kw["timeout_s"]
        return ("hung", {}) if rung.device == "gpu" else (None, {"ok": True})

    monkeypatch.setattr(canary, "run_rung", fake)
    monkeypatch.setattr(canary, "vulkan_library", lambda lib_dir=None: Path("/opt/libggml-vulkan.so"))
    prove_kernels("f16", threads=1, timeout_s=20, device="auto")
    assert timeouts == {"the GPU": canary.GPU_TIMEOUT_S, "as built": 20}
