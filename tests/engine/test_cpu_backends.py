"""engine/runtime/cpu_backends.py: finding llama.cpp's CPU variant libraries, refusing a broken set, and (where the
installed llama-cpp-python is the portable build) loading the right one for this processor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glimpse.engine.runtime import cpu_backends
from glimpse.engine.runtime.cpu_backends import CpuBackendError, load_cpu_backends, mapped_variant, variant_files
from glimpse.engine.runtime.llm import LanguageModel

LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="Linux file names")
def test_variant_files_are_the_cpu_variants_only(tmp_path: Path) -> None:
    for name in ("libggml-cpu-haswell.so", "libggml-cpu-x64.so", "libggml.so", "libggml-base.so", "libllama.so",
                 "libggml-cpu-haswell.so.txt", "ggml-cpu-sse42.dll"):
        (tmp_path / name).write_bytes(b"")
    assert variant_files(tmp_path) == ("libggml-cpu-haswell.so", "libggml-cpu-x64.so")
    assert variant_files(tmp_path / "missing") == ()


def test_a_native_build_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_backends, "_loaded", [])
    (tmp_path / "libllama.so").write_bytes(b"")
    assert load_cpu_backends(tmp_path) is None


@pytest.mark.skipif(not LINUX, reason="Linux file names")
def test_variants_without_ggml_are_a_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_backends, "_loaded", [])
    (tmp_path / "libggml-cpu-x64.so").write_bytes(b"")
    with pytest.raises(CpuBackendError) as err:
        load_cpu_backends(tmp_path)
    assert str(tmp_path) in str(err.value) and "Reinstall" in str(err.value)


def test_mapped_variant_reads_proc_maps() -> None:
    line = "7f00-7f10 r-xp 00000000 fd:01 123 /opt/glimpse/_internal/llama_cpp/lib/libggml-cpu-{}.so"
    assert mapped_variant("\n".join([line.format("haswell"), line.format("haswell")])) == "libggml-cpu-haswell.so"
    assert mapped_variant(line.format("x64") + "\n" + line.format("haswell")) is None  # two: cannot tell
    assert mapped_variant("7f00-7f10 r-xp 0 0 0 /usr/lib/libggml.so\n") is None


def _portable_lib_dir() -> Path | None:
    try:
        lib_dir = cpu_backends.llama_lib_dir()
    except ImportError:
        return None
    return lib_dir if variant_files(lib_dir) else None


@pytest.mark.skipif(_portable_lib_dir() is None, reason="the installed llama-cpp-python is a native build")
def test_the_portable_build_loads_a_variant_this_cpu_runs() -> None:
    backends = load_cpu_backends()
    assert backends is not None
    assert backends.lib_dir == _portable_lib_dir()
    assert "libggml-cpu-x64.so" in backends.variants or "ggml-cpu-x64.dll" in backends.variants
    if LINUX:
        assert backends.loaded in backends.variants
        flags = Path("/proc/cpuinfo").read_text()
        # The variant ggml scored best must match this CPU: AVX2 machines get an AVX2 variant, others do not.
        assert (" avx2" in flags) == (backends.loaded not in ("libggml-cpu-x64.so", "libggml-cpu-sse42.so",
                                                               "libggml-cpu-sandybridge.so",
                                                               "libggml-cpu-ivybridge.so",
                                                               "libggml-cpu-piledriver.so"))
    assert load_cpu_backends() is backends  # once per process


@pytest.mark.skipif(_portable_lib_dir() is None, reason="the installed llama-cpp-python is a native build")
def test_the_portable_build_loads_a_model(tiny_model_dir: Path) -> None:
    # The backends must land in the registry libllama uses: loading a model is the proof (a second copy of ggml
    # would leave llama.cpp with "no backends are loaded").
    with LanguageModel(tiny_model_dir / "llm.gguf", n_ctx=64, n_threads=1) as llm:
        assert llm.n_embd > 0


def test_the_core_library_is_the_one_libllama_links(tmp_path: Path) -> None:
    for name in ("libggml.so", "libggml.so.0", "libggml.dylib", "libggml.0.dylib", "ggml.dll"):
        (tmp_path / name).write_bytes(b"")
    expected = {"win32": "ggml.dll", "darwin": "libggml.0.dylib"}.get(sys.platform, "libggml.so.0")
    assert cpu_backends.core_library(tmp_path) == tmp_path / expected
    (tmp_path / expected).unlink()
    if sys.platform != "win32":
        assert cpu_backends.core_library(tmp_path).name in ("libggml.so", "libggml.dylib")


def test_best_variant_ranks_by_ggml_score() -> None:
    scores = {"libggml-cpu-x64.so": 1, "libggml-cpu-haswell.so": 60, "libggml-cpu-skylakex.so": 200,
              "libggml-cpu-sapphirerapids.so": 0}
    assert cpu_backends.best_variant(scores) == "libggml-cpu-skylakex.so"  # 0: cannot run here
    assert cpu_backends.best_variant(scores, below="libggml-cpu-skylakex.so") == "libggml-cpu-haswell.so"
    assert cpu_backends.best_variant(scores, at_most="libggml-cpu-haswell.so") == "libggml-cpu-haswell.so"
    assert cpu_backends.best_variant(scores, below="libggml-cpu-x64.so") is None
    assert cpu_backends.best_variant({}) is None
    assert cpu_backends.generic_variant(tuple(scores)) == ("libggml-cpu-x64.so" if LINUX else None)


@pytest.mark.skipif(not LINUX, reason="Linux file names")
def test_files_that_are_not_libraries_score_zero(tmp_path: Path) -> None:
    (tmp_path / "libggml-cpu-x64.so").write_bytes(b"not a library")
    assert cpu_backends.variant_scores(tmp_path) == {"libggml-cpu-x64.so": 0}
    assert cpu_backends.variant_scores(tmp_path / "missing") == {}


@pytest.mark.skipif(not LINUX, reason="Linux file names")
def test_a_variant_not_installed_is_a_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_backends, "_loaded", [])
    (tmp_path / "libggml-cpu-x64.so").write_bytes(b"")
    with pytest.raises(CpuBackendError) as err:
        load_cpu_backends(tmp_path, variant="libggml-cpu-zen9.so")
    assert "libggml-cpu-zen9.so" in str(err.value)


def test_a_native_build_ignores_a_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_backends, "_loaded", [])
    assert load_cpu_backends(tmp_path, variant="libggml-cpu-x64.so") is None


def test_another_variant_cannot_replace_the_loaded_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = cpu_backends.CpuBackends(tmp_path, ("libggml-cpu-x64.so", "libggml-cpu-haswell.so"),
                                      "libggml-cpu-haswell.so")
    monkeypatch.setattr(cpu_backends, "_loaded", [loaded])
    assert load_cpu_backends(variant="libggml-cpu-haswell.so") is loaded
    assert load_cpu_backends() is loaded
    with pytest.raises(CpuBackendError, match="already loaded"):
        load_cpu_backends(variant="libggml-cpu-x64.so")


@pytest.mark.skipif(_portable_lib_dir() is None, reason="the installed llama-cpp-python is a native build")
def test_the_portable_build_scores_its_variants() -> None:
    lib_dir = _portable_lib_dir()
    assert lib_dir is not None
    scores = cpu_backends.variant_scores(lib_dir)
    assert set(scores) == set(variant_files(lib_dir))
    assert any(name.endswith(("x64.so", "x64.dll")) and score > 0 for name, score in scores.items())
