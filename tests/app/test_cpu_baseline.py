"""The launcher's processor check (app/cpu_baseline.py): fake CPUID and /proc/cpuinfo sources, the real CPUID
against the kernel's own flags, and the launcher refusing before any native library is imported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glimpse.app import cpu_baseline

REPO = Path(__file__).resolve().parents[2]

# CPUID leaf 1 ECX of a Core 2 "Penryn" (SSE3, SSSE3, CX16, SSE4.1; no SSE4.2, no POPCNT) and of a Nehalem.
PENRYN_ECX = (1 << 0) | (1 << 9) | (1 << 13) | (1 << 19)
NEHALEM_ECX = PENRYN_ECX | (1 << 20) | (1 << 23)


def fake_cpuid(leaf1_ecx: int, ext_ecx: int = 1, highest: int = 0xD, highest_ext: int = 0x80000008):
    def cpuid(leaf: int) -> dict[str, int]:
        regs = {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0}
        if leaf == 0:
            regs["eax"] = highest
        elif leaf == 0x80000000:
            regs["eax"] = highest_ext
        elif leaf == 1:
            regs["ecx"] = leaf1_ecx
        elif leaf == 0x80000001:
            regs["ecx"] = ext_ecx
        return regs

    return cpuid


def test_a_processor_with_the_baseline_passes() -> None:
    assert cpuid_missing(NEHALEM_ECX) == []
    assert cpuid_missing(0xFFFFFFFF) == []
    assert cpu_baseline.baseline_message([]) is None


def cpuid_missing(ecx: int, **kw: int) -> list[str] | None:
    return cpu_baseline.missing_features(cpuid=fake_cpuid(ecx, **kw))


def test_each_missing_feature_is_named() -> None:
    assert cpuid_missing(PENRYN_ECX) == ["SSE4.2", "POPCNT"]
    assert cpuid_missing(NEHALEM_ECX, ext_ecx=0) == ["LAHF-SAHF"]
    assert cpuid_missing(0) == ["SSE3", "SSSE3", "CMPXCHG16B", "SSE4.1", "SSE4.2", "POPCNT"]


def test_leaves_the_processor_does_not_have_count_as_missing() -> None:
    # A CPUID that stops at leaf 0 (or has no extended leaves) must not be read beyond it: those bits are garbage.
    assert cpuid_missing(NEHALEM_ECX, highest=0) == ["SSE3", "SSSE3", "CMPXCHG16B", "SSE4.1", "SSE4.2", "POPCNT"]
    assert cpuid_missing(NEHALEM_ECX, highest_ext=0x80000000) == ["LAHF-SAHF"]


def test_the_sentence_names_what_is_missing() -> None:
    text = cpu_baseline.baseline_message(["SSE4.2", "POPCNT"])
    assert text is not None
    assert "SSE4.2, POPCNT" in text and "\n" not in text and text.count(". ") == 0


def test_proc_cpuinfo_flags_are_the_fallback() -> None:
    nehalem = "processor\t: 0\nflags\t\t: fpu sse sse2 pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm\n"
    assert cpu_baseline.missing_features(cpuinfo=nehalem) == []
    penryn = nehalem.replace(" sse4_2 popcnt", "")
    assert cpu_baseline.missing_features(cpuinfo=penryn) == ["SSE4.2", "POPCNT"]
    assert cpu_baseline.missing_features(cpuinfo="processor : 0\n") is None  # no flags line: claim nothing


@pytest.mark.skipif(not (sys.platform.startswith("linux") and cpu_baseline.is_x86_64()),
                    reason="compares CPUID with Linux's /proc/cpuinfo on x86-64")
def test_real_cpuid_agrees_with_the_kernel() -> None:
    cpuid = cpu_baseline.native_cpuid()
    assert cpuid is not None
    assert cpuid(0)["eax"] >= 1
    flags = cpu_baseline.proc_cpuinfo_flags(Path("/proc/cpuinfo").read_text())
    assert flags is not None
    for name, leaf, register, bit in cpu_baseline.BASELINE:
        from_cpuid = bool((cpuid(leaf)[register] >> bit) & 1)
        assert from_cpuid == (cpu_baseline._PROC_NAMES[name] in flags), name
    assert cpu_baseline.missing_features() == cpu_baseline.missing_from_proc_flags(flags)


def test_the_launcher_refuses_before_loading_native_libraries(tmp_path: Path) -> None:
    script = ("import sys\n"
              "import glimpse.app.cpu_baseline as c\n"
              "c.missing_features = lambda: ['SSE4.2', 'POPCNT']\n"
              "from glimpse.app.launcher import main\n"
              "code = main(['self-test'])\n"
              "native = sorted(m for m in ('numpy', 'PySide6', 'onnxruntime', 'llama_cpp') if m in sys.modules)\n"
              "print('loaded', native)\n"
              "sys.exit(code)\n")
    env = {"GLIMPSE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60,
                         check=False, env=env)
    assert run.returncode == 3
    assert "loaded []" in run.stdout
    assert run.stderr.strip().splitlines() == [cpu_baseline.baseline_message(["SSE4.2", "POPCNT"])]
    assert "Traceback" not in run.stderr
    assert "SSE4.2, POPCNT" in (tmp_path / "logs" / "glimpse.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("qemu-x86_64") and sys.platform.startswith("linux")
                         and cpu_baseline.is_x86_64()), reason="needs qemu-user on x86-64 Linux")
@pytest.mark.parametrize(("cpu", "code", "missing"), [("Penryn", 3, "SSE4.2, POPCNT"), ("Nehalem", 0, None)])
def test_the_bundles_first_code_on_emulated_cpus(cpu: str, code: int, missing: str | None) -> None:
    # The runtime hook the frozen app runs before anything else, on a CPU just below and just at the baseline.
    hook = REPO / "packaging" / "rthook_cpu_baseline.py"
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, str(hook)], capture_output=True, text=True,
                         timeout=300, check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == code, run.stderr
    lines = [line for line in run.stderr.splitlines() if not line.startswith("qemu-x86_64: warning")]
    if missing is None:
        assert lines == []
    else:
        assert lines == [cpu_baseline.baseline_message(missing.split(", "))]
